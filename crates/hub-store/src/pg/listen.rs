//! The change listener: one connection of its own per replica that `LISTEN`s for the registry's change notifications (migration V5) and hands each to a [`ChangeHandler`], reconnecting with backoff.
//!
//! Every change to `service_registry` sends `pg_notify('hub_registry_changed',
//! '<tenant>/<service>')` from a trigger, in the change's own transaction, so
//! a notification exists exactly when the change committed. This module turns
//! them into calls of a [`ChangeHandler`] (the lookup cache) and says when it
//! starts listening and when it stops: a handler must assume that any change
//! made while no one listened was missed.
//!
//! The connection is not pooled: a pooled one would be handed to requests, and
//! `LISTEN` is session state. It is opened from the store's [`PgConfig`] with
//! its own `application_name` (so that operators, and tests, can tell it from
//! the pool's), and it is pinged every [`PING_INTERVAL`]: a peer that vanished
//! without closing the socket would otherwise go unnoticed for as long as TCP
//! keepalive takes (about 25 s), all the while the cache believed it heard
//! every change. A ping unanswered within [`PING_TIMEOUT`] counts as a loss.
//!
//! No tenant is set on this connection and it reads no table: it only
//! receives the notifications of its database.

use std::sync::Arc;
use std::time::Duration;

use hub_core::cache::CachedStore;
use hub_core::{ServiceName, TenantId};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

use super::config::PgConfig;

/// The channel the V5 trigger notifies.
pub const CHANGE_CHANNEL: &str = "hub_registry_changed";

/// How often the listening connection is checked.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a check may take before the connection counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest wait between attempts to connect.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What listens to the registry's changes.
pub trait ChangeHandler: Send + Sync + 'static {
    /// The listener listens: every change committed from now on will be
    /// handed over. Changes before it may have been missed.
    fn connected(&self);
    /// The listener lost its connection: changes from now on may be missed.
    fn lost(&self);
    /// A change of one tenant's service committed.
    fn changed(&self, tenant: &TenantId, service: &ServiceName);
    /// Any service may have changed (a `TRUNCATE`, or a notification that
    /// could not be read).
    fn everything_changed(&self);
}

impl ChangeHandler for CachedStore {
    fn connected(&self) {
        self.set_listening(true);
    }

    fn lost(&self) {
        self.set_listening(false);
    }

    fn changed(&self, tenant: &TenantId, service: &ServiceName) {
        self.forget(tenant, service);
    }

    fn everything_changed(&self) {
        self.forget_all();
    }
}

/// What one notification's payload says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    /// `<tenant>/<service>`.
    Changed(TenantId, ServiceName),
    /// `*`: every service.
    Everything,
}

/// Reads a payload of the V5 trigger. `/` separates the ids because neither
/// id grammar allows it. Ids are read with `restore`, which accepts every
/// value the store ever accepted. `None`: not a payload of the trigger.
pub fn decode(payload: &str) -> Option<Notified> {
    if payload == "*" {
        return Some(Notified::Everything);
    }
    let (tenant, service) = payload.split_once('/')?;
    Some(Notified::Changed(
        TenantId::restore(tenant).ok()?,
        ServiceName::restore(service).ok()?,
    ))
}

/// Hands one notification to `handler`; one that cannot be read is logged
/// and taken to mean that anything may have changed (the safe side).
fn deliver(handler: &dyn ChangeHandler, payload: &str) {
    match decode(payload) {
        Some(Notified::Changed(tenant, service)) => handler.changed(&tenant, &service),
        Some(Notified::Everything) => handler.everything_changed(),
        None => {
            tracing::warn!(
                payload,
                "undecodable change notification: every cached lookup is dropped"
            );
            handler.everything_changed();
        }
    }
}

/// Listens on [`CHANGE_CHANNEL`] of `config`'s database as
/// `application_name`, handing every notification to `handler`, until `stop`
/// turns true. Reconnects after a loss, waiting 250 ms, then twice as long
/// each failed attempt up to 10 s.
pub async fn run(
    config: PgConfig,
    application_name: String,
    handler: Arc<dyn ChangeHandler>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&config, &application_name, &handler, &mut stop).await {
            Session::Stopped => return,
            Session::NeverConnected(error) => {
                tracing::debug!(%error, "change listener cannot connect yet");
            }
            Session::Lost(reason) => {
                tracing::warn!(
                    %reason,
                    "change listener lost its connection: cached lookups were dropped and last HUB_LOOKUP_CACHE_MS until it reconnects"
                );
                backoff = FIRST_BACKOFF;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How one connection ended.
enum Session {
    /// Told to stop.
    Stopped,
    /// Connecting or `LISTEN` failed; the handler was not told it listened.
    NeverConnected(String),
    /// Listened, then lost the connection; the handler was told both.
    Lost(String),
}

async fn session(
    config: &PgConfig,
    application_name: &str,
    handler: &Arc<dyn ChangeHandler>,
    stop: &mut watch::Receiver<bool>,
) -> Session {
    let mut pg = config.connection();
    pg.application_name(application_name);
    let connecting = tokio::select! {
        connecting = pg.connect(NoTls) => connecting,
        _ = stop.changed() => return Session::Stopped,
    };
    let (client, mut connection) = match connecting {
        Ok(pair) => pair,
        Err(error) => return Session::NeverConnected(error.to_string()),
    };
    // The connection is driven by a task of its own, which hands over each
    // notification as it is read: nothing queues between PostgreSQL and the
    // handler. It ends when the connection does.
    let driver = {
        let handler = handler.clone();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANGE_CHANNEL => {
                        deliver(handler.as_ref(), n.payload());
                    }
                    Some(Ok(AsyncMessage::Notice(notice))) => {
                        tracing::debug!(%notice, "change listener notice");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return error.to_string(),
                    None => return "the server closed the connection".to_owned(),
                }
            }
        })
    };
    let mut driver = AbortOnDrop(driver);
    let statement = format!("LISTEN {CHANGE_CHANNEL}");
    let listen = tokio::time::timeout(config.call_deadline(), client.batch_execute(&statement));
    let listened = tokio::select! {
        listened = listen => listened,
        _ = stop.changed() => return Session::Stopped,
    };
    match listened {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Session::NeverConnected(error.to_string()),
        Err(_) => return Session::NeverConnected("LISTEN timed out".to_owned()),
    }
    handler.connected();
    tracing::info!(
        channel = CHANGE_CHANNEL,
        "change listener listening: cached lookups are kept until their service changes"
    );
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            ended = &mut driver.0 => {
                break ended.unwrap_or_else(|e| format!("the connection task failed: {e}"));
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => break error.to_string(),
                    Err(_) => break format!("no answer to a ping within {PING_TIMEOUT:?}"),
                }
            }
            _ = stop.changed() => {
                // Stopping: the cache is not used any more; nothing to tell.
                return Session::Stopped;
            }
        }
    };
    handler.lost();
    Session::Lost(reason)
}

/// Ends the connection task with the session, whichever way it ends.
struct AbortOnDrop(tokio::task::JoinHandle<String>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_of_the_trigger_are_read_and_others_are_not() {
        assert_eq!(
            decode("tenant-1/orders.v2"),
            Some(Notified::Changed(
                TenantId::parse("tenant-1").unwrap(),
                ServiceName::parse("orders.v2").unwrap()
            ))
        );
        assert_eq!(decode("*"), Some(Notified::Everything));
        for bad in [
            "",
            "no-separator",
            "/svc",
            "tenant/",
            "ten.ant/svc",
            "t/s/extra",
            "t/s p",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[derive(Default)]
    struct Recorded(std::sync::Mutex<Vec<String>>);

    impl ChangeHandler for Recorded {
        fn connected(&self) {
            self.0.lock().unwrap().push("connected".into());
        }
        fn lost(&self) {
            self.0.lock().unwrap().push("lost".into());
        }
        fn changed(&self, tenant: &TenantId, service: &ServiceName) {
            self.0.lock().unwrap().push(format!("{tenant}/{service}"));
        }
        fn everything_changed(&self) {
            self.0.lock().unwrap().push("everything".into());
        }
    }

    #[test]
    fn an_undecodable_notification_means_everything_changed() {
        let recorded = Recorded::default();
        deliver(&recorded, "t1/svc");
        deliver(&recorded, "garbage");
        deliver(&recorded, "*");
        assert_eq!(
            *recorded.0.lock().unwrap(),
            ["t1/svc", "everything", "everything"]
        );
    }
}
