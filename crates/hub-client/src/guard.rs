//! `RegistrationGuard`: keeps a registration alive (heartbeats at a third of the ttl, re-registration after a 404, backoff while the hub is unreachable) and deregisters when dropped or shut down.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::client::HubClient;
use crate::error::HubError;
use crate::types::{HeartbeatRequest, Instance, RegistrationSpec};

/// The first retry after a failed heartbeat; later ones double up to the
/// heartbeat interval.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// The shortest heartbeat interval: a zero one would send heartbeats in a
/// busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A registration kept alive by a background task.
///
/// The task sends a heartbeat every [`RegistrationGuard::interval`] (a
/// third of the ttl, so two can fail before the lease ends). When the hub
/// answers 404 (the lease expired, or the hub restarted without its
/// registry) it registers again at once; when the hub cannot be reached it
/// retries with exponential backoff and jitter, never waiting longer than
/// the interval.
///
/// [`RegistrationGuard::shutdown`] stops the task and deregisters, waiting
/// for the answer. Dropping the guard does the same in the background, on
/// a best-effort basis: if the runtime itself is shutting down, the
/// deregistration may never be sent, and the lease then simply expires.
pub struct RegistrationGuard {
    service_name: String,
    instance_id: String,
    interval: Duration,
    state: Arc<Mutex<GuardState>>,
    // Dropping the sender (with the guard) tells the task to deregister.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), HubError>>>,
}

impl std::fmt::Debug for RegistrationGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationGuard")
            .field("service_name", &self.service_name)
            .field("instance_id", &self.instance_id)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// What the task learned, readable through the guard. A std mutex: it is
/// held only to copy a few fields, never across an await.
#[derive(Debug)]
struct GuardState {
    instance: Instance,
    registrations: u64,
    last_error: Option<String>,
}

impl HubClient {
    /// Registers `spec` and keeps it alive until the returned guard is
    /// dropped or shut down. The first registration is made before this
    /// returns, so a refused one (422, 401, 403) is this call's error.
    pub async fn register(&self, spec: RegistrationSpec) -> Result<RegistrationGuard, HubError> {
        let interval = spec.ttl() / 3;
        self.register_with_interval(spec, interval).await
    }

    /// Like [`HubClient::register`], with heartbeats every `interval`
    /// instead of a third of the ttl (an interval at or above the ttl lets
    /// the lease lapse between beats; one under 100 ms is raised to it).
    pub async fn register_with_interval(
        &self,
        spec: RegistrationSpec,
        interval: Duration,
    ) -> Result<RegistrationGuard, HubError> {
        let interval = interval.max(MIN_INTERVAL);
        let instance = self.register_once(&spec).await?;
        let state = Arc::new(Mutex::new(GuardState {
            instance,
            registrations: 1,
            last_error: None,
        }));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keep_alive(
            self.clone(),
            spec.clone(),
            interval,
            state.clone(),
            stopped,
        ));
        Ok(RegistrationGuard {
            service_name: spec.service_name().to_owned(),
            instance_id: spec.effective_instance_id().to_owned(),
            interval,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

impl RegistrationGuard {
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The time between two heartbeats.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The instance as the hub answered its last registration.
    pub fn instance(&self) -> Instance {
        self.lock().instance.clone()
    }

    /// How often the instance was registered: 1, plus one for each time
    /// the hub had forgotten it.
    pub fn registrations(&self) -> u64 {
        self.lock().registrations
    }

    /// The last failed heartbeat or registration, cleared by a success.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GuardState> {
        // A panic while holding the lock cannot leave these plain fields
        // half-written in a way that matters, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops the heartbeats and deregisters the instance, waiting for the
    /// hub's answer. An instance the hub no longer knows counts as
    /// deregistered.
    pub async fn shutdown(mut self) -> Result<(), HubError> {
        if let Some(stop) = self.stop.take() {
            // The task may have ended already (its runtime stopping); then
            // there is nobody to tell.
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(HubError::Task(format!("heartbeats: {e}")))),
            None => Ok(()),
        }
    }
}

/// The background task: heartbeats until told to stop (or until the guard
/// is dropped, which drops the sender), then deregisters.
async fn keep_alive(
    client: HubClient,
    spec: RegistrationSpec,
    interval: Duration,
    state: Arc<Mutex<GuardState>>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), HubError> {
    let mut backoff = Backoff::new(FIRST_RETRY, interval);
    let mut wait = interval;
    let heartbeat = HeartbeatRequest::new(spec.service_name(), spec.effective_instance_id());
    loop {
        tokio::select! {
            // A message or a dropped sender: either way, stop.
            _ = &mut stop => break,
            () = tokio::time::sleep(wait) => {}
        }
        let outcome = beat(&client, &spec, &heartbeat, &state).await;
        let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
        wait = match outcome {
            Ok(()) => {
                guard.last_error = None;
                backoff.reset();
                interval
            }
            Err(e) if e.is_transient() => {
                tracing::debug!(error = %e, "heartbeat failed, retrying with backoff");
                guard.last_error = Some(e.to_string());
                backoff.next_delay()
            }
            Err(e) => {
                // A refusal (401, 403, 422) will not change by retrying
                // sooner; keep the normal pace so a fixed key or hub
                // configuration is picked up.
                tracing::warn!(error = %e, service = spec.service_name(), "heartbeat refused");
                guard.last_error = Some(e.to_string());
                interval
            }
        };
    }
    match client
        .deregister(spec.service_name(), Some(spec.effective_instance_id()))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, service = spec.service_name(), "deregistration failed");
            Err(e)
        }
    }
}

/// One heartbeat; a 404 turns into a new registration.
async fn beat(
    client: &HubClient,
    spec: &RegistrationSpec,
    heartbeat: &HeartbeatRequest,
    state: &Mutex<GuardState>,
) -> Result<(), HubError> {
    match client.heartbeat(heartbeat).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            tracing::info!(
                service = spec.service_name(),
                instance = spec.effective_instance_id(),
                "the hub does not know this instance: registering again"
            );
            let instance = client.register_once(spec).await?;
            let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
            guard.instance = instance;
            guard.registrations += 1;
            Ok(())
        }
        Err(e) => Err(e),
    }
}
