//! The one way the token file is changed (`token new`, `token rotate`), so
//! that no edit made meanwhile is undone (interface.md §4): take the lock
//! beside the file, read it, validate it, apply the edit, validate the
//! result, write it to a temporary file created exclusively (a planted
//! symlink cannot redirect the write) with the original's owner, group and
//! mode, check that the file is still exactly what was read, and swap the
//! new file in. A running gateway reads the old file or the new one, never
//! half of one.
//!
//! The swap is `renameat2(RENAME_EXCHANGE)`: the old file comes out at the
//! temporary name, so what was replaced can be compared with what was read.
//! An editor's rename that lands between the last check and the swap (the
//! lock binds only tokengate) is then seen, and swapped back. Where the
//! file system has no exchange, a plain rename is used, and only the check
//! just before it guards.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::file;
use super::read::read_stable;
use crate::diagnostic::ConfigErrors;

/// How long a command waits for another one to release the lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Why the file was not changed. In every case it was left as it was.
#[derive(Debug)]
pub enum EditError {
    /// It cannot be read, or was invalid before the edit.
    Invalid(ConfigErrors),
    /// The edit is not possible on this file (no such token, say).
    Refused(String),
    /// The edited file would be invalid.
    WouldBeInvalid(ConfigErrors),
    /// Another `tokengate token` command held the lock for [`LOCK_WAIT`].
    Locked(PathBuf),
    /// The file changed while the command ran (an edit saved meanwhile).
    Changed(PathBuf),
    /// The new file could not be given the old one's owner and group.
    Owner(PathBuf, std::io::Error),
    /// Writing or replacing failed.
    Io(PathBuf, std::io::Error),
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EditError::Invalid(errors) => write!(f, "{errors}\nfix these errors first"),
            EditError::Refused(why) => f.write_str(why),
            EditError::WouldBeInvalid(errors) => {
                let messages: Vec<&str> = errors.0.iter().map(|e| e.message.as_str()).collect();
                f.write_str(&messages.join("\n"))
            }
            EditError::Locked(lock) => write!(
                f,
                "another tokengate command is changing the token file (it holds {} for more than {} s)",
                lock.display(),
                LOCK_WAIT.as_secs()
            ),
            EditError::Changed(path) => write!(
                f,
                "{} changed while this command ran (an edit was saved meanwhile); run it again on the new file",
                path.display()
            ),
            EditError::Owner(path, e) => write!(
                f,
                "cannot give the new file the owner and group of {} ({e}); run this as that user or as root",
                path.display()
            ),
            EditError::Io(path, e) => write!(f, "cannot write {}: {e}", path.display()),
        }
    }
}

impl std::error::Error for EditError {}

/// Changes the token file at `path` (the file a symlink points to, when it
/// is one) with `edit`, which gets the current text and returns the new
/// one. Returns the path that was changed.
pub fn edit(
    path: &Path,
    max_bytes: u64,
    edit: impl FnOnce(&str) -> Result<String, String>,
) -> Result<PathBuf, EditError> {
    // Edit the file a symlink points to (a rename over the link would break it).
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let _lock = lock(&dir.join(format!(".{name}.lock")))?;

    let text = read_stable(&path, max_bytes).map_err(|e| EditError::Invalid(file::unreadable(&path, &e)))?;
    let before = std::fs::metadata(&path).map_err(|e| EditError::Io(path.clone(), e))?;
    file::parse(&path, &text).map_err(EditError::Invalid)?;
    let new_text = edit(&text).map_err(EditError::Refused)?;
    file::parse(&path, &new_text).map_err(EditError::WouldBeInvalid)?;

    let (tmp, mut out) = create_temp(&dir, &name).map_err(|e| EditError::Io(path.clone(), e))?;
    let result = (|| {
        let io = |e| EditError::Io(path.clone(), e);
        // Owner and group before the mode: chown may clear set-id bits.
        let mine = out.metadata().map_err(io)?;
        if (mine.uid(), mine.gid()) != (before.uid(), before.gid()) {
            std::os::unix::fs::fchown(&out, Some(before.uid()), Some(before.gid()))
                .map_err(|e| EditError::Owner(path.clone(), e))?;
        }
        out.set_permissions(std::fs::Permissions::from_mode(before.mode() & 0o7777)).map_err(io)?;
        out.write_all(new_text.as_bytes()).map_err(io)?;
        out.sync_all().map_err(io)?;
        drop(out);
        // The last look before the swap: the whole text, not only mtime.
        if !still(&path, &text, &before, max_bytes) {
            return Err(EditError::Changed(path.clone()));
        }
        swap_in(&tmp, &path, &text, &before, max_bytes)?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| EditError::Io(path.clone(), e))
    })();
    // Whatever is at the temporary name now is not wanted: the new file
    // when something failed, the old one after a successful swap.
    let _ = std::fs::remove_file(&tmp);
    result.map(|()| path)
}

/// Whether the file at `path` is the one read: same inode, same text.
fn still(path: &Path, text: &str, before: &std::fs::Metadata, max_bytes: u64) -> bool {
    let same_inode = std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == (before.dev(), before.ino()));
    same_inode && read_stable(path, max_bytes).is_ok_and(|now| now == text)
}

/// Puts `tmp` in place of `path`. With an exchange, checks that what came
/// out is what was read, and puts it back otherwise.
fn swap_in(tmp: &Path, path: &Path, text: &str, before: &std::fs::Metadata, max_bytes: u64) -> Result<(), EditError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let io = |e: std::io::Error| EditError::Io(path.to_path_buf(), e);
    match renameat_with(CWD, tmp, CWD, path, RenameFlags::EXCHANGE) {
        Ok(()) => {
            if still(tmp, text, before, max_bytes) {
                return Ok(());
            }
            // Someone else's file came out: put it back, and change nothing.
            renameat_with(CWD, tmp, CWD, path, RenameFlags::EXCHANGE).map_err(|e| io(e.into()))?;
            Err(EditError::Changed(path.to_path_buf()))
        }
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::NOTSUP => {
            std::fs::rename(tmp, path).map_err(io)
        }
        Err(e) => Err(io(e.into())),
    }
}

/// Creates the temporary file exclusively (`O_CREAT | O_EXCL`: a symlink or
/// anything else already at the name is never followed nor reused), mode
/// 0600 until the original's mode is copied.
fn create_temp(dir: &Path, name: &str) -> std::io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut last = None;
    for attempt in 0..16u32 {
        let tmp = match attempt {
            0 => dir.join(format!(".{name}.tokengate-{pid}.tmp")),
            _ => dir.join(format!(".{name}.tokengate-{pid}-{:08x}.tmp", rand::random::<u32>())),
        };
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temporary name was free")))
}

/// Takes the lock beside the token file, waiting up to [`LOCK_WAIT`] for
/// another command to finish. The lock file is never followed as a symlink
/// and never truncated; it is released when the returned file is dropped.
fn lock(lock_path: &Path) -> Result<File, EditError> {
    let io = |e| EditError::Io(lock_path.to_path_buf(), e);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(lock_path)
        .or_else(|e| match e.kind() {
            // Someone else's lock file: a read-only descriptor locks as well.
            std::io::ErrorKind::PermissionDenied => {
                OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(lock_path)
            }
            _ => Err(e),
        })
        .map_err(io)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // flock(2), as std's File::try_lock (Rust 1.89, above this crate's
        // rust-version) does it.
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(f),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(EditError::Locked(lock_path.to_path_buf())),
            Err(e) => return Err(io(e.into())),
        }
    }
}
