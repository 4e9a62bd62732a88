//! `/metrics` read by a real parser (issue 12 point 2): token names with
//! `"`, `\` or a line break come back as the same label value and cannot add
//! a series or a family. The parser is Python's `prometheus_client`
//! (OpenMetrics, the format the gateway serves), from Debian's
//! `python3-prometheus-client`, which `.ci/run` installs; without it these
//! tests fail, they do not skip.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;

use tokengate::telemetry::metrics::Metrics;
use tokengate::tokens::state::{Decision, StateRegistry};

use crate::harness::*;

/// Parses OpenMetrics text: every sample as (name, labels, value).
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "name": s.name, "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Debian's interpreter, which the Debian package serves; `python3` else.
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn parse(text: &str) -> Vec<serde_json::Value> {
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the text (is python3-prometheus-client installed?):\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// Checks the parsed samples: only tokengate families, and the requests
/// series carry exactly `names` as their token labels (besides "").
fn check(samples: &[serde_json::Value], names: &[&str], text: &str) {
    for s in samples {
        let fam = s["family"].as_str().unwrap();
        assert!(fam.starts_with("tokengate_") && fam != "tokengate_forged", "family {fam:?} in\n{text}");
        for (k, _) in s["labels"].as_object().unwrap() {
            assert!(["decision", "reason", "token", "kind", "outcome", "le"].contains(&k.as_str()), "label {k:?}");
        }
    }
    let mut tokens: Vec<&str> = samples
        .iter()
        .filter(|s| s["name"] == "tokengate_requests_total")
        .filter_map(|s| s["labels"]["token"].as_str())
        .filter(|t| !t.is_empty())
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    let mut want = names.to_vec();
    want.sort_unstable();
    assert_eq!(tokens, want, "in\n{text}");
}

#[test]
fn names_with_quotes_backslashes_and_line_breaks_round_trip_through_a_real_parser() {
    let m = Arc::new(Metrics::default());
    let states = Arc::new(StateRegistry::default());
    let names =
        ["plain", "quote\"} 1\ntokengate_forged{x=\"1", "ends in a backslash\\", "\\\"\\n\n", "other{token=\"plain\"}"];
    for n in names {
        states.for_name(&Arc::from(n)).record(Decision::Allowed, "127.0.0.1".parse().unwrap(), SystemTime::now());
    }
    let text = m.render(&states);
    check(&parse(&text), &names, &text);
}

#[test]
fn the_served_metrics_parse_whole_with_hostile_token_names() {
    const Q: &str = "1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A1A";
    const S: &str = "2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B";
    let quote = "x\"} 1 tokengate_forged{token=\"reader";
    let slash = "trailing\\";
    let tokens = standard_tokens().token(TokenSpec::new(quote, Q, "admin")).token(TokenSpec::new(slash, S, "admin"));
    let up = MockUpstream::start();
    let gw = Gateway::start(&up.url(), &tokens.render());
    for t in [Q, S, RO] {
        assert_eq!(gw.get(&format!("/opi/XMLAPI?APPTOKEN={t}&ACTION=TARGETDATA")).status, 200);
    }
    gw.get(&format!("/opi/XMLAPI?APPTOKEN={UNKNOWN}"));
    let r = request(gw.admin, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    let text = r.text();
    let samples = parse(&text);
    check(&samples, &[quote, slash, "reader"], &text);
    // One series per token, each counting its own request.
    for name in [quote, slash, "reader"] {
        let n: Vec<_> = samples
            .iter()
            .filter(|s| s["name"] == "tokengate_requests_total" && s["labels"]["token"] == name)
            .collect();
        assert_eq!(n.len(), 1, "{name:?}: {n:?}");
        assert_eq!(n[0]["value"], 1.0);
    }
}
