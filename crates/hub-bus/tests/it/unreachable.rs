//! Start-up against an unreachable server fails promptly with `Unavailable` instead of hanging.

use std::time::{Duration, Instant};

use hub_bus::{NatsConfig, NatsPublisher};
use hub_core::error::RegistryError;

fn config(url: &str) -> NatsConfig {
    let mut config = NatsConfig::new(url).unwrap();
    config.connect_timeout = Duration::from_millis(500);
    config
}

fn assert_unavailable(result: Result<NatsPublisher, RegistryError>) {
    let err = result.unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Unavailable {
                component: "events",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn nothing_listening_is_unavailable_at_once() {
    // A port that was just free: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    assert_unavailable(NatsPublisher::connect(config(&format!("nats://127.0.0.1:{port}"))).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_silent_peer_is_unavailable_after_the_connect_timeout() {
    // The kernel accepts the TCP connection into the backlog, but no NATS
    // INFO ever comes: only the publisher's own bound ends the wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let started = Instant::now();
    assert_unavailable(NatsPublisher::connect(config(&format!("nats://127.0.0.1:{port}"))).await);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(listener);
}

#[test]
fn a_malformed_url_is_invalid() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(NatsPublisher::connect(config("nats://bad host:x")));
    assert!(
        matches!(result, Err(RegistryError::Invalid(_))),
        "{result:?}"
    );
}
