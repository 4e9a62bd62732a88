//! The command line (interface.md §2): `run`, `check` and `token`. The only module
//! that prints to the terminal; returns exit codes to `main`.

mod check;
mod run;
mod token;

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
    /// Make, rotate, hash and list tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a random token, print it once, and add its SHA-256 to the token file.
    New {
        /// A unique name: what logs, metrics and /tokens show.
        #[arg(long)]
        name: String,
        /// One of the file's [access_rights].
        #[arg(long)]
        access_right: String,
        /// Allow only this address or CIDR (repeat for more); none: any address.
        #[arg(long = "ip", value_name = "CIDR")]
        ips: Vec<String>,
        /// Refuse the token from this RFC 3339 time on, e.g. 2027-06-30T00:00:00Z.
        #[arg(long, value_name = "RFC3339")]
        expires: Option<String>,
        /// This token's own rate, N/s, N/m or N/h (a token bucket); none: its right's.
        #[arg(long, value_name = "N/s|N/m|N/h")]
        rate: Option<String>,
        /// Requests its rate allows at once; none: its right's, or the rate's N.
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        burst: Option<String>,
        /// Requests it may have in flight at once; none: its right's.
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        concurrency: Option<String>,
        /// The gateway config (names the token file).
        #[arg(short, long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Add a new random secret in front of a token's token_sha256 and print it
    /// once; the old secrets keep working until their digests are removed.
    Rotate {
        /// The token's name.
        #[arg(long)]
        name: String,
        /// The gateway config (names the token file).
        #[arg(short, long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Read a token on stdin and print its token_sha256.
    Hash,
    /// The tokens as a table; never a secret or a digest.
    List {
        /// The gateway config (names the token file).
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
            Command::Token(TokenCommand::Hash) => token::hash(),
            Command::Token(TokenCommand::List { config }) => token::list(&config),
            Command::Token(TokenCommand::Rotate { name, config }) => token::rotate(&config, &name),
            Command::Token(TokenCommand::New {
                name,
                access_right,
                ips,
                expires,
                rate,
                burst,
                concurrency,
                config,
            }) => token::new(
                &config,
                &token::NewTokenRequest {
                    name: &name,
                    access_right: &access_right,
                    ips: &ips,
                    expires: expires.as_deref(),
                    rate: rate.as_deref(),
                    burst: burst.as_deref(),
                    concurrency: concurrency.as_deref(),
                },
            ),
        }
    }
}
