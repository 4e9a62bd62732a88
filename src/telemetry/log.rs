//! Logger set-up: diagnostics and the access log go to stdout, as text or
//! JSON. A request never writes to stdout itself: its formatted line goes
//! into a bounded lock-free queue, and a pump thread writes what has queued
//! every few milliseconds in one large write, as nginx's `buffer=` does. No
//! request ever waits on, or wakes, that thread; past 256k queued lines new
//! lines are dropped and counted rather than block a request.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
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

/// Installs the global subscriber.
pub fn init(format: LogFormat) -> LogGuard {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE_LINES);
    let stop = Arc::new(AtomicBool::new(false));
    let pump = {
        let stop = stop.clone();
        std::thread::Builder::new().name("tokengate-log".into()).spawn(move || pump(&rx, &stop)).ok()
    };
    let writer = QueueWriter { tx };
    let filter = EnvFilter::try_from_env("TOKENGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let result = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .event_format(super::format::LineFormat { json: format == LogFormat::Json })
        .try_init();
    // Already installed (a second run in one process, as in tests): keep it,
    // and the access lines keep going through it.
    if result.is_ok() {
        let _ = ACCESS.set(AccessSink { json: format == LogFormat::Json, shelves: std::sync::Mutex::new(Vec::new()) });
    }
    LogGuard { stop, pump }
}

/// Where access lines go without passing through `tracing`'s dispatch,
/// which cost a proxied request a tenth of its instructions: formatted by
/// the same [`super::format::Line`], straight into a buffer of the request's
/// thread (no allocation per line), which the pump takes every few
/// milliseconds. Each buffer has its own lock, taken by its thread per line
/// and by the pump per round: never contended by two requests.
pub struct AccessSink {
    /// JSON lines.
    pub json: bool,
    shelves: std::sync::Mutex<Vec<Arc<Shelf>>>,
}

/// One thread's access lines waiting for the pump.
struct Shelf {
    lines: std::sync::Mutex<String>,
}

/// Past this many bytes waiting on one thread's shelf, lines are dropped
/// and counted rather than take more memory (about 25,000 lines: the pump
/// takes them every 10 ms, so a thread would have to log 2.5 million lines a
/// second, or stdout be stuck, to lose any).
const SHELF_BYTES: usize = 4 * 1024 * 1024;

static ACCESS: std::sync::OnceLock<AccessSink> = std::sync::OnceLock::new();

thread_local! {
    static MY_SHELF: std::cell::OnceCell<Arc<Shelf>> = const { std::cell::OnceCell::new() };
}

impl AccessSink {
    /// The sink, once `init` has installed the logger.
    pub fn get() -> Option<&'static AccessSink> {
        ACCESS.get()
    }

    /// Writes one line with `write` at the end of this thread's shelf.
    /// False when this thread is exiting and has no shelf any more.
    pub fn write(&self, write: impl FnOnce(&mut String)) -> bool {
        MY_SHELF
            .try_with(|mine| {
                let shelf = mine.get_or_init(|| {
                    // Once per thread: the shelf is made known to the pump.
                    let shelf = Arc::new(Shelf { lines: std::sync::Mutex::new(String::with_capacity(64 * 1024)) });
                    self.shelves.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(shelf.clone());
                    shelf
                });
                let mut lines = shelf.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if lines.len() < SHELF_BYTES {
                    write(&mut lines);
                } else {
                    DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
                }
            })
            .is_ok()
    }

    /// Moves every shelf's lines to `out`, leaving each shelf its buffer.
    fn drain(&self, spare: &mut String, out: &mut impl Write) -> bool {
        let shelves: Vec<Arc<Shelf>> = self.shelves.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut wrote = false;
        for shelf in shelves {
            {
                let mut lines = shelf.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if lines.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *lines, spare);
            }
            let _ = out.write_all(spare.as_bytes());
            spare.clear();
            // A burst's buffer is not handed on from shelf to shelf.
            if spare.capacity() > 1024 * 1024 {
                *spare = String::with_capacity(64 * 1024);
            }
            wrote = true;
        }
        wrote
    }
}

fn pump(rx: &Receiver<Vec<u8>>, stop: &AtomicBool) {
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout());
    let mut spare = String::with_capacity(64 * 1024);
    loop {
        // Checked before draining, so the last drain sees every line sent
        // before the stop.
        let stopping = stop.load(Ordering::Acquire);
        let mut wrote = false;
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(&line);
            wrote = true;
        }
        if let Some(access) = ACCESS.get() {
            wrote |= access.drain(&mut spare, &mut out);
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

/// Hands each formatted event to the queue.
#[derive(Clone)]
struct QueueWriter {
    tx: Sender<Vec<u8>>,
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line { tx: &self.tx, buf: Vec::new() }
    }
}

/// One event's bytes, queued whole when the formatter is done with it.
struct Line<'a> {
    tx: &'a Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
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
