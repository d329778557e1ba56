//! Background tasks: one module per loop, and the set of running tasks that `Application` stops and waits for at shutdown.

pub(crate) mod follower;
pub(crate) mod key_use;
pub(crate) mod listener;
pub(crate) mod metrics;
pub(crate) mod monitor;
pub(crate) mod outbox;
pub(crate) mod reaper;
pub(crate) mod sampler;
pub(crate) mod usage;
pub(crate) mod watch_feed;

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The background tasks of one `Application`, each with a name for the log,
/// and the signal that stops them all.
pub(crate) struct Tasks {
    stop: watch::Sender<bool>,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Tasks {
    pub(crate) fn new() -> Self {
        let (stop, _) = watch::channel(false);
        Self {
            stop,
            running: Vec::new(),
        }
    }

    /// The signal a task watches: it turns true when the tasks are stopped.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Spawns `task` and keeps its handle, to wait for it at shutdown.
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.running.push((name, tokio::spawn(task)));
    }

    /// Keeps the handle of a task spawned elsewhere (by an adapter that
    /// spawns its own), to wait for it at shutdown.
    pub(crate) fn adopt(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.running.push((name, task));
    }

    /// Tells every task to stop and waits for each, in the order they
    /// started.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.running {
            if let Err(error) = task.await {
                tracing::warn!(%error, task = name, "background task ended abnormally");
            }
        }
    }
}
