//! The proxy listener's certificate (interface.md §7): the `[server.tls]`
//! pair, loaded and checked (the key must match the certificate), served to
//! every handshake from an atomic pointer (no lock on the handshake path),
//! and followed like the token file: a change in either file's folder or
//! SIGHUP loads the pair again; a pair that does not load is not applied
//! and the current one keeps serving. Open connections keep the pair they
//! were made with. Counts nothing itself: each reload's outcome goes to the
//! caller (`cli::run` counts it in the metrics).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// Why the `[server.tls]` pair could not be loaded.
#[derive(Debug)]
pub enum TlsSetupError {
    /// The certificate file could not be read, or is not PEM.
    Cert(PathBuf, String),
    /// The key file could not be read, or is not a PEM private key.
    Key(PathBuf, String),
    /// The certificate file holds no certificate.
    NoCertificate(PathBuf),
    /// The key is not the certificate's (or rustls cannot use it).
    Pair(PathBuf, PathBuf, rustls::Error),
    /// rustls refused the configuration.
    Rustls(rustls::Error),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::Cert(p, e) => write!(f, "cannot read server.tls.cert {}: {e}", p.display()),
            TlsSetupError::Key(p, e) => write!(f, "cannot read server.tls.key {}: {e}", p.display()),
            TlsSetupError::NoCertificate(p) => {
                write!(f, "server.tls.cert {}: no PEM certificate in the file", p.display())
            }
            TlsSetupError::Pair(c, k, e) => {
                write!(f, "server.tls: the key {} does not go with the certificate {}: {e}", k.display(), c.display())
            }
            TlsSetupError::Rustls(e) => write!(f, "server.tls: {e}"),
        }
    }
}

impl std::error::Error for TlsSetupError {}

/// Largest certificate or key file read: PEM pairs are a few KiB; a link to
/// `/dev/zero` must not be read until memory runs out.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a regular file (links followed) of at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        // A FIFO would block the reading thread for good.
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("larger than {MAX_PEM_BYTES} bytes"));
    }
    Ok(bytes)
}

/// Loads and checks the pair: PEM certificate chain, PEM private key, and
/// the key must be the certificate's.
pub fn load_pair(files: &TlsFiles) -> Result<CertifiedKey, TlsSetupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = read_pem(&files.cert).map_err(|e| TlsSetupError::Cert(files.cert.clone(), e))?;
    let key_pem = read_pem(&files.key).map_err(|e| TlsSetupError::Key(files.key.clone(), e))?;
    // A file cut short in the middle of a write has a BEGIN line without its
    // END line: an error here, not a shorter chain.
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Cert(files.cert.clone(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate(files.cert.clone()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsSetupError::Key(files.key.clone(), e.to_string()))?;
    let pair = CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| TlsSetupError::Pair(files.cert.clone(), files.key.clone(), e))?;
    // `from_der` lets a pair whose consistency it cannot tell through; the
    // ring provider always can, so anything but a match is refused.
    pair.keys_match().map_err(|e| TlsSetupError::Pair(files.cert.clone(), files.key.clone(), e))?;
    Ok(pair)
}

/// The pair now serving, and the files it comes from.
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
    files: TlsFiles,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("files", &self.files).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl CertStore {
    /// Loads the pair for the first time; an error is the caller's to report.
    pub fn open(files: &TlsFiles) -> Result<Arc<Self>, TlsSetupError> {
        let pair = load_pair(files)?;
        Ok(Arc::new(Self { current: ArcSwap::from_pointee(pair), files: files.clone() }))
    }

    /// An acceptor whose every handshake takes the pair serving at that
    /// moment; offers HTTP/2 and HTTP/1.1.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsSetupError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .map_err(TlsSetupError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }

    /// The pair now serving.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Loads the pair again; swaps it in when it loads, keeps the current
    /// one and logs why when it does not.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        match load_pair(&self.files) {
            Ok(pair) => {
                let chain = pair.cert.len();
                self.current.store(Arc::new(pair));
                tracing::info!(
                    cert = %self.files.cert.display(),
                    key = %self.files.key.display(),
                    chain,
                    "TLS certificate reloaded; new connections get it"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not applied; the current one keeps serving");
                Err(e)
            }
        }
    }
}

/// Builds an acceptor from the pair as it is now (what `check` tries).
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsSetupError> {
    CertStore::open(files)?.acceptor()
}

/// What identifies one version of a file without reading it.
type Fingerprint = Option<(u64, u64, u64, i64, i64, i64, i64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
}

fn pair_fingerprint(files: &TlsFiles) -> (Fingerprint, Fingerprint) {
    (fingerprint(&files.cert), fingerprint(&files.key))
}

/// How long the folders must be quiet before the pair is read after a
/// change (an operator writing both files), and the longest wait for it.
const QUIET: Duration = Duration::from_millis(100);
const MAX_QUIET_WAIT: Duration = Duration::from_millis(800);

/// Safety net for missed events.
const POLL: Duration = Duration::from_millis(1000);

enum Trigger {
    Changed,
    Signal,
}

/// Follows the pair until the process ends: watches the folders of both
/// files (rename-saves, in-place writes, a Kubernetes `..data` symlink swap),
/// checks their metadata once a second, and loads the pair again when either
/// changed, once the folders have been quiet for 100 ms; at once on SIGHUP.
/// `hup` must be registered before the gateway says it is up. Every load is
/// handed to `outcome`. A file that is gone is waited for, not counted.
pub async fn follow(
    store: Arc<CertStore>,
    hup: Option<Signal>,
    outcome: impl Fn(&Result<(), TlsSetupError>) + Send + Sync + 'static,
) {
    let outcome = Arc::new(outcome);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _watchers = watch_folders(&store.files, tx.clone());
    if let Some(mut hup) = hup {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if tx.send(Trigger::Signal).is_err() {
                    return;
                }
            }
        });
    }
    let mut seen = pair_fingerprint(&store.files);
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut signal = tokio::select! {
            t = rx.recv() => match t {
                Some(Trigger::Signal) => true,
                Some(Trigger::Changed) => false,
                None => return,
            },
            _ = poll.tick() => {
                if pair_fingerprint(&store.files) == seen {
                    continue;
                }
                false
            }
        };
        let started = tokio::time::Instant::now();
        while !signal && started.elapsed() < MAX_QUIET_WAIT {
            match tokio::time::timeout(QUIET, rx.recv()).await {
                Ok(Some(Trigger::Signal)) => signal = true,
                Ok(Some(Trigger::Changed)) => {}
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let now = pair_fingerprint(&store.files);
        if !signal && now == seen {
            continue;
        }
        if !signal && (now.0.is_none() || now.1.is_none()) {
            // Deleted, perhaps to be re-created: wait for it.
            if seen.0.is_some() && seen.1.is_some() {
                tracing::warn!("a TLS file is gone; the current certificate keeps serving");
            }
            seen = now;
            continue;
        }
        seen = now;
        if signal {
            tracing::info!("SIGHUP: reloading the TLS certificate");
        }
        let (s, report) = (store.clone(), outcome.clone());
        let _ = tokio::task::spawn_blocking(move || report(&s.reload())).await;
    }
}

fn watch_folders(files: &TlsFiles, tx: mpsc::UnboundedSender<Trigger>) -> Option<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, EventKind};
    use notify::Watcher;
    let folder_of = |p: &Path| match p.parent() {
        Some(f) if !f.as_os_str().is_empty() => f.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut folders = vec![folder_of(&files.cert)];
    if !folders.contains(&folder_of(&files.key)) {
        folders.push(folder_of(&files.key));
    }
    let names: Vec<_> =
        [&files.cert, &files.key].iter().filter_map(|p| p.file_name().map(|n| n.to_os_string())).collect();
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(e) = res else {
            // The kernel's queue overflowed, or similar: look anyway.
            let _ = tx.send(Trigger::Changed);
            return;
        };
        match e.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            // Our own reads, and anyone else's.
            EventKind::Access(_) => return,
            _ => {}
        }
        let concerns_pair = e.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| names.iter().any(|m| m == n) || n.to_string_lossy().starts_with(".."))
        });
        if concerns_pair || e.kind == EventKind::Other {
            let _ = tx.send(Trigger::Changed);
        }
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        for f in &folders {
            w.watch(f, notify::RecursiveMode::NonRecursive)?;
        }
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the TLS folders; checking the files every second instead");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (ck.cert.pem(), ck.key_pair.serialize_pem())
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("k.pem"), key).unwrap();
        TlsFiles { cert: dir.join("c.pem"), key: dir.join("k.pem") }
    }

    #[test]
    fn a_matching_pair_loads_and_every_broken_one_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair(&["a.test"]);
        let (_c2, k2) = pair(&["b.test"]);
        assert!(load_pair(&files(dir.path(), &c1, &k1)).is_ok());
        let e = load_pair(&files(dir.path(), &c1, &k2)).unwrap_err();
        assert!(matches!(e, TlsSetupError::Pair(..)), "{e}");
        assert!(e.to_string().contains("does not go with"), "{e}");
        let half = &c1[..c1.len() / 2];
        let e = load_pair(&files(dir.path(), half, &k1)).unwrap_err();
        assert!(matches!(e, TlsSetupError::Cert(..) | TlsSetupError::NoCertificate(_)), "{e}");
        let e = load_pair(&files(dir.path(), &c1, &k1[..k1.len() / 2])).unwrap_err();
        assert!(matches!(e, TlsSetupError::Key(..)), "{e}");
        let e = load_pair(&files(dir.path(), "", &k1)).unwrap_err();
        assert!(matches!(e, TlsSetupError::NoCertificate(_)), "{e}");
        let f = TlsFiles { cert: dir.path().to_path_buf(), key: dir.path().join("k.pem") };
        assert!(load_pair(&f).unwrap_err().to_string().contains("not a regular file"));
    }

    #[test]
    fn a_reload_that_fails_keeps_the_pair_serving() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair(&["a.test"]);
        let f = files(dir.path(), &c1, &k1);
        let store = CertStore::open(&f).unwrap();
        let before = store.current();
        let (_c2, k2) = pair(&["b.test"]);
        std::fs::write(&f.key, k2).unwrap();
        assert!(store.reload().is_err());
        assert!(Arc::ptr_eq(&before, &store.current()));
        let (c3, k3) = pair(&["c.test"]);
        files(dir.path(), &c3, &k3);
        store.reload().unwrap();
        assert_ne!(store.current().cert[0], before.cert[0]);
    }
}
