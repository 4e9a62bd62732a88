//! Logger set-up: every event (the access log on target `tokengate::access`
//! and the diagnostics) goes through `tracing`, is formatted by
//! [`super::format::LineFormat`], and is handed to one non-blocking writer:
//! a bounded lock-free queue that a pump thread empties to stdout every
//! 10 ms in one large write, as nginx's `buffer=` does. Events keep the
//! order they were queued in. No request ever waits on, or wakes, that
//! thread; past 256k queued lines new lines are dropped and counted rather
//! than block a request.
//!
//! Why not tracing-appender's `non_blocking`, which has the same interface:
//! its worker blocks on the queue, so a line queued while it sleeps wakes
//! it (a futex call), and it writes each time the queue runs dry, which on
//! the gateway's CPU is a wake-up and a `write` for nearly every request;
//! and it allocates a buffer per line where this writer reuses them.
//! Measured with `instructions.py` (user space only, so the wake-ups are
//! not even in it), this writer against `non_blocking` on the same build:
//! allowed GET 55,782 vs 57,409 instructions per request, unknown token
//! 26,824 vs 28,472, form POST 64,118 vs 65,493.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use crossbeam_queue::ArrayQueue;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// How often the pump writes out what has queued.
const PUMP_INTERVAL: Duration = Duration::from_millis(10);
/// Lines that may wait at once.
const QUEUE_LINES: usize = 256 * 1024;

/// Keeps the pump running; dropping it writes out what is still queued.
pub struct LogGuard {
    stop: Arc<AtomicBool>,
    pump: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // At most a second: a stdout nobody reads must not keep the process.
        if let Some(p) = self.pump.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(1);
            while !p.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if p.is_finished() {
                let _ = p.join();
            }
        }
    }
}

/// Lines dropped because the queue was full.
pub static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// Installs the global subscriber. `TOKENGATE_LOG` filters as `RUST_LOG`
/// would (`tokengate::access=off` silences the access log).
pub fn init(format: LogFormat) -> LogGuard {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE_LINES);
    let spare = Arc::new(ArrayQueue::new(SPARE_BUFFERS));
    let stop = Arc::new(AtomicBool::new(false));
    let pump = {
        let (stop, spare) = (stop.clone(), spare.clone());
        std::thread::Builder::new().name("tokengate-log".into()).spawn(move || pump(&rx, &spare, &stop)).ok()
    };
    let filter = EnvFilter::try_from_env("TOKENGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Already installed (a second run in one process, as in tests): the
    // first one stays.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(QueueWriter { tx, spare })
        .with_ansi(false)
        .event_format(super::format::LineFormat { json: format == LogFormat::Json })
        .try_init();
    LogGuard { stop, pump }
}

fn pump(rx: &Receiver<Vec<u8>>, spare: &ArrayQueue<Vec<u8>>, stop: &AtomicBool) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout());
    loop {
        // Checked before draining, so the last drain sees every line sent
        // before the stop.
        let stopping = stop.load(Ordering::Acquire);
        let mut wrote = false;
        while let Ok(mut line) = rx.try_recv() {
            let _ = out.write_all(&line);
            wrote = true;
            // The buffer goes back for another line (a line that was
            // unusually long gives its memory back instead).
            if line.capacity() <= 4096 {
                line.clear();
                let _ = spare.push(line);
            }
        }
        if wrote {
            let _ = out.flush();
        }
        if stopping {
            return;
        }
        // Sleeping instead of blocking on the queue: a sender never has to
        // wake this thread, so logging a line costs a request no syscall.
        std::thread::sleep(PUMP_INTERVAL);
    }
}

/// Buffers kept for reuse: a line costs no allocation once the pump has
/// given back the buffers of earlier ones.
const SPARE_BUFFERS: usize = 1024;

/// Hands each formatted event to the queue.
#[derive(Clone)]
struct QueueWriter {
    tx: Sender<Vec<u8>>,
    spare: Arc<ArrayQueue<Vec<u8>>>,
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine { tx: &self.tx, buf: self.spare.pop().unwrap_or_default() }
    }
}

/// One event's bytes, queued whole when the formatter is done with it.
struct QueuedLine<'a> {
    tx: &'a Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for QueuedLine<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.tx.try_send(std::mem::take(&mut self.buf)) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
