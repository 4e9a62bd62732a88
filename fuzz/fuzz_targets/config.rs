//! `gateway.toml` (`Config::parse`) on any text: no panic; a refusal has
//! at least one error, and every error has a line and column but a
//! missing section, which is about the whole file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tokengate::config::Config;

fuzz_target!(|text: &str| {
    let Err(errors) = Config::parse(Path::new("gateway.toml"), text) else { return };
    assert!(!errors.0.is_empty());
    for e in &errors.0 {
        assert!(e.line > 0 || e.message.starts_with("missing section"), "{e} in {text:?}");
        assert!(e.line == 0 || e.column > 0, "{e}");
        assert!(e.line <= text.lines().count().max(1) + 1, "{e} past the end of {text:?}");
    }
});
