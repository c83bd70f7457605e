//! Spare task repositories: one per repository that tasks start from, made ahead at the commit
//! the last task started at, so that the next task on that commit takes a checkout that is
//! already there (a rename) instead of waiting for one. This module keeps the books (where
//! each spare is, at which commit, which one is being made); `ops` makes and adopts them.
//! Imports nothing of autodev's: no database, no engine, no `ops`.
//!
//! Each process keeps its spares in a directory of its own under the root, named uniquely
//! and held by an exclusive `flock` on `<name>.lock` for as long as the process wants spares.
//! A directory whose lock anyone can take belongs to a process that is gone (whatever its
//! pid namespace), and is removed.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The branch a spare's repository is on until a task takes it.
pub const PLACEHOLDER: &str = "autodev-spare";

/// The most repositories a process keeps a spare for.
pub const MAX_SPARES: usize = 4;

/// The spares of this process.
#[derive(Debug)]
pub struct Spares {
    root: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// This process's directory and the lock that says it lives, once spares are wanted.
    own: Option<(PathBuf, std::fs::File)>,
    /// The repository each borrows from (its git directory) → the spare ready for it.
    ready: HashMap<PathBuf, Spare>,
    /// Repositories whose spare is being made.
    making: HashSet<PathBuf>,
    /// Spares made so far (each one's name).
    made: u64,
    /// Bumped when every spare is given back: one being made meanwhile is not kept.
    generation: u64,
}

#[derive(Debug)]
struct Spare {
    path: PathBuf,
    commit: String,
}

/// A spare on its way: where to make it, and the books' generation when it was started.
#[derive(Debug)]
pub struct Making {
    pub path: PathBuf,
    generation: u64,
}

impl Spares {
    /// Spares under `root` (beside the worktrees, so that taking one is a rename). Nothing is
    /// made, and nothing on disk is touched, until [`Spares::want`].
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            state: Mutex::default(),
        }
    }

    /// From now on, spares are made (a process that serves task after task): this process's
    /// directory is made and locked, and what processes that are gone left is removed.
    pub fn want(&self) -> std::io::Result<()> {
        let mut state = self.lock();
        if state.own.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.root)?;
        let name = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        );
        let lock = std::fs::File::create(self.root.join(format!("{name}.lock")))?;
        if !try_lock(&lock) {
            return Err(std::io::Error::other("the spares' lock is taken"));
        }
        for entry in std::fs::read_dir(&self.root)?.flatten() {
            let path = entry.path();
            let Some(file) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let (stem, is_lock) = match file.strip_suffix(".lock") {
                Some(stem) => (stem, true),
                None => (file, false),
            };
            if stem == name {
                continue;
            }
            let lock_path = self.root.join(format!("{stem}.lock"));
            // Gone: no lock file at all, or one that nobody holds.
            let gone = std::fs::File::open(&lock_path).map_or(true, |f| try_lock(&f));
            if gone {
                if is_lock {
                    let _ = std::fs::remove_file(&path);
                } else {
                    discard(path);
                }
            }
        }
        let dir = self.root.join(&name);
        std::fs::create_dir_all(&dir)?;
        state.own = Some((dir, lock));
        Ok(())
    }

    /// The directory the spares are under (on the disk they take room on).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The spare for `home_git`, taken out of the books, when it is at `commit`. One at
    /// another commit (the base moved on) is removed.
    pub fn take(&self, home_git: &Path, commit: &str) -> Option<PathBuf> {
        let spare = self.lock().ready.remove(home_git)?;
        if spare.commit == commit {
            return Some(spare.path);
        }
        discard(spare.path);
        None
    }

    /// Where to make a spare for `home_git`, unless spares are not wanted, one is there or
    /// being made, or [`MAX_SPARES`] repositories have one.
    pub fn start(&self, home_git: &Path) -> Option<Making> {
        let mut state = self.lock();
        let dir = state.own.as_ref()?.0.clone();
        if state.ready.contains_key(home_git)
            || state.ready.len() + state.making.len() >= MAX_SPARES
            || !state.making.insert(home_git.to_owned())
        {
            return None;
        }
        state.made += 1;
        Some(Making {
            path: dir.join(state.made.to_string()),
            generation: state.generation,
        })
    }

    /// Ends the making of a spare for `home_git`: into the books when it was made (at
    /// `commit`) and nothing was given back meanwhile, else away.
    pub fn finish(&self, home_git: &Path, making: Making, commit: Option<String>) {
        let mut state = self.lock();
        state.making.remove(home_git);
        match commit {
            Some(commit) if making.generation == state.generation => {
                let spare = Spare {
                    path: making.path,
                    commit,
                };
                if let Some(old) = state.ready.insert(home_git.to_owned(), spare) {
                    discard(old.path);
                }
            }
            _ => discard(making.path),
        }
    }

    /// Removes every spare, and any being made once it is (the room is needed).
    pub fn clear(&self) {
        let mut state = self.lock();
        state.generation += 1;
        for (_, spare) in state.ready.drain() {
            discard(spare.path);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the spares' books are never poisoned")
    }
}

/// Takes `file`'s exclusive `flock` without waiting; whether it did.
fn try_lock(file: &std::fs::File) -> bool {
    // SAFETY: flock on a file descriptor this process owns, which outlives the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes a spare that is of no use, off the caller's path.
fn discard(path: PathBuf) {
    std::thread::spawn(move || {
        let _ = std::fs::remove_dir_all(path);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone(path: &Path) -> bool {
        for _ in 0..200 {
            if !path.exists() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_spare_is_taken_once_and_only_at_its_commit() {
        let root = tempfile::tempdir().unwrap();
        let spares = Spares::new(root.path());
        let home = Path::new("/repo/.git");
        assert!(spares.start(home).is_none(), "none unless wanted");
        spares.want().unwrap();
        let making = spares.start(home).expect("nothing is being made yet");
        assert!(spares.start(home).is_none(), "one spare a repository");
        let path = making.path.clone();
        std::fs::create_dir_all(&path).unwrap();
        spares.finish(home, making, Some("abc".into()));
        assert!(spares.start(home).is_none(), "one is ready");
        assert_eq!(spares.take(home, "abc"), Some(path));
        assert_eq!(spares.take(home, "abc"), None, "taken already");

        let making = spares.start(home).unwrap();
        let path = making.path.clone();
        std::fs::create_dir_all(&path).unwrap();
        spares.finish(home, making, Some("abc".into()));
        assert_eq!(spares.take(home, "def"), None, "the base moved on");
        assert!(gone(&path), "a spare at an old commit is removed");

        // Given back while being made: not kept.
        let making = spares.start(home).unwrap();
        let path = making.path.clone();
        std::fs::create_dir_all(&path).unwrap();
        spares.clear();
        spares.finish(home, making, Some("abc".into()));
        assert_eq!(spares.take(home, "abc"), None);
        assert!(gone(&path));

        // At most a few repositories.
        let homes: Vec<PathBuf> = (0..=MAX_SPARES)
            .map(|n| PathBuf::from(format!("/r{n}/.git")))
            .collect();
        let started = homes.iter().filter(|h| spares.start(h).is_some()).count();
        assert_eq!(started, MAX_SPARES);
    }

    #[test]
    fn only_what_a_process_that_is_gone_left_is_removed() {
        let root = tempfile::tempdir().unwrap();
        // Another living process: its lock is held.
        let living = Spares::new(root.path());
        living.want().unwrap();
        let living_dir = root.path().join(
            std::fs::read_dir(root.path())
                .unwrap()
                .flatten()
                .find(|e| e.path().is_dir())
                .unwrap()
                .file_name(),
        );
        std::fs::create_dir_all(living_dir.join("1")).unwrap();
        // One that is gone: its lock file is there, unheld; and one from before locks.
        let dead = root.path().join("7-1");
        std::fs::create_dir_all(dead.join("1")).unwrap();
        std::fs::write(root.path().join("7-1.lock"), "").unwrap();
        let older = root.path().join("4242");
        std::fs::create_dir_all(&older).unwrap();

        let spares = Spares::new(root.path());
        spares.want().unwrap();
        assert!(gone(&dead) && gone(&older));
        assert!(!root.path().join("7-1.lock").exists());
        assert!(
            living_dir.join("1").exists(),
            "a living process keeps its spares"
        );
    }
}
