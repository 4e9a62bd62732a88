//! Stage 4 of a request: the token's `rate` and `concurrency` (the last row
//! of interface.md §5), for a request every other row has granted. A
//! refused request spends nothing here, and a token without limits is not
//! looked at.
//!
//! Concurrency is counted per replica, in the token's live state, until
//! the answer's body has ended or the client went away. The rate is a
//! GCRA bucket (`crate::quota`): in the token's live state, or, with
//! `[limits.shared]`, in Redis, so that replicas sharing one Redis together
//! allow the token's rate. The Redis side is one Lua script, one round
//! trip: it reads the token's arrival time, compares it with Redis's own
//! clock (`TIME`, the same for every replica whatever their clocks say),
//! and moves it on when the request fits, atomically (a script runs alone).
//! A call that fails or does not answer within `timeout` gets `on_error`:
//! the replica's own bucket (`"local"`), a refusal or an allowance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::config::{OnStoreError, SharedLimits};
use crate::denial::Denial;
use crate::quota::{now_ns, retry_after_secs, Bucket, InFlight, InFlightGuard, Limits, Rate};
use crate::telemetry::metrics::Metrics;

/// What the local checks leave to do.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The request's place among the token's in flight, while it lasts.
    pub in_flight: Option<InFlightGuard>,
    /// The rate to count in the shared store, and the bucket size.
    pub shared_rate: Option<(Rate, u32)>,
}

/// The checks that need no store: concurrency, and the rate when it is not
/// shared. `Err` is the refusal; nothing was spent.
pub fn local(limits: &Limits, bucket: &Bucket, in_flight: &Arc<InFlight>, shared: bool) -> Result<Admitted, Denial> {
    let guard = match limits.concurrency {
        Some(n) => Some(in_flight.enter(n).ok_or(Denial::TooManyInFlight)?),
        None => None,
    };
    let Some(rate) = limits.rate else { return Ok(Admitted { in_flight: guard, shared_rate: None }) };
    let burst = limits.burst_or_n();
    if shared {
        return Ok(Admitted { in_flight: guard, shared_rate: Some((rate, burst)) });
    }
    // Refused by the rate: the in-flight place just taken goes back.
    bucket.take(rate, burst, now_ns()).map_err(|wait| Denial::RateLimited(retry_after_secs(wait)))?;
    Ok(Admitted { in_flight: guard, shared_rate: None })
}

/// The rate counted in Redis, across replicas.
pub struct SharedStore {
    connection: Arc<OnceCell<ConnectionManager>>,
    script: redis::Script,
    timeout: Duration,
    on_error: OnStoreError,
    metrics: Arc<Metrics>,
}

/// GCRA in one script. KEYS[1]: the token's key. ARGV[1]: the emission
/// interval in microseconds; ARGV[2]: the burst. As `quota::Bucket::take`
/// does, an arrival time more than one bucket ahead (the limits changed)
/// is read, and kept, as one bucket ahead. Returns {1, 0} when the
/// request fits, {0, microseconds until one more fits} when not.
const GCRA: &str = r"
local t = tonumber(ARGV[1])
local tolerance = t * tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local clamped = false
if tat > now + tolerance then
  tat = now + tolerance
  clamped = true
end
local nxt = tat + t
local ahead = nxt - now
if ahead > tolerance then
  if clamped then
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  return {0, ahead - tolerance}
end
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', math.ceil(ahead / 1000) + 1000)
return {1, 0}
";

impl SharedStore {
    /// A store for `cfg`; it connects in the background (and reconnects:
    /// redis-rs's connection manager), so a Redis that is down at start
    /// delays nothing: until it answers, `on_error` applies.
    pub fn start(cfg: &SharedLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        let connection = Arc::new(OnceCell::new());
        let store = Arc::new(Self {
            connection: connection.clone(),
            script: redis::Script::new(GCRA),
            timeout: cfg.timeout,
            on_error: cfg.on_error,
            metrics,
        });
        let url = cfg.redis.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(100);
            loop {
                match Self::connect(&url).await {
                    Ok(c) => {
                        let _ = connection.set(c);
                        tracing::info!("connected to the shared rate-limit store");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.kind_text(), "the shared rate-limit store cannot be reached yet");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        store
    }

    async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
        let client = redis::Client::open(url)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_max_delay(2000);
        ConnectionManager::new_with_config(client, cfg).await
    }

    /// Counts one request of `name`'s `rate` in the store; `bucket` is the
    /// replica's own, for `on_error = "local"`.
    pub async fn take(&self, name: &str, rate: Rate, burst: u32, bucket: &Bucket) -> Result<(), Denial> {
        let started = Instant::now();
        let answer = match self.connection.get() {
            None => None,
            Some(c) => {
                let mut c = c.clone();
                let interval_us = u64::try_from(rate.interval().as_micros()).unwrap_or(u64::MAX).max(1);
                let mut call = self.script.prepare_invoke();
                call.key(format!("tokengate:rate:{name}")).arg(interval_us).arg(burst.max(1));
                match tokio::time::timeout(self.timeout, call.invoke_async::<(u8, u64)>(&mut c)).await {
                    Ok(Ok(v)) => Some(v),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e.kind_text(), "the shared rate-limit store failed a call");
                        None
                    }
                    Err(_) => None,
                }
            }
        };
        self.metrics.store_call(started.elapsed(), answer.is_none());
        match answer {
            Some((1, _)) => Ok(()),
            Some((_, wait_us)) => Err(Denial::RateLimited(retry_after_secs(Duration::from_micros(wait_us)))),
            None => match self.on_error {
                OnStoreError::Local => {
                    bucket.take(rate, burst, now_ns()).map_err(|wait| Denial::RateLimited(retry_after_secs(wait)))
                }
                OnStoreError::Deny => Err(Denial::RateLimited(1)),
                OnStoreError::Allow => Ok(()),
            },
        }
    }
}

/// What a Redis error is, without its text (which can quote a URL).
trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for redis::RedisError {
    fn kind_text(&self) -> String {
        format!("{:?}", self.kind())
    }
}
