//! xtask: project automation behind `cargo xtask <command>` (test, bench), in Rust instead of loose scripts.

// xtask talks to the developer on stderr: that is its interface. The
// workspace denies printing because the server must log instead.
#![allow(clippy::print_stderr)]

mod args;
mod bench;
mod kafka;
mod migrate;
mod pip;
mod schemathesis;
mod seed;
mod test;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test     fmt check, clippy -D warnings, layering check, cargo test --workspace
           (with a Kafka-compatible broker on 127.0.0.1:9092, started if none listens,
           and schemathesis installed once into ~/.cache/central-hub for the API contract)
  migrate  apply the SQL migrations to the database of POSTGRES_* (see --help of it)
  seed     load the demo data set (three tenants, a dozen services each)
  bench    start a release hub-server and drive it over loopback; prints medians of 3 runs";

fn main() -> std::process::ExitCode {
    // Errors are told as one line of causes (`{:#}`), not as anyhow's Debug
    // form, which dumps a backtrace under RUST_BACKTRACE=1: an expected
    // refusal (a database `migrate` will not touch) is a sentence, not a crash.
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("migrate") => migrate::run(&args[1..]),
        Some("seed") => seed::run(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            eprintln!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

/// The workspace root (the parent of this crate's folder).
fn project_root() -> anyhow::Result<PathBuf> {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("xtask must live one folder below the workspace root")
}

/// `cargo`, as the one that runs us (so toolchain overrides carry over).
fn cargo() -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    if let Ok(root) = project_root() {
        command.current_dir(root);
    }
    command
}

/// Runs a command, echoing it first, and fails if it fails.
fn run_step(name: &str, command: &mut Command) -> anyhow::Result<()> {
    eprintln!("\n==> {name}: {command:?}");
    let status = command
        .status()
        .with_context(|| format!("{name}: could not start {command:?}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}
