//! The `jotd-load` binary; see the library docs.

use clap::Parser;
use jotd_load::{Cli, Outcome, execute, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    match execute(Cli::parse()) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Ran(r)) => {
            run::print(&r);
            if r.passed() {
                ExitCode::SUCCESS
            } else {
                eprintln!("jotd-load: FAILED: wrong, missing or failed decisions (see above)");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("jotd-load: {e:#}");
            ExitCode::from(2)
        }
    }
}
