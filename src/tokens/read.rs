//! The one way the token file is read from disk, by every reader (`run`,
//! each reload, `check`, `token`): only a regular file (links followed), no
//! larger than `tokens.max_file_bytes`, within [`READ_DEADLINE`], and a
//! version that did not change while it was read, so a write in progress is
//! not taken for the new file. A FIFO, a device or a huge sparse file put
//! where the token file belongs is refused before a byte of it is read.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

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

impl Fingerprint {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// The file's fingerprint now, or `None` when it does not exist.
pub fn fingerprint(path: &Path) -> Option<Fingerprint> {
    std::fs::metadata(path).ok().map(|m| Fingerprint::of(&m))
}

/// Why the token file could not be read. Never quotes the file's content.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing is there (or a link points to nothing).
    Missing,
    /// Not a regular file once links are followed.
    NotRegular(&'static str),
    /// Larger than `tokens.max_file_bytes`.
    TooLarge {
        /// Its size, or the bytes read before it passed the limit.
        len: u64,
        /// `tokens.max_file_bytes`.
        limit: u64,
    },
    /// Not UTF-8 text.
    NotText,
    /// Reading it took longer than [`READ_DEADLINE`].
    TooSlow,
    /// It changed while being read, on every try.
    KeptChanging,
    /// It could not be opened or read (permissions, I/O).
    Io(std::io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Missing => f.write_str("there is no such file"),
            ReadError::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            ReadError::TooLarge { len, limit } => {
                write!(f, "it is {len} bytes or more, larger than tokens.max_file_bytes ({limit})")
            }
            ReadError::NotText => f.write_str("it is not UTF-8 text"),
            ReadError::TooSlow => write!(f, "reading it took longer than {} s", READ_DEADLINE.as_secs()),
            ReadError::KeptChanging => f.write_str("it kept changing while it was read"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Longest time one read of the file may take, all tries together. Reading
/// 200 MB from the page cache takes a fraction of a second; a file on a
/// stalled network mount is given up on rather than holding a reload.
pub const READ_DEADLINE: Duration = Duration::from_secs(10);

/// How long the file must be left alone before it is read after a change.
pub const QUIET: Duration = Duration::from_millis(100);

/// Reads the file, and reads it again if it changed while being read, so a
/// write in progress is not taken for the new version.
pub fn read_stable(path: &Path, max_bytes: u64) -> Result<String, ReadError> {
    let deadline = Instant::now() + READ_DEADLINE;
    for _ in 0..5 {
        let (text, read_from) = read_once(path, max_bytes, deadline)?;
        if fingerprint(path) == Some(read_from) && read_from.len == text.len() as u64 {
            return Ok(text);
        }
        if Instant::now() + QUIET > deadline {
            return Err(ReadError::TooSlow);
        }
        std::thread::sleep(QUIET);
    }
    Err(ReadError::KeptChanging)
}

/// One read, with the fingerprint of what was opened.
fn read_once(path: &Path, max_bytes: u64, deadline: Instant) -> Result<(String, Fingerprint), ReadError> {
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::Missing,
        _ => ReadError::Io(e),
    };
    // The type and size first, without opening: opening a FIFO waits for a
    // writer, and a sparse file's size is known without reading it.
    check_kind(&std::fs::metadata(path).map_err(io)?, max_bytes)?;
    // Non-blocking, in case a FIFO was put there since; then the file that
    // was opened is checked again.
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    check_kind(&meta, max_bytes)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() as u64 > max_bytes {
            // It grew past the limit while being read.
            return Err(ReadError::TooLarge { len: bytes.len() as u64, limit: max_bytes });
        }
        if Instant::now() > deadline {
            return Err(ReadError::TooSlow);
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| ReadError::NotText)?;
    Ok((text, Fingerprint::of(&meta)))
}

fn check_kind(m: &std::fs::Metadata, max_bytes: u64) -> Result<(), ReadError> {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if !t.is_file() {
        return Err(ReadError::NotRegular(if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_dir() {
            "a folder"
        } else if t.is_socket() {
            "a socket"
        } else {
            "something else"
        }));
    }
    if m.len() > max_bytes {
        return Err(ReadError::TooLarge { len: m.len(), limit: max_bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "abc").unwrap();
        assert_eq!(read_stable(&ok, 3).unwrap(), "abc");
        assert!(matches!(read_stable(&ok, 2), Err(ReadError::TooLarge { len: 3, limit: 2 })));
        let link = dir.path().join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(read_stable(&link, 1 << 20), Err(ReadError::NotRegular("a character device"))));
        assert!(matches!(read_stable(dir.path(), 1 << 20), Err(ReadError::NotRegular("a folder"))));
        assert!(matches!(read_stable(&dir.path().join("none"), 1), Err(ReadError::Missing)));
        let sparse = dir.path().join("sparse.toml");
        std::fs::File::create(&sparse).unwrap().set_len(1 << 40).unwrap();
        assert!(matches!(read_stable(&sparse, 1 << 20), Err(ReadError::TooLarge { .. })));
        let fifo = dir.path().join("fifo.toml");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(read_stable(&fifo, 1 << 20), Err(ReadError::NotRegular("a FIFO"))));
        std::fs::write(&ok, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_stable(&ok, 10), Err(ReadError::NotText)));
    }
}
