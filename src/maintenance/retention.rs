//! What the clean-up removes besides ended tasks' worktrees: history older than
//! `hygiene.keep_history_days` (through `store::prune`), the homes (agent logins, prompt
//! files) a crashed run left behind, and the mirrors of repositories no longer installed.
//! Never imports `web` or `app`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::engine::Engine;
use crate::proc::lock::FileLock;
use crate::store;

/// A home directory younger than this is left alone, whatever its task's state: it may have
/// been made an instant ago by a run that the database does not show yet.
const FRESH: Duration = Duration::from_secs(10 * 60);

/// What one clean-up removed besides worktrees.
#[derive(Debug, Default)]
pub struct Removed {
    pub history: store::Pruned,
    pub homes: usize,
    pub mirrors: usize,
}

pub async fn run(engine: &Engine) -> anyhow::Result<Removed> {
    let days = engine.settings.file.hygiene.keep_history_days;
    let history = if days == 0 {
        store::Pruned::default()
    } else {
        let before = chrono::Utc::now() - chrono::Duration::days(days as i64);
        store::prune(&engine.pool, before).await?
    };
    Ok(Removed {
        history,
        homes: stale_homes(engine).await?,
        mirrors: unused_mirrors(engine).await?,
    })
}

/// Which run a directory under `homes/` belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HomeOf {
    /// `task-<pk>`: a run of the task.
    Task(i64),
    /// `rebase-<pk>`: the gates of a rebase of the task, run under its repository's lock.
    Rebase(i64),
}

fn home_of(name: &str) -> Option<HomeOf> {
    let pk = |s: &str| s.parse::<i64>().ok().filter(|pk| *pk > 0);
    if let Some(n) = name.strip_prefix("task-") {
        return pk(n).map(HomeOf::Task);
    }
    name.strip_prefix("rebase-")
        .and_then(pk)
        .map(HomeOf::Rebase)
}

/// Removes the homes that no run uses: a run removes its own when it ends, so these are
/// what a killed process left (with the agent's login copies and the prompt files in them).
/// A task's home goes once the task is neither queued nor running; a rebase's under the
/// repository lock the rebase holds while it runs.
async fn stale_homes(engine: &Engine) -> anyhow::Result<usize> {
    let dir = engine.settings.data_dir.join("homes");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let Some(of) = entry.file_name().to_str().and_then(home_of) else {
            continue;
        };
        let path = entry.path();
        if !is_stale(&path, now) {
            continue;
        }
        let (HomeOf::Task(pk) | HomeOf::Rebase(pk)) = of;
        let task = store::get_task(&engine.pool, crate::core::ids::TaskKey(pk)).await?;
        let _lock = match (&task, of) {
            (Some(t), _) if !t.state.is_terminal() => continue,
            (Some(t), HomeOf::Rebase(_)) => {
                Some(FileLock::acquire(engine.repo_lock(&t.repo_name())).await?)
            }
            _ => None,
        };
        match std::fs::remove_dir_all(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("removing {}: {e}", path.display()),
        }
    }
    Ok(removed)
}

fn is_stale(path: &Path, now: SystemTime) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| now.duration_since(at).ok())
        .is_some_and(|age| age >= FRESH)
}

/// Removes the mirror of every repository that no active installation covers any more and
/// that has no queued or running task, with the worktrees of its ended tasks. A task of it
/// retried after the App is installed again starts from a fresh mirror.
async fn unused_mirrors(engine: &Engine) -> anyhow::Result<usize> {
    let mut removed = 0;
    for repo in store::github_repos(&engine.pool).await? {
        let mirror = engine.mirror_path(&repo);
        if !mirror.exists() || store::repo_in_use(&engine.pool, &repo).await? {
            continue;
        }
        let _lock = FileLock::acquire(engine.repo_lock(&repo)).await?;
        // Again under the lock: a task may have been queued since.
        if store::repo_in_use(&engine.pool, &repo).await? {
            continue;
        }
        for task in store::ended_with_worktree_in(&engine.pool, &repo).await? {
            if let Some(wt) = task.worktree.as_deref() {
                remove_dir(Path::new(wt));
            }
            store::clear_worktree(&engine.pool, task.pk).await?;
        }
        if remove_dir(&mirror) {
            tracing::info!(%repo, "removed the mirror of {repo}: no installation covers it");
            removed += 1;
        }
    }
    Ok(removed)
}

fn remove_dir(path: &Path) -> bool {
    match std::fs::remove_dir_all(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!("removing {}: {e}", path.display());
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_names() {
        assert_eq!(home_of("task-12"), Some(HomeOf::Task(12)));
        assert_eq!(home_of("rebase-7"), Some(HomeOf::Rebase(7)));
        for other in [
            "task-", "task-0", "task--1", "task-1x", "gates", "rebase", "x-1",
        ] {
            assert_eq!(home_of(other), None, "{other}");
        }
    }
}
