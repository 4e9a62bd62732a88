//! `tokengate check`: validate both files, print every error, or a summary.

use std::path::Path;

use crate::config::Config;
use crate::tokens::file;

/// Exit 0 when valid, 1 with every error when not.
pub fn check(config: &Path) -> i32 {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: invalid ({} error{})", config.display(), errors.0.len(), plural(errors.0.len()));
            return 1;
        }
    };
    // What `run` would read besides the two files: TLS material and the CA.
    let mut files_ok = true;
    if let Some(tls) = &cfg.tls {
        if let Err(e) = crate::server::tls_acceptor(tls) {
            eprintln!("{}: {e}", config.display());
            files_ok = false;
        }
    }
    if let Err(e) = crate::proxy::upstream::UpstreamClient::new(&cfg.upstream) {
        eprintln!("{}: {e}", config.display());
        files_ok = false;
    }
    match file::load(&cfg.tokens_file, cfg.tokens_max_file_bytes) {
        Ok(_) if !files_ok => 1,
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            let t = &loaded.table;
            let active = t.entries().filter(|e| e.active()).count();
            println!("{}: ok", config.display());
            println!("  proxy   {}{}", cfg.listen, if cfg.tls.is_some() { " (TLS)" } else { "" });
            println!("  admin   {}", cfg.admin_listen);
            println!("  upstream {}://{}", cfg.upstream.scheme, cfg.upstream.authority);
            println!(
                "  tokens  {}: {} token{} ({} active), {} access right{}",
                cfg.tokens_file.display(),
                t.len(),
                plural(t.len()),
                active,
                t.rights().len(),
                plural(t.rights().len())
            );
            0
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: invalid ({} error{})", cfg.tokens_file.display(), errors.0.len(), plural(errors.0.len()));
            1
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
