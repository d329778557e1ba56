//! TLS to Dragonfly: a `redis-server` with TLS only, its certificate from a test CA; trusted through `ca_file`, refused without it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hub_core::TenantId;
use hub_core::ratelimit::{Quota, RateLimiter, RateRequest};
use hub_store::dragonfly::{Dragonfly, DragonflyLimiter, DragonflyTls};
use hub_store::testing;

fn run(cmd: &mut Command) {
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    let p = |name: &str| dir.join(name);
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=hub test CA", "-keyout"])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
        ])
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.pem")));
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(port: u16, ca_file: Option<&Path>) -> hub_store::dragonfly::DragonflyConfig {
    let mut config = testing::dragonfly_config("127.0.0.1", port);
    config.tls = Some(DragonflyTls {
        ca_file: ca_file.map(Path::to_path_buf),
    });
    config
}

#[tokio::test]
async fn tls_with_the_right_ca_works_and_an_untrusted_certificate_is_refused() {
    let dir = std::env::temp_dir().join(format!("hub-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Killed(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--tls-port",
                &port.to_string(),
            ])
            .arg("--tls-cert-file")
            .arg(dir.join("server.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("ca.pem"))
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (with TLS) must be installed for this test"),
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server with TLS did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Trusting the test CA: connected, and the limiter's script runs.
    let client = Dragonfly::connect(&config(port, Some(&dir.join("ca.pem")))).unwrap();
    assert!(
        testing::wait_connected(&client).await,
        "no TLS connection with the right CA"
    );
    let limiter = DragonflyLimiter::new(client);
    let tenant = TenantId::parse(format!("tls-{}", uuid::Uuid::new_v4().simple())).unwrap();
    let decision = limiter
        .check(&RateRequest {
            tenant,
            budgets: vec![("tenant".to_owned(), Quota { rate: 10, burst: 5 })],
        })
        .await
        .unwrap();
    assert!(decision.allowed);
    assert_eq!(decision.remaining, 4);

    // The system's roots do not know the test CA: never connected.
    let untrusted = Dragonfly::connect(&config(port, None)).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !untrusted.is_connected(),
        "an untrusted certificate was accepted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
