//! Room kept on the data directory's disk (`database.reserve_mb`, a file of that size), so a
//! full disk can still be written about. When a write fails because the disk is full, the
//! file is removed: the task that hit it ends `error` naming the cause, the queue and the
//! database go on working, and new work is refused (HTTP 507) until there is room for the
//! file again, which is checked on every sweep. Imports nothing of autodev's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Less room than this on the data directory's disk is a full disk.
const FULL: u64 = 1024 * 1024;

pub struct Reserve {
    path: PathBuf,
    bytes: u64,
    /// The file is not there: the disk filled up, or had no room for it.
    released: AtomicBool,
}

impl Reserve {
    /// The reserve of `bytes` at `data_dir/reserve`; made at once when there is room.
    pub fn new(data_dir: &Path, bytes: u64) -> Self {
        let reserve = Self {
            path: data_dir.join("reserve"),
            bytes,
            released: AtomicBool::new(true),
        };
        reserve.restore();
        reserve
    }

    /// Whether new work must wait: the reserve is spent and not made again yet.
    pub fn is_released(&self) -> bool {
        self.bytes > 0 && self.released.load(Ordering::SeqCst)
    }

    /// Gives the reserve's room back to the disk; `true` if this call did.
    pub fn release(&self) -> bool {
        if self.bytes == 0 || self.released.swap(true, Ordering::SeqCst) {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::error!(
                "the data directory's disk is full: its reserve of {} MB is freed so that what runs can end and be recorded; new work is refused until there is room again",
                self.bytes / (1024 * 1024)
            ),
            Err(e) => {
                tracing::error!("the data directory's disk is full; freeing its reserve: {e}")
            }
        }
        true
    }

    /// Gives the reserve back if the disk is full in fact (an error's words alone, which may be
    /// anyone's, are not enough); whether it is full, or was found full before.
    pub fn release_if_full(&self) -> bool {
        if self.is_released() {
            return true;
        }
        let full = free_bytes(self.path.parent().unwrap_or(Path::new(".")))
            .is_some_and(|room| room < FULL);
        if full {
            self.release();
        }
        full
    }

    /// Makes the reserve again when the disk has room for it and as much again; `true` when
    /// it is in place.
    pub fn restore(&self) -> bool {
        if self.bytes == 0 {
            return true;
        }
        if !self.released.load(Ordering::SeqCst) {
            return true;
        }
        let complete = std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes);
        if !complete {
            let room = free_bytes(self.path.parent().unwrap_or(Path::new(".")));
            if room.is_none_or(|r| r < 2 * self.bytes) {
                return false;
            }
            if let Err(e) = self.write() {
                let _ = std::fs::remove_file(&self.path);
                tracing::warn!("making the disk reserve {}: {e}", self.path.display());
                return false;
            }
        }
        if self.released.swap(false, Ordering::SeqCst) {
            tracing::info!("the data directory has room again: new work is taken");
        }
        true
    }

    /// Writes the file out in full (zeros, not a sparse file: the blocks must be taken).
    fn write(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::File::create(&self.path)?;
        let chunk = vec![0u8; 1024 * 1024];
        let mut left = self.bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    }
}

/// Bytes an unprivileged process may still write on the disk holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid C string and `s` is written by statvfs before it is read.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `s`.
    let s = unsafe { s.assume_init() };
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(dir.path(), 1024 * 1024);
        assert!(!r.is_released());
        assert_eq!(
            std::fs::metadata(dir.path().join("reserve")).unwrap().len(),
            1024 * 1024
        );
        assert!(r.release());
        assert!(!r.release(), "once");
        assert!(r.is_released());
        assert!(!dir.path().join("reserve").exists());
        assert!(r.restore());
        assert!(!r.is_released());
        let none = Reserve::new(dir.path(), 0);
        assert!(!none.is_released() && !none.release());
    }
}
