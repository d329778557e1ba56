//! Slow clients: a request body that trickles in gets 408 within `HUB_BODY_TIMEOUT_SECS`, and its connection is closed.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Backend, OPERATOR_KEY, spawn_app_with};

#[tokio::test]
async fn a_body_sent_one_byte_at_a_time_gets_408_and_the_connection_closes() {
    let app = spawn_app_with(Backend::Embedded, &[("HUB_BODY_TIMEOUT_SECS", "1")], None)
        .await
        .unwrap();
    let addr = app.base.trim_start_matches("http://").to_owned();
    let body = r#"{"service_name":"slow","host":"10.0.0.1","port":80}"#;
    let head = format!(
        "POST /api/v1/discovery/register HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {OPERATOR_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (mut reader, mut writer) = TcpStream::connect(&addr).await.unwrap().into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    // One byte every 300 ms: the whole body would take some 15 s.
    let trickle = tokio::spawn(async move {
        for byte in body.bytes() {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut response = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => return true,
                Ok(n) => response.extend_from_slice(&buf[..n]),
                // A reset after the answer is a close too.
                Err(_) => return !response.is_empty(),
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&response);
    assert_eq!(
        closed,
        Ok(true),
        "connection still open after 6 s; read so far: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("\"request_timeout\""),
        "JSON error body: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "408 after {elapsed:?}, configured 1 s"
    );
    // Nothing half-read was stored.
    assert!(app.list_ids("system").await.is_empty());
}
