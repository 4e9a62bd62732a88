//! The token file on any text: `parse` does not panic, and its two readers
//! (the fast line scanner `parse` uses whenever it can, and the general
//! toml_edit reader alone: `file::parse_both_ways`) agree: the same errors,
//! or tables with the same rights and the same tokens, field by field.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tokengate::diagnostic::ConfigErrors;
use tokengate::tokens::file::{parse_both_ways, Loaded};

/// What a load says, in words to compare (a table's own `Debug` holds
/// seeded hashers).
fn outcome(r: &Result<Loaded, ConfigErrors>) -> Result<(Vec<String>, Vec<String>, Vec<String>), Vec<String>> {
    match r {
        Err(e) => Err(e.0.iter().map(ToString::to_string).collect()),
        Ok(l) => {
            let rights = l.table.rights().iter().map(|r| format!("{r:?}")).collect();
            let tokens = l
                .table
                .entries()
                .map(|t| {
                    format!(
                        "{} {} {:?} {:?} {} {:?} {} {:?}",
                        t.name(),
                        t.active(),
                        t.expires(),
                        t.ip_restriction().nets(),
                        t.right().name,
                        t.limits(),
                        t.line(),
                        t.digests(),
                    )
                })
                .collect();
            Ok((rights, tokens, l.warnings.iter().map(ToString::to_string).collect()))
        }
    }
}

fuzz_target!(|text: &str| {
    let [fast, general] = parse_both_ways(Path::new("tokens.toml"), text);
    assert_eq!(outcome(&fast), outcome(&general), "the readers disagree on {text:?}");
});
