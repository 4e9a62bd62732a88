//! The token store: the table now serving behind an atomic pointer, and the
//! only code that replaces it. A new table is parsed and validated whole,
//! off the request path, then swapped in at one instant; a file with any
//! error is not applied and the last good table keeps serving. Counts
//! nothing itself: each reload's outcome goes to the caller (`cli::run`
//! counts it in the metrics).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

use super::file::{self, Loaded};
use super::read::{fingerprint, read_stable, Fingerprint, ReadError, QUIET};
use super::state::StateRegistry;
use super::table::TokenTable;
use crate::diagnostic::{ConfigError, ConfigErrors};

/// What one reload came to; handed to the caller of [`follow`] to count.
#[derive(Debug)]
pub enum Reloaded {
    /// A new table is serving, with this many tokens.
    Applied(usize),
    /// The file was read but is invalid: the last good table keeps serving.
    Invalid(ConfigErrors),
    /// The file could not be read: the last good table keeps serving, and
    /// [`TokenStore::read_failure`] says why until a read succeeds.
    Unreadable(ReadError),
}

/// The table requests read, and what a reload needs to replace it.
pub struct TokenStore {
    current: ArcSwap<TokenTable>,
    states: Arc<StateRegistry>,
    path: PathBuf,
    /// `tokens.max_file_bytes`.
    max_bytes: u64,
    /// Why the most recent read of the file failed; `None` once one
    /// succeeds (whether or not what it read was valid).
    read_failure: ArcSwapOption<String>,
    /// The file's fingerprint just before it was first read, so that an edit
    /// made while the gateway was starting is not missed.
    opened: Option<Fingerprint>,
    /// Hash of the text last parsed (applied or refused): an event whose file
    /// reads the same is not reloaded, one whose file differs is, even when
    /// its fingerprint looks unchanged (coarse timestamps, same size).
    last_text: AtomicU64,
}

impl TokenStore {
    /// Loads the file for the first time. There is no last good table yet,
    /// so an invalid file is an error for the caller to report. Returns the
    /// store and the file's warnings.
    pub fn open(path: &Path, max_bytes: u64) -> Result<(Self, Vec<ConfigError>), ConfigErrors> {
        let states = Arc::new(StateRegistry::default());
        let opened = fingerprint(path);
        let text = read_stable(path, max_bytes).map_err(|e| file::unreadable(path, &e))?;
        let Loaded { table, warnings } = file::parse(path, &text)?;
        let store = Self {
            current: ArcSwap::from_pointee(table),
            states,
            path: path.to_path_buf(),
            max_bytes,
            read_failure: ArcSwapOption::empty(),
            opened,
            last_text: AtomicU64::new(text_hash(&text)),
        };
        Ok((store, warnings))
    }

    /// The table now serving. Lock-free; hold it only for one decision.
    pub fn current(&self) -> Guard<Arc<TokenTable>> {
        self.current.load()
    }

    /// The live per-token state, by name.
    pub fn states(&self) -> &Arc<StateRegistry> {
        &self.states
    }

    /// The token file this store reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the most recent read of the file failed, while it is so: what
    /// `/readyz` reports. A file that was read but is invalid is not a
    /// read failure: the last good table serves as it should.
    pub fn read_failure(&self) -> Option<Arc<String>> {
        self.read_failure.load_full()
    }

    /// Reads the file again; on success swaps the new table in whole, on
    /// failure keeps the current one and logs why.
    pub fn reload(&self) -> Reloaded {
        let (started, text, _) = self.read();
        self.apply(started, text)
    }

    /// Reads the file; reloads only when its text differs from the text last
    /// parsed. `None` when it was the same.
    pub fn reload_if_changed(&self) -> Option<Reloaded> {
        let (started, text, changed) = self.read();
        if text.is_ok() && !changed {
            return None;
        }
        Some(self.apply(started, text))
    }

    /// The file's text, and whether it differs from the text last read.
    fn read(&self) -> (Instant, Result<String, ReadError>, bool) {
        let started = Instant::now();
        let text = read_stable(&self.path, self.max_bytes);
        let changed = text.as_ref().is_ok_and(|t| {
            let h = text_hash(t);
            self.last_text.swap(h, Ordering::Relaxed) != h
        });
        (started, text, changed)
    }

    fn apply(&self, started: Instant, text: Result<String, ReadError>) -> Reloaded {
        let text = match text {
            Ok(text) => {
                self.read_failure.store(None);
                text
            }
            Err(e) => {
                tracing::error!(
                    file = %self.path.display(),
                    error = %e,
                    "token file cannot be read; the last good table keeps serving"
                );
                self.read_failure.store(Some(Arc::new(format!("{}: {e}", self.path.display()))));
                return Reloaded::Unreadable(e);
            }
        };
        match file::parse(&self.path, &text) {
            Ok(loaded) => {
                let n = loaded.table.len();
                for w in &loaded.warnings {
                    tracing::warn!(warning = %w, "token file");
                }
                let old = self.current.swap(Arc::new(loaded.table));
                // Counters of names gone from the file stay (they are
                // counters): a name that comes back continues them.
                tracing::info!(
                    tokens = n,
                    file = %self.path.display(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "token file reloaded"
                );
                // The old table is freed here, off the request path, unless a
                // request still holds it (then the last holder frees it).
                drop(old);
                Reloaded::Applied(n)
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(error = %e, "token file not applied; the last good table keeps serving");
                }
                Reloaded::Invalid(errors)
            }
        }
    }
}

/// Longest wait for the folder to become quiet: a folder that never stops
/// changing must not hold back a revocation.
const MAX_QUIET_WAIT: Duration = Duration::from_millis(800);

/// Longest wait for a writer that still has the file open to close it.
const MAX_OPEN_WAIT: Duration = Duration::from_secs(5);

fn text_hash(text: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(text.as_bytes());
    h.write_usize(text.len());
    h.finish()
}

/// Safety net for missed events (a replaced folder, an event queue overflow).
const POLL: Duration = Duration::from_millis(1000);

enum Trigger {
    /// Something changed in the file's folder.
    Changed,
    /// SIGHUP: reload now.
    Signal,
}

/// Follows the token file until the process ends: watches its folder (so
/// rename-saves, a Kubernetes `..data` symlink swap, in-place writes and
/// delete-then-recreate are all seen), waits until the folder is quiet and
/// no writer has the file open, and reloads when the text changed; reloads
/// at once on SIGHUP. Reloads run one at a time, on a blocking thread.
/// `hup` must be made with [`listen_for_sighup`] before the gateway says it
/// is ready, or a SIGHUP in between would end the process (its default).
/// Every reload that tried to read the file is handed to `outcome`.
pub async fn follow(store: Arc<TokenStore>, hup: Option<Signal>, outcome: impl Fn(&Reloaded) + Send + Sync + 'static) {
    let outcome = Arc::new(outcome);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let open_for_write = Arc::new(AtomicBool::new(false));
    // Set by events that name the file (or a Kubernetes `..` entry): only
    // then is the text read when the fingerprint looks unchanged.
    let named = Arc::new(AtomicBool::new(false));
    let _watcher = watch_folder(&store.path, tx.clone(), open_for_write.clone(), named.clone());
    if let Some(hup) = hup {
        forward_sighup(hup, tx);
    }
    let mut seen = store.opened;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut signal = tokio::select! {
            t = rx.recv() => match t {
                Some(Trigger::Signal) => true,
                Some(Trigger::Changed) => false,
                None => return,
            },
            // The safety net for missed events: only the fingerprint, no read.
            _ = poll.tick() => {
                if fingerprint(&store.path) == seen {
                    continue;
                }
                false
            }
        };
        // Wait for quiet (bounded), and for a writer to close the file
        // (bounded); a signal cuts both short.
        let started = Instant::now();
        while !signal {
            match tokio::time::timeout(QUIET, rx.recv()).await {
                Ok(Some(Trigger::Signal)) => signal = true,
                Ok(Some(Trigger::Changed)) if started.elapsed() < MAX_QUIET_WAIT => {}
                Ok(None) => return,
                Ok(Some(Trigger::Changed)) | Err(_) => {
                    if !open_for_write.load(Ordering::Relaxed) {
                        break;
                    }
                    if started.elapsed() > MAX_OPEN_WAIT {
                        // A close event may have been lost: do not wait again.
                        open_for_write.store(false, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        let now = fingerprint(&store.path);
        if now.is_none() && !signal {
            // Deleted (perhaps to be re-created): keep serving, wait for it.
            if seen.is_some() {
                tracing::warn!(file = %store.path.display(), "token file is gone; the last good table keeps serving");
            }
            seen = None;
            continue;
        }
        // Events elsewhere in the folder (an editor's swap file) with the
        // file's fingerprint unchanged: nothing to read. An event naming the
        // file is read anyway: a same-size edit within one timestamp tick
        // leaves the fingerprint as it was.
        let was_named = named.swap(false, Ordering::Relaxed);
        if !signal && now == seen && !was_named {
            continue;
        }
        seen = now;
        let (s, report) = (store.clone(), outcome.clone());
        if signal {
            tracing::info!("SIGHUP: reloading the token file");
        }
        let _ = tokio::task::spawn_blocking(move || {
            let result = if signal { Some(s.reload()) } else { s.reload_if_changed() };
            if let Some(r) = result {
                report(&r);
            }
        })
        .await;
    }
}

fn watch_folder(
    path: &Path,
    tx: mpsc::UnboundedSender<Trigger>,
    open_for_write: Arc<AtomicBool>,
    named: Arc<AtomicBool>,
) -> Option<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    use notify::Watcher;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(e) = res else {
            // The kernel's queue overflowed, or similar: look anyway.
            named.store(true, Ordering::Relaxed);
            let _ = tx.send(Trigger::Changed);
            return;
        };
        let is_the_file = e.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name);
        let is_k8s_swap = e.paths.iter().any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("..")));
        if is_the_file || is_k8s_swap {
            named.store(true, Ordering::Relaxed);
        }
        match e.kind {
            // A writer with the file open: wait for it to close it.
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) if is_the_file => {
                open_for_write.store(true, Ordering::Relaxed);
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) if is_the_file => {
                open_for_write.store(false, Ordering::Relaxed);
            }
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) if is_the_file => {
                open_for_write.store(false, Ordering::Relaxed);
            }
            EventKind::Access(_) => return,
            // The kernel's queue overflowed: what was open may have closed.
            EventKind::Other => {
                open_for_write.store(false, Ordering::Relaxed);
                named.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        // Any other event in the folder may concern the file (a symlink swap
        // names `..data`, not the file): the text decides.
        let _ = tx.send(Trigger::Changed);
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(&folder, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, folder = %folder.display(), "cannot watch the token folder; checking it every second instead");
            None
        }
    }
}

/// Takes over SIGHUP from its default action (ending the process).
pub fn listen_for_sighup() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by editing the token file");
            None
        }
    }
}

fn forward_sighup(mut hup: Signal, tx: mpsc::UnboundedSender<Trigger>) {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if tx.send(Trigger::Signal).is_err() {
                return;
            }
        }
    });
}
