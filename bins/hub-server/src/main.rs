//! The `hub-server` binary: read settings, start logging, serve until SIGINT or SIGTERM, shut down gracefully.

use anyhow::Context;
use hub_server::{Application, Settings, telemetry};

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r.context("waiting for SIGINT")?; Ok("SIGINT") }
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_process_env().context("reading configuration")?;
    telemetry::init(settings.log.format)?;
    let app = Application::build(settings).await?;
    let stop = app.stop_handle();
    let mut server = tokio::spawn(app.run_until_stopped());
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal = signal?, "shutting down: no new connections, finishing requests in flight");
            stop.stop().await;
            server.await.context("server task")??;
        }
        ended = &mut server => ended.context("server task")??,
    }
    Ok(())
}
