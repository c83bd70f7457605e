//! Spare task repositories: one per repository that tasks start from, made ahead at the commit
//! the last task started at, so that the next task on that commit takes a checkout that is
//! already there (a rename) instead of waiting for one. This module keeps the books (where
//! each spare is, at which commit, which one is being made); `ops` makes and adopts them.
//! Imports nothing of autodev's: no database, no engine, no `ops`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The branch a spare's repository is on until a task takes it.
pub const PLACEHOLDER: &str = "autodev-spare";

/// The spares of this process, in a directory of its own.
#[derive(Debug)]
pub struct Spares {
    dir: PathBuf,
    state: Mutex<State>,
    made: AtomicU64,
    /// Whether to make any: a process that runs one task and ends never takes one.
    wanted: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// The repository each borrows from (its git directory) → the spare ready for it.
    ready: HashMap<PathBuf, Spare>,
    /// Repositories whose spare is being made.
    making: HashSet<PathBuf>,
}

#[derive(Debug)]
struct Spare {
    path: PathBuf,
    commit: String,
}

impl Spares {
    /// Spares under `root` (beside the worktrees, so that taking one is a rename): this
    /// process's in `root/<pid>`. What processes that are gone left there is removed.
    pub fn new(root: &Path) -> Self {
        let own = std::process::id();
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.flatten() {
                let pid = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok());
                if pid.is_some_and(|pid| pid == own || !alive(pid)) {
                    discard(entry.path());
                }
            }
        }
        Self {
            dir: root.join(own.to_string()),
            state: Mutex::default(),
            made: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
        }
    }

    /// From now on, spares are made (a process that serves task after task).
    pub fn want(&self) {
        self.wanted.store(true, Ordering::Relaxed);
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

    /// Where to make a spare for `home_git`, unless one is there or being made.
    pub fn start(&self, home_git: &Path) -> Option<PathBuf> {
        if !self.wanted.load(Ordering::Relaxed) {
            return None;
        }
        let mut state = self.lock();
        if state.ready.contains_key(home_git) || !state.making.insert(home_git.to_owned()) {
            return None;
        }
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        Some(self.dir.join(n.to_string()))
    }

    /// Ends the making of a spare for `home_git` at `path`: into the books when it was made
    /// (`commit`), else away.
    pub fn finish(&self, home_git: &Path, path: PathBuf, commit: Option<String>) {
        let mut state = self.lock();
        state.making.remove(home_git);
        match commit {
            Some(commit) => {
                if let Some(old) = state
                    .ready
                    .insert(home_git.to_owned(), Spare { path, commit })
                {
                    discard(old.path);
                }
            }
            None => discard(path),
        }
    }

    /// Removes every spare that is ready (the room is needed).
    pub fn clear(&self) {
        for (_, spare) in self.lock().ready.drain() {
            discard(spare.path);
        }
    }

    /// The directory the spares are under (on the disk they take room on).
    pub fn root(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the spares' books are never poisoned")
    }
}

/// Whether process `pid` is running.
fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
    let answer = unsafe { libc::kill(pid, 0) };
    answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
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

    #[test]
    fn a_spare_is_taken_once_and_only_at_its_commit() {
        let root = tempfile::tempdir().unwrap();
        let spares = Spares::new(root.path());
        let home = Path::new("/repo/.git");
        assert!(spares.start(home).is_none(), "none unless wanted");
        spares.want();
        let path = spares.start(home).expect("nothing is being made yet");
        assert!(spares.start(home).is_none(), "one spare a repository");
        std::fs::create_dir_all(&path).unwrap();
        spares.finish(home, path.clone(), Some("abc".into()));
        assert!(spares.start(home).is_none(), "one is ready");
        assert_eq!(spares.take(home, "abc"), Some(path));
        assert_eq!(spares.take(home, "abc"), None, "taken already");

        let path = spares.start(home).unwrap();
        std::fs::create_dir_all(&path).unwrap();
        spares.finish(home, path.clone(), Some("abc".into()));
        assert_eq!(spares.take(home, "def"), None, "the base moved on");
        for _ in 0..100 {
            if !path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!path.exists(), "a spare at an old commit is removed");
    }

    #[test]
    fn what_a_process_that_is_gone_left_is_removed() {
        let root = tempfile::tempdir().unwrap();
        // No process has this pid (above the kernel's limit).
        let gone = root.path().join("4194305");
        std::fs::create_dir_all(gone.join("0")).unwrap();
        let living = root.path().join("1");
        std::fs::create_dir_all(&living).unwrap();
        let _spares = Spares::new(root.path());
        for _ in 0..100 {
            if !gone.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!gone.exists());
        assert!(living.exists(), "pid 1 is running");
    }
}
