//! A server without JetStream: the publisher falls back to plain publish instead of failing.
//!
//! The shared server has JetStream on, so this test starts its own
//! nats-server (without `-js`) on a free port and stops it at the end.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hub_bus::{NatsConfig, NatsPublisher, PublishMode, SubjectPrefix};
use hub_core::domain::event::EventKind;
use hub_core::ports::EventSink;

use crate::support::{assert_carries, event, next_message};

/// Kills the server when the test ends, even by a panic.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_server_without_jetstream_gets_plain_publish() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let _server = match child {
        Ok(child) => Server(child),
        Err(err) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("cannot start nats-server under CI: {err}");
            }
            eprintln!("SKIPPED no_jetstream: cannot start nats-server ({err})");
            return;
        }
    };
    let url = format!("nats://127.0.0.1:{port}");
    // Poll until the server listens; it starts in a few milliseconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let client = loop {
        match async_nats::connect(url.as_str()).await {
            Ok(client) => break client,
            Err(err) if Instant::now() > deadline => panic!("nats-server did not start: {err}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };

    let prefix = SubjectPrefix::parse("hubnojs").unwrap();
    let mut subscriber = client.subscribe(prefix.all_events()).await.unwrap();
    client.flush().await.unwrap();
    let mut config = NatsConfig::new(&url).unwrap();
    config.subject_prefix = prefix.clone();
    let publisher = NatsPublisher::connect(config).await.unwrap();
    assert_eq!(publisher.mode(), PublishMode::Plain);

    let registered = event("tenant1", "billing", EventKind::Registered, 1);
    publisher
        .publish(std::slice::from_ref(&registered))
        .await
        .unwrap();
    assert_carries(&next_message(&mut subscriber).await, &prefix, &registered);
}
