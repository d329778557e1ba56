//! The README walkthrough, run verbatim against the real binary; bootstrap key, JSON logs and SIGTERM shutdown along the way.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::{ServerProcess, field};

/// A fenced block of the README: its info string and its text.
struct Block {
    lang: String,
    text: String,
}

/// The fenced blocks of the section headed `## {heading}`.
fn section_blocks(readme: &str, heading: &str) -> Vec<Block> {
    let start = readme
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let rest = &readme[start + heading.len() + 5..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```") {
            let text: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.starts_with("```"))
                .collect();
            blocks.push(Block {
                lang: lang.trim().to_owned(),
                text: text.join("\n"),
            });
        }
    }
    blocks
}

/// Every field of `expected` is in `actual` with a matching value; arrays
/// must have the same length. Fields the README leaves out are not checked.
fn assert_subset(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, value) in e {
                let got = a
                    .get(key)
                    .unwrap_or_else(|| panic!("{path}.{key} missing in {actual}"));
                assert_subset(value, got, &format!("{path}.{key}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{path}: array length in {actual}");
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                assert_subset(x, y, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(expected, actual, "{path}"),
    }
}

fn run_sh(script: &str, hub: &str, key: &str) -> String {
    let output = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .env("HUB", hub)
        .env("HUB_KEY", key)
        .output()
        .expect("run bash");
    assert!(
        output.status.success(),
        "README command failed: {script}\n{output:?}"
    );
    String::from_utf8(output.stdout).unwrap()
}

fn check(expected: &Block, stdout: &str, script: &str) {
    match expected.lang.as_str() {
        "json" => {
            let want: Value = serde_json::from_str(&expected.text).unwrap();
            let got: Value = serde_json::from_str(stdout)
                .unwrap_or_else(|e| panic!("{script}\nprinted non-JSON ({e}): {stdout}"));
            assert_subset(&want, &got, "$");
        }
        "http" => {
            let (want_head, want_body) = expected.text.split_once("\n\n").unwrap();
            let normalized = stdout.replace("\r\n", "\n");
            let (got_head, got_body) = normalized.split_once("\n\n").unwrap();
            let status = |head: &str| {
                head.lines()
                    .next()
                    .unwrap()
                    .split(' ')
                    .nth(1)
                    .unwrap()
                    .to_owned()
            };
            assert_eq!(status(want_head), status(got_head), "{script}");
            for header in want_head.lines().skip(1) {
                assert!(
                    got_head.to_lowercase().contains(&header.to_lowercase()),
                    "{script}: header {header:?} missing in\n{got_head}"
                );
            }
            assert_subset(
                &serde_json::from_str(want_body).unwrap(),
                &serde_json::from_str(got_body).unwrap(),
                "$",
            );
        }
        other => panic!("a README command is followed by a {other:?} block; expected json or http"),
    }
}

#[test]
fn readme_walkthrough_runs_verbatim() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let blocks = section_blocks(&readme, "Walkthrough");

    let mut server = ServerProcess::start(&[]);
    let key = server.wait_for("bootstrap_api_key", field("bootstrap_api_key"));
    let addr = server.wait_listening();
    assert!(
        server.seen.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("embedded mode"))),
        "embedded mode is announced at start"
    );
    let hub = format!("http://{addr}");

    let mut commands = 0;
    let mut i = 0;
    while i < blocks.len() {
        if blocks[i].lang == "sh" {
            let script = &blocks[i].text;
            let stdout = run_sh(script, &hub, &key);
            let expected = blocks
                .get(i + 1)
                .filter(|b| b.lang != "sh" && b.lang != "text");
            let expected = expected
                .unwrap_or_else(|| panic!("README command has no expected output block: {script}"));
            check(expected, &stdout, script);
            commands += 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    assert!(
        commands >= 8,
        "the walkthrough lost commands: ran {commands}"
    );

    // The access log names request id, tenant, method, path, status and
    // latency of every request, and never the key.
    let tenant1_list = server.wait_for("access log of a tenant1 list", |v| {
        (v["target"] == "hub_http::access"
            && v["tenant"] == "tenant1"
            && v["method"] == "GET"
            && v["status"] == 200)
            .then(|| v.to_string())
    });
    let line: Value = serde_json::from_str(&tenant1_list).unwrap();
    for f in [
        "request_id",
        "tenant",
        "method",
        "path",
        "status",
        "latency_ms",
    ] {
        assert!(line.get(f).is_some(), "access log lacks {f}: {line}");
    }
    server.wait_for("the 401 in the access log", |v| {
        (v["status"] == 401).then(String::new)
    });
    let logged_key_lines = server
        .seen
        .iter()
        .filter(|v| v.to_string().contains(&key))
        .count();
    assert_eq!(
        logged_key_lines, 1,
        "the bootstrap key is logged exactly once, at start"
    );

    // SIGTERM: graceful shutdown, exit status 0.
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    server.wait_for("shutdown", |v| {
        (v["message"] == "stopped").then(String::new)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "hub-server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
