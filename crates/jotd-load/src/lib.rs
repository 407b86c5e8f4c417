//! jotd-load: the load harness. Mints tokens, drives `jotd serve` over QUIC
//! through the client library, checks every decision against what it must be,
//! and reports throughput, latency percentiles (HDR), reasons and mismatches.
//!
//! - `jotd-load tenants --count N --algs ... --out DIR`: a daemon config for N
//!   tenants plus the keys and manifest the harness signs with.
//! - `jotd-load mint`: one token from flags.
//! - `jotd-load run`: the load (see `run --help`); exits non-zero on any
//!   mismatch, missing decision or batch error.
//! - `jotd-load stall`: a hostile client that holds half-sent requests, to
//!   measure the daemon's request buffer and `request_timeout`.

pub mod run;
mod stall;
mod tenants;
mod workload;

use clap::{Parser, Subcommand};

/// jotd-load: drive jotd, check every decision, report.
#[derive(Parser, Debug)]
#[command(name = "jotd-load", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Write a daemon config for N tenants, with keys, TLS files and the harness manifest.
    Tenants(tenants::TenantsArgs),
    /// Mint one token.
    Mint(tenants::MintArgs),
    /// Run load against the daemon and check every decision.
    Run(run::RunArgs),
    /// Hold half-sent requests open (a hostile client) and report what the
    /// daemon did with them and its memory.
    Stall(stall::StallArgs),
}

/// What a command produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // returned once per process
pub enum Outcome {
    /// `tenants` or `mint` finished.
    Done,
    /// `run` finished with this report.
    Ran(run::Report),
}

/// Runs a command line (`["jotd-load", "run", ...]`).
///
/// # Errors
/// Bad flags, unreadable files, no daemon to talk to.
pub fn main_with<I, T>(args: I) -> anyhow::Result<Outcome>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    execute(cli)
}

/// Runs a parsed command line.
///
/// # Errors
/// As [`main_with`].
pub fn execute(cli: Cli) -> anyhow::Result<Outcome> {
    Ok(match cli.command {
        Command::Tenants(a) => {
            tenants::tenants(&a)?;
            Outcome::Done
        }
        Command::Mint(a) => {
            tenants::mint(&a)?;
            Outcome::Done
        }
        Command::Run(a) => Outcome::Ran(run::run(&a)?),
        Command::Stall(a) => {
            stall::stall(&a)?;
            Outcome::Done
        }
    })
}
