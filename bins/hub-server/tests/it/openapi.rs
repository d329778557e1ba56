//! Contract tests of the OpenAPI document: it names exactly the routes the server serves, and real answers (successes and errors, both stores) match its schemas and headers.

use std::collections::BTreeSet;

use reqwest::header::HeaderMap;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::support::{BOUND_KEY, Backend, OPERATOR_KEY, TestApp, on_both_backends, spawn_app_with};

/// The document as the server serves it, and the checks of answers against it.
struct Contract {
    doc: Value,
}

/// `/` and `~` escaped for a JSON pointer.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

impl Contract {
    /// Fetches `/openapi.json` without a key (it is public).
    async fn fetch(app: &TestApp) -> Self {
        let r = app
            .client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let doc: Value = r.json().await.unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        Contract { doc }
    }

    /// Follows a `$ref` inside the document (one level is all it uses).
    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.strip_prefix('#').unwrap())
                .unwrap_or_else(|| panic!("dangling {r}")),
            None => value,
        }
    }

    /// Every `(METHOD, path template)` the document names.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
        ops
    }

    /// Validates `instance` against the schema at `pointer` in the document,
    /// with every `$ref` resolved in the document and formats checked.
    fn validate(&self, pointer: &str, instance: &Value, what: &str) {
        let mut root = self.doc.clone();
        // A JSON pointer in a URI fragment: braces percent-encoded.
        let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
        root["$ref"] = json!(format!("#{fragment}"));
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{what}: the schema at {pointer} does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: {instance} does not match {pointer}: {errors:#?}"
        );
    }

    /// Checks an answer to `method template` against the document: the
    /// status is documented for the operation, the body matches its schema,
    /// every documented header present matches its schema, and the headers
    /// every answer carries are there. Returns the body.
    async fn check(&self, method: &str, template: &str, response: Response) -> Value {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        self.check_parts(method, template, status, &headers, &bytes)
    }

    /// [`Contract::check`] of an answer read some other way.
    fn check_parts(
        &self,
        method: &str,
        template: &str,
        status: u16,
        headers: &HeaderMap,
        bytes: &[u8],
    ) -> Value {
        let status = status.to_string();
        let what = format!("{method} {template} -> {status}");
        let op_pointer = format!(
            "/paths/{}/{}",
            escape(template),
            method.to_ascii_lowercase()
        );
        let op = self
            .doc
            .pointer(&op_pointer)
            .unwrap_or_else(|| panic!("{what}: the document has no such operation"));
        let declared = op["responses"]
            .get(&status)
            .unwrap_or_else(|| panic!("{what}: status not documented (body {bytes:?})"));
        let (response_pointer, declared) = match declared.get("$ref").and_then(Value::as_str) {
            Some(r) => (
                r.strip_prefix('#').unwrap().to_owned(),
                self.resolve(declared),
            ),
            None => (format!("{op_pointer}/responses/{status}"), declared),
        };
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "{what}: content type {content_type:?}"
        );
        assert!(
            declared["content"]["application/json"]["schema"].is_object(),
            "{what}: no JSON schema documented"
        );
        let body: Value = serde_json::from_slice(bytes).unwrap();
        self.validate(
            &format!("{response_pointer}/content/application~1json/schema"),
            &body,
            &what,
        );
        self.check_headers(&what, declared, headers);
        body
    }

    fn check_headers(&self, what: &str, declared: &Value, headers: &HeaderMap) {
        let documented = declared["headers"].as_object().cloned().unwrap_or_default();
        for name in ["X-Request-ID", "X-Tenant-ID"] {
            assert!(
                documented.contains_key(name),
                "{what}: header {name} not documented"
            );
        }
        assert!(
            headers.contains_key("x-request-id"),
            "{what}: no X-Request-ID"
        );
        for (name, header) in &documented {
            let Some(value) = headers.get(name.as_str()) else {
                continue;
            };
            let header = self.resolve(header);
            let text = value.to_str().unwrap();
            let value = match header["schema"]["type"].as_str() {
                Some("integer") => json!(text.parse::<i64>().unwrap_or_else(|_| {
                    panic!("{what}: header {name} = {text:?} is not an integer")
                })),
                _ => json!(text),
            };
            let pointer = match declared["headers"][name]
                .get("$ref")
                .and_then(Value::as_str)
            {
                Some(r) => format!("{}/schema", r.strip_prefix('#').unwrap()),
                None => panic!("{what}: header {name} is documented inline"),
            };
            self.validate(&pointer, &value, &format!("{what}, header {name}"));
        }
        // Headers the server sends that the document says it sends.
        for name in [
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "retry-after",
            "www-authenticate",
        ] {
            if headers.contains_key(name) {
                assert!(
                    documented.keys().any(|d| d.eq_ignore_ascii_case(name)),
                    "{what}: sends {name}, which is not documented for this answer"
                );
            }
        }
    }
}

const REGISTER: &str = "/api/v1/discovery/register";
const HEARTBEAT: &str = "/api/v1/discovery/heartbeat";
const SERVICES: &str = "/api/v1/discovery/services";
const SERVICE: &str = "/api/v1/discovery/services/{service_name}";
const METRICS: &str = "/api/v1/dashboard/metrics";

async fn start(backend: Backend, extra: &[(&str, &str)]) -> Option<(TestApp, Contract)> {
    let app = spawn_app_with(backend, extra, None).await?;
    let contract = Contract::fetch(&app).await;
    Some((app, contract))
}

/// The document and the server agree on the routes: the document names
/// exactly the route table's entries, each is served (not the 404 fallback,
/// not 405), and on a documented path no undocumented method is served.
async fn documented_routes_are_exactly_the_served_ones(backend: Backend) {
    let Some((app, contract)) = start(backend, &[]).await else {
        return;
    };
    let documented = contract.operations();
    let table: BTreeSet<(String, String)> = hub_http::routes::endpoints()
        .iter()
        .map(|e| (e.method.to_string(), e.path.clone()))
        .collect();
    assert_eq!(documented, table);
    // The routes the issue names are all there.
    for route in [
        ("GET", "/health"),
        ("GET", "/health/ready"),
        ("POST", REGISTER),
        ("POST", HEARTBEAT),
        ("GET", SERVICES),
        ("GET", SERVICE),
        ("DELETE", SERVICE),
        ("GET", METRICS),
    ] {
        assert!(
            documented.contains(&(route.0.to_owned(), route.1.to_owned())),
            "{route:?} is not documented"
        );
    }
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path.replace("{service_name}", "contract-svc");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let r = app
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    &concrete,
                    Some("contract"),
                )
                .header("Content-Type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = r.status();
            // The watch stream never ends: its body is not read.
            let streaming = r
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
            let body: Value = if streaming {
                Value::Null
            } else {
                r.json().await.unwrap_or(Value::Null)
            };
            let fallback = body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no route for"));
            if documented.contains(&(method.to_owned(), path.clone())) {
                assert!(
                    !fallback && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is documented but not served: {status} {body}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented: {body}"
                );
            }
        }
    }
}

/// Successful answers of every route match the document.
async fn success_answers_match_the_document(backend: Backend) {
    let Some((app, c)) = start(backend, &[]).await else {
        return;
    };
    let tenant = "contract-ok";
    let health = c
        .check(
            "GET",
            "/health",
            app.client.get(app.url("/health")).send().await.unwrap(),
        )
        .await;
    assert_eq!(health["status"], "healthy");
    c.check(
        "GET",
        "/health/ready",
        app.client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The README's registration, created then updated.
    let body = json!({"service_name": "api-gateway-tenant1", "host": "10.0.1.10", "port": 8000,
        "metadata": {"region": "eu-west"}, "tags": ["edge"], "version": "1.2.3"});
    let r = app.register(tenant, body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    c.check("POST", REGISTER, r).await;
    let r = app.register(tenant, body).await;
    assert_eq!(r.status(), StatusCode::OK);
    c.check("POST", REGISTER, r).await;
    app.register_ok(tenant, "billing", "billing-1").await;
    app.register_ok(tenant, "billing", "billing-2").await;

    let page = c
        .check("GET", SERVICES, app.list(tenant, "?limit=2").await)
        .await;
    assert_eq!(page["count"], 2);
    assert!(page["next_cursor"].is_string(), "{page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let rest = c
        .check(
            "GET",
            SERVICES,
            app.list(tenant, &format!("?limit=2&cursor={cursor}")).await,
        )
        .await;
    assert_eq!(rest["count"], 1);
    c.check(
        "GET",
        SERVICES,
        app.list(tenant, "?tag=edge&status=passing").await,
    )
    .await;
    let service = c
        .check("GET", SERVICE, app.get_service(tenant, "billing").await)
        .await;
    assert_eq!(service["instances"].as_array().unwrap().len(), 2);

    let r = app
        .heartbeat(
            tenant,
            json!({"service_name": "billing", "instance_id": "billing-1", "status": "warning",
                "metrics": {"response_time_ms": 12.5, "cpu_usage": 40.0, "memory_usage": 512.0, "error_rate": 0.01}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    c.check("POST", HEARTBEAT, r).await;

    // Dashboard: operator totals, operator for one tenant, a bound key.
    for (key, query) in [
        (OPERATOR_KEY, ""),
        (OPERATOR_KEY, "?tenant=contract-ok"),
        (BOUND_KEY, ""),
    ] {
        let r = app
            .client
            .get(app.url(&format!("{METRICS}{query}")))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        c.check("GET", METRICS, r).await;
        for path in ["/api/v1/dashboard/health", "/api/v1/dashboard/services"] {
            let r = app
                .client
                .get(app.url(&format!("{path}{query}")))
                .header("X-API-Key", key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}{query}");
            c.check("GET", path, r).await;
        }
    }
    // Prometheus: text for an operator, with the content type documented;
    // the documented JSON error for a bound key.
    let r = app
        .client
        .get(app.url("/metrics"))
        .header("X-API-Key", OPERATOR_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    let documented = c.doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        .as_object()
        .unwrap_or_else(|| {
            panic!(
                "/metrics 200 has no content: {}",
                c.doc["paths"]["/metrics"]
            )
        });
    assert!(
        documented.contains_key(&content_type),
        "{content_type} not among {:?}",
        documented.keys()
    );
    let r = app
        .client
        .get(app.url("/metrics"))
        .header("X-API-Key", BOUND_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    c.check("GET", "/metrics", r).await;

    let r = app
        .deregister(tenant, "billing", "?instance_id=billing-2")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(c.check("DELETE", SERVICE, r).await["deregistered"], 1);
    let r = app.deregister(tenant, "billing", "").await;
    c.check("DELETE", SERVICE, r).await;
}

/// Error answers of the middleware, the body extractor and the handlers
/// match the document, each with its status and code.
async fn error_answers_match_the_document(backend: Backend) {
    let Some((app, c)) = start(backend, &[]).await else {
        return;
    };
    let tenant = "contract-err";
    let expect = |status: StatusCode, code: &'static str| {
        move |body: Value, r_status: StatusCode| {
            assert_eq!(r_status, status, "{body}");
            assert_eq!(body["error"]["code"], code, "{body}");
        }
    };
    let cases: Vec<(&str, &str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "GET",
            SERVICES,
            app.client.get(app.url(SERVICES)),
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
        ),
        (
            "GET",
            SERVICES,
            app.client
                .get(app.url(SERVICES))
                .header("X-API-Key", "not-a-configured-key"),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            "GET",
            SERVICES,
            app.request(Method::GET, SERVICES, Some("bad tenant!")),
            StatusCode::BAD_REQUEST,
            "invalid_tenant_id",
        ),
        (
            "GET",
            "/health",
            app.client
                .get(app.url("/health"))
                .header("X-Tenant-ID", "bad tenant!"),
            StatusCode::BAD_REQUEST,
            "invalid_tenant_id",
        ),
        (
            "GET",
            SERVICES,
            app.client
                .get(app.url(SERVICES))
                .header("X-API-Key", BOUND_KEY)
                .header("X-Tenant-ID", "tenant2"),
            StatusCode::FORBIDDEN,
            "tenant_forbidden",
        ),
        (
            "GET",
            SERVICES,
            app.request(Method::GET, &format!("{SERVICES}?limit=abc"), Some(tenant)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "GET",
            SERVICE,
            app.request(
                Method::GET,
                &format!("{SERVICES}/nothing-here"),
                Some(tenant),
            ),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "DELETE",
            SERVICE,
            app.request(
                Method::DELETE,
                &format!("{SERVICES}/nothing-here"),
                Some(tenant),
            ),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            REGISTER,
            app.request(Method::POST, REGISTER, Some(tenant))
                .json(&json!({"service_name": "svc", "port": 80})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "POST",
            REGISTER,
            app.request(Method::POST, REGISTER, Some(tenant))
                .header("Content-Type", "application/json")
                .body("{\"service_name\":"),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "POST",
            REGISTER,
            app.request(Method::POST, REGISTER, Some(tenant))
                .header("Content-Type", "text/plain")
                .body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "POST",
            REGISTER,
            app.request(Method::POST, REGISTER, Some(tenant))
                .header("Content-Type", "application/json")
                .body(format!(
                    "{{\"metadata\":\"{}\"}}",
                    "x".repeat(hub_http::MAX_BODY_BYTES)
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "POST",
            HEARTBEAT,
            app.request(Method::POST, HEARTBEAT, Some(tenant))
                .json(&json!({"service_name": "never-registered"})),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "POST",
            HEARTBEAT,
            app.request(Method::POST, HEARTBEAT, Some(tenant))
                .json(&json!({"service_name": "svc", "metrics": {"cpu_usage": 400.0}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            "GET",
            METRICS,
            app.client
                .get(app.url(&format!("{METRICS}?tenant=tenant2")))
                .header("X-API-Key", BOUND_KEY),
            StatusCode::FORBIDDEN,
            "tenant_forbidden",
        ),
        (
            "GET",
            METRICS,
            app.request(Method::GET, &format!("{METRICS}?tenant=bad%20tenant"), None),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
    ];
    for (method, template, request, status, code) in cases {
        let r = request.send().await.unwrap();
        let got = r.status();
        let body = c.check(method, template, r).await;
        expect(status, code)(body, got);
    }
}

/// A 429 and the answers before it carry the documented rate-limit headers.
async fn rate_limited_answers_match_the_document(backend: Backend) {
    let Some((app, c)) = start(
        backend,
        &[("HUB_RATE_LIMIT_RPS", "1"), ("HUB_RATE_LIMIT_BURST", "2")],
    )
    .await
    else {
        return;
    };
    let mut limited = None;
    for _ in 0..10 {
        let r = app.list("contract-429", "").await;
        let status = r.status();
        assert!(
            r.headers().contains_key("ratelimit-limit"),
            "a limited answer without RateLimit-Limit"
        );
        let body = c.check("GET", SERVICES, r).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(body);
            break;
        }
    }
    let body = limited.expect("a burst of 2 at 1/s let 10 requests through");
    assert_eq!(body["error"]["code"], "rate_limited");
    let r = app.list("contract-429", "").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    c.check("GET", SERVICES, r).await;
}

/// A body that does not arrive in time: 408 as documented. Raw TCP, since
/// no HTTP client sends half a body on purpose.
#[tokio::test]
async fn a_body_timeout_answer_matches_the_document() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (app, c) = start(Backend::Embedded, &[("HUB_BODY_TIMEOUT_SECS", "1")])
        .await
        .unwrap();
    let addr = app.base.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST {REGISTER} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {OPERATOR_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"service_name\""
    );
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(6),
        stream.read_to_end(&mut raw),
    )
    .await
    .expect("no answer within 6 s")
    .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
    assert_eq!(status, 408, "{text}");
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.insert(
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    let body = c.check_parts("POST", REGISTER, status, &headers, body.as_bytes());
    assert_eq!(body["error"]["code"], "request_timeout");
}

on_both_backends!(
    documented_routes_are_exactly_the_served_ones,
    success_answers_match_the_document,
    error_answers_match_the_document,
    rate_limited_answers_match_the_document,
);

/// `/docs` (Swagger UI) and `/redoc` answer HTML without a key, with their
/// assets served by the server itself (no CDN), and the document is public.
#[tokio::test]
async fn docs_and_redoc_are_public_html_served_from_the_binary() {
    let app = spawn_app_with(Backend::Embedded, &[], None).await.unwrap();
    for path in ["/docs", "/docs/", "/redoc"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        let html = r.text().await.unwrap();
        assert!(
            !html.contains("cdn.") && !html.contains("fonts.googleapis"),
            "{path} loads something from elsewhere"
        );
    }
    let swagger = app.client.get(app.url("/docs/")).send().await.unwrap();
    assert!(swagger.text().await.unwrap().contains("swagger-ui"));
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/docs/swagger-initializer.js",
        "/redoc/redoc.standalone.js",
    ] {
        let r = app.client.get(app.url(asset)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
        assert!(!r.bytes().await.unwrap().is_empty(), "{asset}");
    }
    let initializer = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
    let redoc = app.client.get(app.url("/redoc")).send().await.unwrap();
    let html = redoc.text().await.unwrap();
    assert!(html.contains("/redoc/redoc.standalone.js"));
    assert!(
        html.contains("\"Central Hub\""),
        "the page embeds the document"
    );
    // Not rate-limited and needing no key, even with a wrong one.
    let r = app
        .client
        .get(app.url("/openapi.json"))
        .header("X-API-Key", "not-a-configured-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!r.headers().contains_key("ratelimit-limit"));
}
