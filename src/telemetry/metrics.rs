//! `/metrics`: requests by decision, reason and token name; upstream latency;
//! reloads and reload failures; tokens loaded. Requests only bump atomics (the
//! per-token ones live in the token's state); the Prometheus text is built at
//! scrape time by prometheus-client from those atomics, so the request path
//! takes no lock for metrics.
//!
//! Label values are escaped here ([`Escaped`]): prometheus-client 0.23
//! writes them as given, and a token name is free text, so a `"`, `\` or
//! line break in one could end the value early, add a forged series or
//! family, or break the whole scrape.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use strum::{EnumCount, IntoEnumIterator};

use crate::denial::{DenialCode, UpstreamFailure};
use crate::tokens::state::{unix_ms, Decision, StateRegistry};

/// The upper bounds of a histogram's buckets, in seconds.
trait Bounds {
    const BOUNDS: &'static [f64];
}

/// Upstream answers: up to `upstream.timeout`'s default of 120 s.
#[derive(Debug)]
struct UpstreamBounds;
impl Bounds for UpstreamBounds {
    const BOUNDS: &'static [f64] =
        &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0];
}

/// The rate-limit store's calls, cut off at `limits.shared.timeout` (50 ms
/// by default).
#[derive(Debug)]
struct StoreBounds;
impl Bounds for StoreBounds {
    const BOUNDS: &'static [f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25];
}

/// A histogram of durations, in atomics: one per bucket and the sum.
#[derive(Debug)]
struct Histogram<B> {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
    _bounds: std::marker::PhantomData<B>,
}

impl<B: Bounds> Default for Histogram<B> {
    fn default() -> Self {
        let bounds = B::BOUNDS;
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self { bounds, counts, sum_us: AtomicU64::new(0), _bounds: std::marker::PhantomData }
    }
}

impl<B> Histogram<B> {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.iter().position(|&b| s <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn encode(&self, enc: &mut DescriptorEncoder, name: &str, help: &str) -> Result<(), std::fmt::Error> {
        // The encoder accumulates the buckets itself and prints f64::MAX
        // as +Inf: hand it the count of each bucket alone.
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        for (i, bound) in self.bounds.iter().chain(std::iter::once(&f64::MAX)).enumerate() {
            let n = self.counts[i].load(Ordering::Relaxed);
            count += n;
            buckets.push((*bound, n));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let mut e = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        e.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Every counter the gateway keeps outside the per-token state.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Refusals before a token was found (missing, unknown, ambiguous), by code.
    anonymous: [AtomicU64; DenialCode::COUNT],
    upstream_latency: Histogram<UpstreamBounds>,
    store_latency: Histogram<StoreBounds>,
    store_errors: AtomicU64,
    upstream_failures: [AtomicU64; UpstreamFailure::COUNT],
    reload_success: AtomicU64,
    reload_failure: AtomicU64,
    tls_reload_success: AtomicU64,
    tls_reload_failure: AtomicU64,
    token_file_read_failures: AtomicU64,
    last_good_load_ms: AtomicU64,
    tokens_loaded: AtomicU64,
    upstream_ready: AtomicBool,
    rest_renewals: [AtomicU64; 2],
}

impl Metrics {
    /// Counts a refusal that no token can be charged with.
    pub fn anonymous_denial(&self, code: DenialCode) {
        self.anonymous[code as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time the upstream took to begin its answer.
    pub fn upstream_latency(&self, d: Duration) {
        self.upstream_latency.observe(d);
        self.upstream_ready.store(true, Ordering::Relaxed);
    }

    /// Counts an allowed request the upstream did not answer.
    pub fn upstream_failure(&self, kind: UpstreamFailure) {
        self.upstream_failures[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream answered something (any status): it is reachable.
    pub fn mark_upstream_ready(&self) {
        self.upstream_ready.store(true, Ordering::Relaxed);
    }

    /// Whether the upstream has answered at least once.
    pub fn upstream_ready(&self) -> bool {
        self.upstream_ready.load(Ordering::Relaxed)
    }

    /// Counts a table swapped in (the first load too), its size and the time.
    pub fn reload_succeeded(&self, tokens: usize) {
        self.reload_success.fetch_add(1, Ordering::Relaxed);
        self.tokens_loaded.store(tokens as u64, Ordering::Relaxed);
        let ms = unix_ms(SystemTime::now());
        self.last_good_load_ms.store(ms, Ordering::Relaxed);
    }

    /// Records one call to the shared rate-limit store and whether it failed
    /// (an error or no answer within its timeout).
    pub fn store_call(&self, took: Duration, failed: bool) {
        self.store_latency.observe(took);
        if failed {
            self.store_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one attempt to obtain the scanner's REST token.
    pub fn rest_renewal(&self, succeeded: bool) {
        self.rest_renewals[usize::from(!succeeded)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an invalid file; the last good table kept serving.
    pub fn reload_failed(&self) {
        self.reload_failure.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a load of the `[server.tls]` pair (the first one too):
    /// applied, or refused with the current pair kept.
    pub fn tls_reload(&self, applied: bool) {
        let c = if applied { &self.tls_reload_success } else { &self.tls_reload_failure };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a token file that could not be read (also a failed reload).
    pub fn token_file_read_failed(&self) {
        self.token_file_read_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(self: &Arc<Self>, states: &Arc<StateRegistry>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape { metrics: self.clone(), states: states.clone() }));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// A label value written as the Prometheus text format and OpenMetrics
/// require: `\` as `\\`, `"` as `\"`, a line feed as `\n`; every other
/// character as it is (both formats take any UTF-8 there).
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, enc: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        let s = self.0;
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                b'\n' => "\\n",
                _ => continue,
            };
            enc.write_str(&s[plain..i])?;
            enc.write_str(escape)?;
            plain = i + 1;
        }
        enc.write_str(&s[plain..])
    }
}

/// Label pairs with escaped values.
fn labels<'a, const N: usize>(pairs: [(&'static str, &'a str); N]) -> [(&'static str, Escaped<'a>); N] {
    pairs.map(|(k, v)| (k, Escaped(v)))
}

#[derive(Debug)]
struct Scrape {
    metrics: Arc<Metrics>,
    states: Arc<StateRegistry>,
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        {
            let mut fam = enc.encode_descriptor(
                "tokengate_requests",
                "Requests by decision, reason and token name (empty when no token was found).",
                None,
                MetricType::Counter,
            )?;
            for code in DenialCode::iter() {
                let n = m.anonymous[code as usize].load(Ordering::Relaxed);
                if n > 0 {
                    let labels = labels([("decision", "denied"), ("reason", code.as_str()), ("token", "")]);
                    ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
                }
            }
            for state in self.states.snapshot() {
                let decisions = DenialCode::iter().map(Decision::Denied).chain([Decision::Allowed]);
                for decision in decisions {
                    let n = state.count(decision);
                    if n == 0 {
                        continue;
                    }
                    let (d, reason) = match decision {
                        Decision::Allowed => ("allowed", "ok"),
                        Decision::Denied(code) => ("denied", code.as_str()),
                    };
                    let labels = labels([("decision", d), ("reason", reason), ("token", &*state.name)]);
                    ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut fam = enc.encode_descriptor(
                "tokengate_upstream_failures",
                "Allowed requests the upstream did not answer, by kind (502 unreachable or TLS, 504 timeout).",
                None,
                MetricType::Counter,
            )?;
            for kind in UpstreamFailure::iter() {
                let n = m.upstream_failures[kind as usize].load(Ordering::Relaxed);
                ConstCounter::new(n).encode(fam.encode_family(&labels([("kind", kind.label())]))?)?;
            }
        }
        m.upstream_latency.encode(
            &mut enc,
            "tokengate_upstream_duration_seconds",
            "Time from sending a request upstream until its answer began.",
        )?;
        m.store_latency.encode(
            &mut enc,
            "tokengate_rate_limit_store_seconds",
            "Time of each call to the shared rate-limit store ([limits.shared]), cut off at its timeout.",
        )?;
        {
            let errors = ConstCounter::new(m.store_errors.load(Ordering::Relaxed));
            let e = enc.encode_descriptor(
                "tokengate_rate_limit_store_errors",
                "Calls to the shared rate-limit store that failed or timed out (on_error applied).",
                None,
                errors.metric_type(),
            )?;
            errors.encode(e)?;
        }
        {
            let mut fam =
                enc.encode_descriptor("tokengate_reloads", "Token file loads by outcome.", None, MetricType::Counter)?;
            let (ok, failed) = (m.reload_success.load(Ordering::Relaxed), m.reload_failure.load(Ordering::Relaxed));
            ConstCounter::new(ok).encode(fam.encode_family(&labels([("outcome", "success")]))?)?;
            ConstCounter::new(failed).encode(fam.encode_family(&labels([("outcome", "failure")]))?)?;
        }
        {
            let failed = ConstCounter::new(m.token_file_read_failures.load(Ordering::Relaxed));
            let e = enc.encode_descriptor(
                "tokengate_token_file_read_failures",
                "Token file reads that failed (not a regular file, over tokens.max_file_bytes, too slow, unreadable).",
                None,
                failed.metric_type(),
            )?;
            failed.encode(e)?;
        }
        {
            let mut fam = enc.encode_descriptor(
                "tokengate_rest_token_renewals",
                "Attempts to obtain the scanner's REST token ([upstream.rest]), by outcome.",
                None,
                MetricType::Counter,
            )?;
            for (i, outcome) in ["success", "failure"].into_iter().enumerate() {
                let n = m.rest_renewals[i].load(Ordering::Relaxed);
                ConstCounter::new(n).encode(fam.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        {
            let mut fam = enc.encode_descriptor(
                "tokengate_tls_reloads",
                "Loads of the [server.tls] certificate and key by outcome (a failure keeps the current pair).",
                None,
                MetricType::Counter,
            )?;
            let ok = m.tls_reload_success.load(Ordering::Relaxed);
            let failed = m.tls_reload_failure.load(Ordering::Relaxed);
            ConstCounter::new(ok).encode(fam.encode_family(&labels([("outcome", "success")]))?)?;
            ConstCounter::new(failed).encode(fam.encode_family(&labels([("outcome", "failure")]))?)?;
        }
        {
            let dropped = ConstCounter::new(crate::telemetry::log::DROPPED_LINES.load(Ordering::Relaxed));
            let e = enc.encode_descriptor(
                "tokengate_log_lines_dropped",
                "Log lines dropped because the log queue was full (stdout too slow).",
                None,
                dropped.metric_type(),
            )?;
            dropped.encode(e)?;
        }
        let gauges: [(&str, &str, f64); 3] = [
            (
                "tokengate_tokens_loaded",
                "Tokens in the table now serving.",
                m.tokens_loaded.load(Ordering::Relaxed) as f64,
            ),
            (
                "tokengate_last_reload_success_timestamp_seconds",
                "When the table now serving was loaded (Unix time).",
                m.last_good_load_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
            ("tokengate_upstream_up", "1 once the upstream has answered.", if m.upstream_ready() { 1.0 } else { 0.0 }),
        ];
        for (name, help, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_by_token_and_reason() {
        let m = Arc::new(Metrics::default());
        let states = Arc::new(StateRegistry::default());
        let s = states.for_name(&Arc::from("splunk"));
        s.record(Decision::Allowed, "127.0.0.1".parse().unwrap(), SystemTime::now());
        s.record(Decision::Denied(DenialCode::ActionNotAllowed), "127.0.0.1".parse().unwrap(), SystemTime::now());
        m.anonymous_denial(DenialCode::TokenUnknown);
        m.upstream_latency(Duration::from_millis(3));
        m.reload_succeeded(7);
        m.reload_failed();
        let text = m.render(&states);
        for want in [
            "tokengate_requests_total{decision=\"allowed\",reason=\"ok\",token=\"splunk\"} 1",
            "tokengate_requests_total{decision=\"denied\",reason=\"ACTION_NOT_ALLOWED\",token=\"splunk\"} 1",
            "tokengate_requests_total{decision=\"denied\",reason=\"TOKEN_UNKNOWN\",token=\"\"} 1",
            "tokengate_upstream_duration_seconds_bucket{le=\"0.001\"} 0",
            "tokengate_upstream_duration_seconds_bucket{le=\"0.005\"} 1",
            "tokengate_upstream_duration_seconds_bucket{le=\"+Inf\"} 1",
            "tokengate_upstream_duration_seconds_count 1",
            "tokengate_reloads_total{outcome=\"failure\"} 1",
            "tokengate_tokens_loaded 7",
            "tokengate_upstream_up 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Arc::new(Metrics::default());
        let states = Arc::new(StateRegistry::default());
        let name = "a\\\"b\n} 1\ntokengate_forged{x=\"1\\";
        let s = states.for_name(&Arc::from(name));
        s.record(Decision::Allowed, "127.0.0.1".parse().unwrap(), SystemTime::now());
        let text = m.render(&states);
        let want = r#"tokengate_requests_total{decision="allowed",reason="ok",token="a\\\"b\n} 1\ntokengate_forged{x=\"1\\"} 1"#;
        assert!(text.contains(want), "missing {want:?} in\n{text}");
        assert!(!text.lines().any(|l| l.starts_with("tokengate_forged")), "{text}");
    }
}
