//! jotd: batch JWT verification daemon.
//!
//! Subcommands so far: `speed` (engine throughput against raw aws-lc-rs).
//! `serve`, `check`, `config check` and `key fingerprint` arrive with the
//! jotd-keys and transport work (see the issues and docs/architecture.md).

mod speed;

use clap::{Parser, Subcommand};

/// jotd: high-throughput batch JWT verification.
#[derive(Parser, Debug)]
#[command(name = "jotd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure the engine per algorithm against raw aws-lc-rs on the same keys and tokens.
    Speed(speed::SpeedArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Speed(args) => speed::run(&args),
    }
}
