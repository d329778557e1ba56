//! The `hub-server` binary: read the command line and settings, start logging, serve until SIGINT or SIGTERM, shut down gracefully.

use std::process::ExitCode;

use anyhow::Context;
use hub_server::cli::{self, Command};
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

async fn serve() -> anyhow::Result<()> {
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

// The command line's answers (help, version, usage errors) and the reason a
// start failed are for the person at the terminal, not for the log: they go
// to stdout and stderr as plain text, the one place the server prints.
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("{}", cli::version());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Serve) => {}
        Err(error) => {
            eprintln!("hub-server: {error}");
            return ExitCode::from(2);
        }
    }
    match actix_web::rt::System::new().block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` joins the causes on one line: every start-up failure is
            // written as a sentence with its next step, never a Debug dump.
            eprintln!("hub-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}
