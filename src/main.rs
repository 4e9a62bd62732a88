//! The `tokengate` binary: parse the command line, run, exit with its code.

use clap::Parser;

/// mimalloc: per-thread free lists with no lock on the request path, and
/// measurably fewer cycles per request than glibc's malloc (whose arena
/// locks and consolidation showed up as several per cent of a proxied
/// request).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let code = tokengate::cli::Cli::parse().run();
    std::process::exit(code);
}
