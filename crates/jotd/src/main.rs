//! jotd: batch JWT verification daemon.
//!
//! Subcommands: `speed` (engine throughput against raw aws-lc-rs), `check`
//! (decide JSON-lines requests offline against a config), `config check`
//! (validate a config and list its tenants and keys), `key fingerprint`.
//! `serve` (the daemon: QUIC in, decisions out; development defaults when
//! started without `--config`).

// A closed pipe is a quiet exit, not a panic: commands print through
// `output::Output`, which `println!` would bypass.
#![deny(clippy::print_stdout)]

mod admin;
mod check;
mod config_cmd;
mod dev;
mod logging;
mod metrics;
mod output;
#[cfg(target_os = "linux")]
mod process_metrics;
mod serve;
mod settings;
mod speed;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// jotd: high-throughput batch JWT verification.
#[derive(Parser, Debug)]
#[command(name = "jotd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve batches over QUIC. Without --config: development defaults written to ./jotd-dev/.
    Serve(serve::ServeArgs),
    /// Measure the engine per algorithm against raw aws-lc-rs on the same keys and tokens.
    Speed(speed::SpeedArgs),
    /// Decide JSON-lines requests offline: one JSON decision line per input line, in order.
    Check(check::CheckArgs),
    /// Work with the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Work with key files.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate a config (and every file it names) without serving; list tenants, keys, JWKS sources.
    Check {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Print base64(SHA-256(DER SPKI)) of a public key file (PEM, PKCS#1, certificate, base64 PEM or DER).
    Fingerprint {
        /// The key file.
        file: PathBuf,
    },
}

/// Resolves once the daemon's stop flag is set (or its sender is gone).
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

fn main() -> ExitCode {
    // Commands print through `out`, never `println!`: see `output` for a
    // closed pipe (exit 0, no message).
    let mut out = output::Output::stdout();
    let result = match Cli::parse().command {
        Command::Serve(args) => serve::run(&args),
        Command::Speed(args) => speed::run(&args, &mut out),
        Command::Check(args) => check::run(&args, &mut out),
        Command::Config(ConfigCommand::Check { config }) => config_cmd::check(&config, &mut out),
        Command::Key(KeyCommand::Fingerprint { file }) => config_cmd::fingerprint(&file, &mut out),
    }
    .and_then(|()| Ok(out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head -1`): it had what it wanted.
        Err(_) if out.reader_gone() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jotd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
