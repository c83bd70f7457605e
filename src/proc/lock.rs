//! Locks that hold across processes: several `autodev` processes may share one data
//! directory. Imports nothing of autodev's.

use std::path::PathBuf;

use anyhow::Context;

/// An exclusive lock on a file, held across processes (`flock`) until dropped: a repository's
/// git bookkeeping, an installation's writes to GitHub, a migration.
pub struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    pub async fn acquire(path: PathBuf) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening lock {}", path.display()))?;
            // Blocks until the lock is ours (flock on Unix, so other processes wait too).
            file.lock()
                .with_context(|| format!("locking {}", path.display()))?;
            Ok(FileLock(file))
        })
        .await?
    }
}
