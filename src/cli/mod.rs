//! The command line (interface.md §2): `run` and `check`. The only module
//! that prints to the terminal; returns exit codes to `main`.

mod check;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// tokengate: narrow, revocable, IP-bound tokens in front of the Outpost24
/// OUTSCAN / HIAB XMLAPI.
#[derive(Debug, Parser)]
#[command(name = "tokengate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve: check every request's APPTOKEN and forward the allowed ones.
    Run {
        /// The gateway config.
        #[arg(short, long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Validate the gateway config and its token file; print a summary.
    Check {
        /// The gateway config.
        #[arg(short, long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
}

impl Cli {
    /// Runs the command; returns the process exit code.
    pub fn run(self) -> i32 {
        match self.command {
            Command::Run { config } => run::run(&config),
            Command::Check { config } => check::check(&config),
        }
    }
}
