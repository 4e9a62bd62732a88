//! The one way the token file is read from disk: a version that did not
//! change while it was read, so a write in progress is not taken for the
//! new file. Used by every reader (`run`, each reload, `check`, `token`).

use std::path::Path;
use std::time::Duration;

use crate::diagnostic::ConfigErrors;

/// What identifies one version of the file without reading it: inode,
/// size and change times (of the target, through symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// The file's fingerprint now, or `None` when it does not exist.
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// Reads the file, and reads it again if it changed while being read, so a
/// write in progress is not taken for the new version.
pub fn read_stable(path: &Path) -> Result<String, ConfigErrors> {
    let mut last_err = None;
    for _ in 0..5 {
        let before = fingerprint(path);
        match std::fs::read_to_string(path) {
            Ok(text) if fingerprint(path) == before && before.is_some_and(|f| f.len == text.len() as u64) => {
                return Ok(text)
            }
            Ok(_) => {}
            Err(e) => last_err = Some(e.to_string()),
        }
        std::thread::sleep(QUIET);
    }
    Err(ConfigErrors::whole_file(
        path,
        match last_err {
            Some(e) => format!("cannot read the token file: {e}"),
            None => "the token file kept changing while it was read".into(),
        },
    ))
}

/// How long the file must be left alone before it is read after a change.
pub const QUIET: Duration = Duration::from_millis(100);
