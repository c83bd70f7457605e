//! Room kept on the data directory's disk (`database.reserve_mb`, a file of that size), so a
//! full disk can still be written about. When a write fails and the disk is full in fact, the
//! file is removed: what runs can end and be recorded, the queue and the database go on
//! working, and new work is refused (HTTP 507) until there is room for the file again, which
//! every process checks on its sweep. The file is the state: every process on the data
//! directory sees it go. Imports nothing of autodev's.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Less room than this on the data directory's disk is a full disk.
const FULL: u64 = 1024 * 1024;

pub struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Reserve {
    /// The reserve of `bytes` at `data_dir/reserve`; made at once when there is room.
    pub fn new(data_dir: &Path, bytes: u64) -> Self {
        let reserve = Self {
            path: data_dir.join("reserve"),
            bytes,
        };
        reserve.restore();
        reserve
    }

    /// The file, whole. Its being there is the state every process on the data directory
    /// shares: one that frees it tells them all.
    fn in_place(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() == self.bytes)
    }

    /// Whether new work must wait: the reserve is spent and not made again yet.
    pub fn is_released(&self) -> bool {
        self.bytes > 0 && !self.in_place()
    }

    /// Gives the reserve's room back to the disk; `true` if this call did.
    pub fn release(&self) -> bool {
        if self.bytes == 0 {
            return false;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                tracing::error!(
                    "the data directory's disk is full: its reserve of {} MB is freed so that what runs can end and be recorded; new work is refused until there is room again",
                    self.bytes / (1024 * 1024)
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Gives the reserve back if the disk is full in fact (an error's words alone, which may be
    /// anyone's, are not enough); whether it is full, or was found full before.
    pub fn release_if_full(&self) -> bool {
        if self.is_released() {
            return true;
        }
        let full = free_bytes(self.dir()).is_some_and(|room| room < FULL);
        if full {
            self.release();
        }
        full
    }

    /// Makes the reserve again when the disk has room for it and as much again; `true` when
    /// it is in place.
    pub fn restore(&self) -> bool {
        if self.bytes == 0 || self.in_place() {
            return true;
        }
        if free_bytes(self.dir()).is_none_or(|room| room < 2 * self.bytes) {
            return false;
        }
        // Written aside and renamed: a process never sees half a reserve as a whole one.
        let aside = self
            .path
            .with_file_name(format!("reserve.{}.tmp", std::process::id()));
        if let Err(e) = self
            .write(&aside)
            .and_then(|()| std::fs::rename(&aside, &self.path))
        {
            let _ = std::fs::remove_file(&aside);
            tracing::warn!("making the disk reserve {}: {e}", self.path.display());
            return false;
        }
        tracing::info!(
            "the data directory has room: its reserve is in place, and new work is taken"
        );
        true
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Writes the file out in full (zeros, not a sparse file: the blocks must be taken).
    fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(self.dir())?;
        let mut f = std::fs::File::create(path)?;
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
pub fn free_bytes(dir: &Path) -> Option<u64> {
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
        // Another process on the same directory sees it.
        let other = Reserve {
            path: dir.path().join("reserve"),
            bytes: 1024 * 1024,
        };
        assert!(other.is_released());
        assert!(!dir.path().join("reserve").exists());
        assert!(r.restore());
        assert!(!r.is_released());
        let none = Reserve::new(dir.path(), 0);
        assert!(!none.is_released() && !none.release());
    }
}
