//! The `tokengate` binary: parse the command line, run, exit with its code.

use clap::Parser;

fn main() {
    let code = tokengate::cli::Cli::parse().run();
    std::process::exit(code);
}
