//! Exact round trip: what the API accepts reads back unchanged in meaning on both stores, and a differential property test that both stores answer alike.

use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::support::{Backend, TestApp, on_both_backends, spawn_app};

/// Registers `metadata` for `service` and checks that every read (register
/// answer, get, list, heartbeat, delete) succeeds and returns it unchanged.
async fn round_trips(app: &TestApp, tenant: &str, service: &str, metadata: Value) {
    let r = app
        .register(
            tenant,
            json!({"service_name": service, "host": "10.0.0.1", "port": 80, "metadata": metadata}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED, "register");
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["metadata"], metadata, "register answer");

    let r = app.get_service(tenant, service).await;
    assert_eq!(r.status(), StatusCode::OK, "get");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["instances"][0]["metadata"], metadata, "get");

    let r = app.list(tenant, "").await;
    assert_eq!(r.status(), StatusCode::OK, "list");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["services"][0]["metadata"], metadata, "list");

    let r = app
        .heartbeat(
            tenant,
            json!({"service_name": service, "status": "warning",
                   "metrics": {"response_time_ms": 1.7976931348623157e308, "memory_usage": 5e-324}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "heartbeat");
    let r = app.get_service(tenant, service).await;
    assert_eq!(r.status(), StatusCode::OK, "get after heartbeat");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["instances"][0]["metadata"], metadata,
        "after heartbeat"
    );

    let r = app.deregister(tenant, service, "").await;
    assert_eq!(r.status(), StatusCode::OK, "delete");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["deregistered"], 1);
    assert!(app.list_ids(tenant).await.is_empty());
}

/// The issue's poison number: PostgreSQL keeps it exactly and prints it as a
/// 309-digit integer, which serde_json could not read back (500 on every read).
async fn the_largest_double_reads_back(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    round_trips(&app, "tb", "poison", json!({"x": f64::MAX})).await;
    round_trips(
        &app,
        "tb",
        "tiny",
        json!({"x": 5e-324, "y": -1.7976931348623157e308}),
    )
    .await;
}

/// The second way in: 900 entries of 1.7e308 (15.3 KB) used to read back as
/// `1.7000000000000001e+308`, 27.9 KB, over the 16 KiB limit re-checked on read.
async fn a_wide_object_of_large_numbers_reads_back(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let metadata: Map<String, Value> = (0..900)
        .map(|i| (format!("key{i:03}"), json!(1.7e308)))
        .collect();
    let metadata = Value::Object(metadata);
    assert!(serde_json::to_vec(&metadata).unwrap().len() > 15_000);
    round_trips(&app, "tb", "wide", metadata).await;
}

on_both_backends!(
    the_largest_double_reads_back,
    a_wide_object_of_large_numbers_reads_back,
);

/// A row written under older or looser rules (an instance id `..`, invisible
/// characters, metadata over today's 16 KiB) is still listed, paged past,
/// fetched and deleted: reads check what the types need, never re-apply the
/// admission rules.
#[tokio::test]
async fn rows_stored_under_older_rules_stay_readable_and_deletable() {
    use hub_store::testing::TestDb;

    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    app.register_ok("tb", "legacy", "legacy").await;
    app.register_ok("tb", "legacy", "z").await;
    let db = app.db.as_ref().unwrap();
    let mut owner = TestDb::connect(&db.owner).await;
    let tx = owner.transaction().await.unwrap();
    tx.batch_execute(
        "SELECT set_config('app.tenant_id', 'tb', true); \
         UPDATE service_registry SET instance_id = '..', tags = ARRAY['prod' || chr(8203)], \
             version = chr(8238) || '1', health_endpoint = '/h' || chr(65279), \
             metadata = jsonb_build_object('k', repeat('x', 20000), 'n', 1e16::numeric) \
         WHERE tenant_id = 'tb' AND instance_id = 'legacy'",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let r = app.list("tb", "?limit=1").await;
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    let legacy = &page["services"][0];
    assert_eq!(legacy["instance_id"], "..");
    assert_eq!(legacy["tags"][0], "prod\u{200b}");
    assert_eq!(legacy["metadata"]["k"].as_str().unwrap().len(), 20000);
    assert_eq!(legacy["metadata"]["n"], 10_000_000_000_000_000_u64);
    // The cursor after `..` leads to the next page.
    let cursor = page["next_cursor"].as_str().unwrap();
    let r = app.list("tb", &format!("?limit=1&cursor={cursor}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let next: Value = r.json().await.unwrap();
    assert_eq!(next["services"][0]["instance_id"], "z");

    let r = app.get_service("tb", "legacy").await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.deregister("tb", "legacy", "").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["deregistered"], 2);
    assert!(app.list_ids("tb").await.is_empty());
}

// ---------------------------------------------------------------------------
// The differential property test: generated sequences of requests go to an
// embedded-mode app and a PostgreSQL-mode app, which must answer each with
// the same status and the same body (timestamps and request ids aside).
// ---------------------------------------------------------------------------

/// Default seed; `HUB_DIFF_SEED` overrides it (a failure prints the seed).
const DEFAULT_SEED: u64 = 0x5EED_0008;
/// Default number of cases, sized for `cargo xtask test`; `HUB_DIFF_CASES`
/// runs more.
const DEFAULT_CASES: usize = 256;

/// One request of a case. Bodies are JSON text, so that numbers and strings
/// that no `serde_json::Value` can hold (`1e400`, a lone surrogate) are sent too.
#[derive(Debug, Clone)]
enum Op {
    Register(String),
    Heartbeat(String),
    /// The query string, `?` included.
    List(String),
    /// A page of `limit` (edge values included) continuing from the last
    /// `next_cursor` the case saw, if any.
    Page(String),
    /// The service name, raw (percent-encoded into the path).
    Get(String),
    /// The service name and the query string.
    Delete(String, String),
}

mod generate {
    //! The generators: numbers at the edges, text from every plane with the
    //! characters the rules are about, names near the limits, deep and wide
    //! objects, odd query values.

    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::select;

    use super::Op;

    fn quoted(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    /// JSON number text at the edges of f64, i64 and u64, and (`wild`) beyond them.
    pub fn number(wild: bool) -> impl Strategy<Value = String> {
        let beyond = select(vec![
            "1.7976931348623159e308",
            "1e400",
            "-1e400",
            "-",
            "01",
            "1.",
        ])
        .prop_map(str::to_owned);
        let edges = select(vec![
            "0",
            "-0",
            "-0.0",
            "0.0",
            "1.0",
            "5e-324",
            "4.9406564584124654e-324",
            "5e-325",
            "2.2250738585072014e-308",
            "2.225073858507201e-308",
            "0.1",
            "0.30000000000000004",
            "1e-7",
            "1E+2",
            "1e16",
            "1e15",
            "9007199254740992",
            "9007199254740993",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "1.7e308",
            "1.7976931348623157e308",
            "-1.7976931348623157e308",
            "100",
            "250",
            "-1",
        ])
        .prop_map(str::to_owned);
        prop_oneof![
            3 => edges,
            1 => any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(|x| serde_json::to_string(&x).unwrap()),
            1 => any::<i64>().prop_map(|x| x.to_string()),
            1 => any::<u64>().prop_map(|x| x.to_string()),
            1 => (0.0..1.0f64).prop_map(|x| serde_json::to_string(&x).unwrap()),
            u32::from(wild) => beyond,
        ]
    }

    /// Characters the validation rules are about, and some from every plane.
    fn special() -> impl Strategy<Value = char> {
        select(vec![
            '\0',
            '\u{1}',
            '\n',
            '\u{7f}',
            '\u{85}',
            '\u{ad}',
            '\u{61c}',
            '\u{200b}',
            '\u{200d}',
            '\u{200e}',
            '\u{2028}',
            '\u{202e}',
            '\u{2060}',
            '\u{2066}',
            '\u{2069}',
            '\u{feff}',
            '\u{fffd}',
            '\u{e0001}',
            '\u{e0041}',
            '\u{10ffff}',
            '\u{1f600}',
            '\u{20000}',
            '\u{30000}',
            '\u{f0000}',
            'é',
            '中',
            '.',
            '/',
            ' ',
            '%',
            '\\',
            '"',
            ':',
            '&',
            '=',
            '+',
            '#',
            '?',
        ])
    }

    /// Printable text from every plane: what the rules let through.
    pub fn printable() -> impl Strategy<Value = String> {
        prop_oneof![
            2 => "[a-z]{1,6}",
            1 => "[\\PC&&[^\u{ad}\u{600}-\u{605}\u{61c}\u{6dd}\u{70f}\u{890}\u{891}\u{8e2}\u{180e}\u{200b}-\u{200f}\u{2028}-\u{202e}\u{2060}-\u{2064}\u{2066}-\u{206f}\u{feff}\u{fff9}-\u{fffb}\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}]]{1,10}",
            1 => select(vec!["é", "中文", "\u{1f600}", "\u{10fffd}", "a b", "\u{20000}", "\u{fffd}"]).prop_map(str::to_owned),
        ]
    }

    /// Free text: plain, any Unicode scalar value, specials mixed in, and
    /// long runs near the length limits (64 version, 128 tag/name, 255 path).
    pub fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z]{1,6}",
            2 => printable(),
            2 => vec(any::<char>(), 0..10).prop_map(String::from_iter),
            2 => vec(prop_oneof![special(), "[a-z]".prop_map(|s| s.chars().next().unwrap_or('a'))], 1..5)
                .prop_map(String::from_iter),
            1 => (
                select(vec![63usize, 64, 65, 127, 128, 129, 254, 255, 256]),
                prop_oneof![Just('x'), Just('é'), Just('\u{1f600}'), special()],
            )
                .prop_map(|(n, c)| std::iter::repeat_n(c, n).collect()),
        ]
    }

    /// Names: mostly valid ones from a small pool (so that requests meet
    /// each other), plus `.`, `..`, long and foreign ones.
    pub fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => select(vec!["a", "b", "svc.1", "a-b_c", "10.0.0.1:80"]).prop_map(str::to_owned),
            1 => select(vec![".", "..", "...", "a b", "", "a/b"]).prop_map(str::to_owned),
            1 => select(vec![127usize, 128, 129]).prop_map(|n| "s".repeat(n)),
            1 => text(),
        ]
    }

    /// Metadata text: any string without NUL (which no store can hold), or
    /// (`wild`) anything, NUL included.
    fn meta_text(wild: bool) -> BoxedStrategy<String> {
        if wild {
            text().boxed()
        } else {
            text().prop_map(|t| t.replace('\0', "")).boxed()
        }
    }

    /// JSON text of any value, nested a few levels.
    fn value(wild: bool) -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            3 => number(wild),
            3 => meta_text(wild).prop_map(|s| quoted(&s)),
            1 => select(vec!["true", "false", "null", r#""\ud83d\ude00""#]).prop_map(str::to_owned),
            u32::from(wild) => Just(r#""\ud800""#.to_owned()),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
                vec((meta_text(wild), inner), 0..6).prop_map(|kv| object(&kv)),
            ]
        })
    }

    fn object(entries: &[(String, String)]) -> String {
        let body: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("{}:{v}", quoted(k)))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    /// The `metadata` field: objects of any values, deep ones around
    /// serde_json's nesting limit, wide ones around the 16 KiB limit, and
    /// a few values that are not objects.
    pub fn metadata(wild: bool) -> impl Strategy<Value = String> {
        prop_oneof![
            6 => vec((meta_text(wild), value(wild)), 0..6).prop_map(|kv| object(&kv)),
            u32::from(wild) => value(wild),
            1 => prop_oneof![30usize..=34, 120usize..=130].prop_map(|depth| {
                format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
            }),
            1 => (16_360usize..16_392).prop_map(|n| format!("{{\"k\":\"{}\"}}", "x".repeat(n))),
            1 => (8_180usize..8_200).prop_map(|n| format!("{{\"k\":\"{}\"}}", "é".repeat(n))),
            1 => (955usize..970, select(vec!["1.7e308", "1e16", "-0.0", "5e-324"])).prop_map(|(n, num)| {
                let entries: Vec<(String, String)> =
                    (0..n).map(|i| (format!("key{i:03}"), num.to_owned())).collect();
                object(&entries)
            }),
        ]
    }

    fn field(name: &str, value: Option<String>) -> Option<String> {
        value.map(|v| format!("{}:{v}", quoted(name)))
    }

    /// A valid name, or (`wild`) any.
    fn some_name(wild: bool) -> BoxedStrategy<String> {
        if wild {
            name().boxed()
        } else {
            select(vec!["a", "b", "svc.1", "a-b_c", "10.0.0.1:80"])
                .prop_map(str::to_owned)
                .boxed()
        }
    }

    /// Text that is valid as a tag or version, or (`wild`) any.
    fn some_text(wild: bool) -> BoxedStrategy<String> {
        if wild {
            text().boxed()
        } else {
            printable().boxed()
        }
    }

    /// A registration body. Tame ones (most) break no rule but carry every
    /// kind of number and text, so that what is stored is compared; wild
    /// ones break rules anywhere, so that what is refused is compared.
    fn register() -> impl Strategy<Value = Op> {
        prop_oneof![3 => register_body(false), 2 => register_body(true)]
    }

    fn register_body(wild: bool) -> impl Strategy<Value = Op> {
        let tags = prop_oneof![
            8 => vec(prop_oneof![select(vec!["prod", "eu", "x"]).prop_map(str::to_owned), some_text(wild)], 0..4),
            u32::from(wild) => select(vec![64usize, 65]).prop_map(|n| (0..n).map(|i| format!("t{i}")).collect()),
        ];
        let hosts = if wild {
            vec!["10.0.0.1", "::1", "h.example", "bad host", ""]
        } else {
            vec!["10.0.0.1", "::1", "h.example"]
        };
        let ports = if wild {
            vec!["80", "0", "65535", "65536", "80.5"]
        } else {
            vec!["80", "1", "65535"]
        };
        let ttls = if wild {
            vec![None, Some("5"), Some("3600"), Some("4"), Some("1e1")]
        } else {
            vec![None, Some("5"), Some("3600")]
        };
        (
            (
                some_name(wild),
                proptest::option::weighted(0.7, some_name(wild)),
            ),
            select(hosts),
            select(ports),
            tags,
            proptest::option::of(some_text(wild)),
            proptest::option::weighted(
                0.3,
                some_text(wild).prop_map(|t| format!("/{}", t.replace(' ', ""))),
            ),
            proptest::option::weighted(0.9, metadata(wild)),
            select(ttls),
        )
            .prop_map(
                |((service, instance), host, port, tags, version, health, metadata, ttl)| {
                    let tags: Vec<String> = tags.iter().map(|t| quoted(t)).collect();
                    let fields: Vec<String> = [
                        field("service_name", Some(quoted(&service))),
                        field("instance_id", instance.map(|i| quoted(&i))),
                        field("host", Some(quoted(host))),
                        field("port", Some(port.to_owned())),
                        field("tags", Some(format!("[{}]", tags.join(",")))),
                        field("version", version.map(|v| quoted(&v))),
                        field("health_endpoint", health.map(|h| quoted(&h))),
                        field("metadata", metadata),
                        field("ttl_seconds", ttl.map(str::to_owned)),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    Op::Register(format!("{{{}}}", fields.join(",")))
                },
            )
    }

    fn heartbeat() -> impl Strategy<Value = Op> {
        let metric = select(vec![
            "response_time_ms",
            "cpu_usage",
            "memory_usage",
            "error_rate",
        ]);
        (
            name(),
            proptest::option::weighted(0.6, name()),
            proptest::option::weighted(
                0.6,
                prop_oneof![
                    4 => select(vec!["passing", "warning", "critical"]).prop_map(str::to_owned),
                    1 => text(),
                ],
            ),
            proptest::option::weighted(0.6, vec((metric, number(true)), 0..5)),
        )
            .prop_map(|(service, instance, status, metrics)| {
                let metrics = metrics.map(|m| {
                    let entries: Vec<(String, String)> =
                        m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                    object(&entries)
                });
                let fields: Vec<String> = [
                    field("service_name", Some(quoted(&service))),
                    field("instance_id", instance.map(|i| quoted(&i))),
                    field("status", status.map(|s| quoted(&s))),
                    field("metrics", metrics),
                ]
                .into_iter()
                .flatten()
                .collect();
                Op::Heartbeat(format!("{{{}}}", fields.join(",")))
            })
    }

    /// Every byte outside the URL-unreserved set, percent-encoded.
    pub fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    fn query_value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => text().prop_map(|t| encode(&t)),
            2 => select(vec![
                "prod", "eu", "x", "%00", "%", "%zz", "%E2%80", "%ff", "+", "%E2%80%8B", "prod%E2%80%8B", "passing",
                "warning", "critical", "dead", "PASSING", "0", "1", "2", "10000", "10001", "-1",
                "1e3", "99999999999999999999", "612f61", "2e2e2f61", "612f2e", "zz", "",
                "7376632e312f7376632e31",
            ])
            .prop_map(str::to_owned),
            1 => name().prop_map(|n| encode(&n)),
            1 => (300usize..3000).prop_map(|n| "t".repeat(n)),
        ]
    }

    fn query() -> impl Strategy<Value = String> {
        let key = select(vec![
            "tag",
            "tag",
            "service_name",
            "status",
            "cursor",
            "limit",
            "instance_id",
            "other",
        ]);
        vec((key, query_value()), 0..4).prop_map(|pairs| {
            let parts: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if parts.is_empty() {
                String::new()
            } else {
                format!("?{}", parts.join("&"))
            }
        })
    }

    pub fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => register(),
            3 => heartbeat(),
            3 => query().prop_map(Op::List),
            2 => select(vec!["1", "2", "0", "10000", "10001"]).prop_map(|l| Op::Page(l.to_owned())),
            2 => name().prop_map(Op::Get),
            2 => (name(), proptest::option::weighted(0.5, name()))
                .prop_map(|(s, i)| Op::Delete(s, i.map(|i| format!("?instance_id={}", encode(&i))).unwrap_or_default())),
        ]
    }

    pub fn case() -> impl Strategy<Value = Vec<Op>> {
        vec(op(), 1..10)
    }
}

/// Sends `op` for `tenant` and returns the status and the body with its
/// volatile fields (timestamps, request ids) removed.
async fn send(app: &TestApp, tenant: &str, op: &Op, cursor: Option<&str>) -> (u16, Value) {
    use reqwest::Method;
    let services = "/api/v1/discovery/services";
    let request = match op {
        Op::Register(body) => app
            .request(Method::POST, "/api/v1/discovery/register", Some(tenant))
            .header("Content-Type", "application/json")
            .body(body.clone()),
        Op::Heartbeat(body) => app
            .request(Method::POST, "/api/v1/discovery/heartbeat", Some(tenant))
            .header("Content-Type", "application/json")
            .body(body.clone()),
        Op::List(query) => app.request(Method::GET, &format!("{services}{query}"), Some(tenant)),
        Op::Page(limit) => {
            let cursor = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
            app.request(
                Method::GET,
                &format!("{services}?limit={limit}{cursor}"),
                Some(tenant),
            )
        }
        Op::Get(service) => app.request(
            Method::GET,
            &format!("{services}/{}", generate::encode(service)),
            Some(tenant),
        ),
        Op::Delete(service, query) => app.request(
            Method::DELETE,
            &format!("{services}/{}{query}", generate::encode(service)),
            Some(tenant),
        ),
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    let mut body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    strip_volatile(&mut body);
    (status, body)
}

fn strip_volatile(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in [
                "registered_at",
                "last_heartbeat",
                "lease_expires_at",
                "request_id",
            ] {
                map.remove(key);
            }
            map.values_mut().for_each(strip_volatile);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Both stores answer every generated request alike: same status, same
/// body. Any input one takes and the other refuses, or any 500, fails it.
#[tokio::test]
async fn both_stores_answer_generated_requests_alike() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    let Some(pg) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let embedded = spawn_app(Backend::Embedded).await.unwrap();
    let seed: u64 = env_or("HUB_DIFF_SEED", DEFAULT_SEED);
    let cases: usize = env_or("HUB_DIFF_CASES", DEFAULT_CASES);
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = generate::case();
    let started = std::time::Instant::now();
    let (mut requests, mut accepted) = (0usize, 0usize);
    for case in 0..cases {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        // A fresh tenant per case in both apps: revisions start together.
        let tenant = format!("diff-{case}");
        let mut cursor: Option<String> = None;
        for (i, op) in ops.iter().enumerate() {
            let (a, b) = tokio::join!(
                send(&embedded, &tenant, op, cursor.as_deref()),
                send(&pg, &tenant, op, cursor.as_deref())
            );
            requests += 1;
            let context = || {
                format!(
                    "HUB_DIFF_SEED={seed} case {case} request {i} of {ops:#?}\n\
                     embedded: {} {}\npostgres: {} {}",
                    a.0, a.1, b.0, b.1
                )
            };
            assert!(a.0 < 500 && b.0 < 500, "server error\n{}", context());
            assert_eq!(a, b, "the stores answer differently\n{}", context());
            if (200..300).contains(&a.0) && matches!(op, Op::Register(_)) {
                accepted += 1;
            }
            if let Some(next) = a.1.get("next_cursor").and_then(Value::as_str) {
                cursor = Some(next.to_owned());
            }
        }
    }
    eprintln!(
        "differential: seed {seed}, {cases} cases, {requests} requests ({accepted} registrations accepted) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        accepted * 10 >= cases,
        "too few registrations accepted ({accepted} in {cases} cases): the generators miss the point"
    );
}
