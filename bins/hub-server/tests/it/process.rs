//! `ServerProcess`: the real `hub-server` binary as a child process with JSON logs, for tests of what an operator sees (the walkthrough, start-up lines).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The server process; killed if the test fails before stopping it.
pub struct ServerProcess {
    pub child: Child,
    logs: mpsc::Receiver<String>,
    /// Every log line read so far, in order.
    pub seen: Vec<Value>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts the binary with a clean environment: a free port, JSON logs
    /// at `info`, and `env` on top (which may override those).
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hub-server"));
        command
            .env_clear()
            .env("HUB_BIND", "127.0.0.1:0")
            .env("HUB_LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start hub-server");
        let stdout = child.stdout.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ServerProcess {
            child,
            logs,
            seen: Vec::new(),
        }
    }

    /// Reads one log line into `seen` if one comes within `wait`; false if
    /// none did (or the process closed its output).
    fn read_line(&mut self, wait: Duration) -> bool {
        let Ok(line) = self.logs.recv_timeout(wait) else {
            return false;
        };
        let value: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("HUB_LOG_FORMAT=json printed a non-JSON line ({e}): {line}")
        });
        self.seen.push(value);
        true
    }

    /// Waits for a JSON log line whose fields satisfy `pick`, returning its value.
    pub fn wait_for(&mut self, what: &str, pick: impl Fn(&Value) -> Option<String>) -> String {
        if let Some(v) = self.seen.iter().find_map(&pick) {
            return v;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(self.read_line(left), "no log line with {what} within 30 s");
            if let Some(v) = self.seen.last().and_then(&pick) {
                return v;
            }
        }
    }

    /// The address from the `listening` line.
    pub fn wait_listening(&mut self) -> String {
        self.wait_for("listening addr", |v| {
            (v.get("message").and_then(Value::as_str) == Some("listening"))
                .then(|| v.get("addr").and_then(Value::as_str).map(str::to_owned))
                .flatten()
        })
    }

    /// Reads every log line written during the next `period`.
    pub fn read_for(&mut self, period: Duration) {
        let until = Instant::now() + period;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if !self.read_line(left) {
                break;
            }
        }
    }
}

/// A field of a log line as a string.
pub fn field(name: &'static str) -> impl Fn(&Value) -> Option<String> {
    move |v: &Value| v.get(name).and_then(Value::as_str).map(str::to_owned)
}
