//! The HTTP server: binds the listener (port 0 in tests) and serves hub-http's app on it.

use std::net::{SocketAddr, TcpListener};

use actix_web::HttpServer;
use actix_web::dev::Server;
use hub_http::HttpDeps;

use crate::settings::ServerSettings;

/// Binds `HUB_BIND` and starts serving `deps` on it (the returned server
/// runs once awaited). Signals are left to the caller: the binary stops the
/// server through a `StopHandle`.
pub(crate) fn serve(
    settings: &ServerSettings,
    deps: HttpDeps,
) -> anyhow::Result<(SocketAddr, Server)> {
    let listener = TcpListener::bind(&settings.bind)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.bind))?;
    let addr = listener.local_addr()?;
    let mut http = HttpServer::new(move || hub_http::app(deps.clone()))
        .disable_signals()
        .shutdown_timeout(settings.shutdown_timeout_secs);
    if let Some(workers) = settings.workers {
        http = http.workers(workers);
    }
    let server = http.listen(listener)?.run();
    tracing::info!(%addr, "listening");
    Ok((addr, server))
}
