//! Scheduled git hygiene. Each schedule ticks on wall-clock multiples of its interval (the
//! same instants in every process), and each tick is queued with the idempotency key
//! `<job>:<timestamp>`, so with several `serve`/`worker` processes on one database a job runs
//! once per tick, not once per process. The prizer opens pull requests for passed tasks that
//! have none (the on-pass trigger catches most; the schedule catches what it missed).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis::prelude::TaskBuilder;
use apalis_cron::{CronScheduler, Schedule, Tick};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::github::outbox::{self, Effect};

pub const HYGIENE_QUEUE: &str = "autodev.hygiene";

/// Ticks at every multiple of `every` since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Every(pub Duration);

impl Schedule<apalis_cron::timezone::Utc> for Every {
    fn next_tick(
        &mut self,
        _: &apalis_cron::timezone::Utc,
    ) -> Option<Tick<apalis_cron::timezone::Utc>> {
        let step = self.0.as_secs().max(1);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(Tick::new((now / step + 1) * step))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    Prize,
    Cleanup,
    Checkpoint,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HygieneJob {
    pub job: Job,
    pub tick: u64,
}

/// Turns ticks into queued jobs until `shutdown`.
pub async fn run_schedules(engine: Arc<Engine>, shutdown: CancellationToken) {
    let hygiene = &engine.settings.file.hygiene;
    let schedules = [
        (Job::Prize, hygiene.pr_minutes),
        (Job::Cleanup, hygiene.cleanup_minutes),
        (Job::Checkpoint, hygiene.checkpoint_minutes),
    ];
    let loops = schedules.into_iter().map(|(job, every)| {
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut ticks = Box::pin(CronScheduler::new(Every(every)).into_stream());
            loop {
                let tick = tokio::select! {
                    t = ticks.next() => t,
                    _ = shutdown.cancelled() => return,
                };
                match tick {
                    Some(Ok(tick)) => {
                        if let Err(e) = enqueue(&engine, job, tick.get_timestamp()).await {
                            tracing::warn!(
                                "queueing {job:?} for tick {}: {e:#}",
                                tick.get_timestamp()
                            );
                        }
                    }
                    Some(Err(e)) => tracing::warn!("{job:?} schedule: {e}"),
                    None => return,
                }
            }
        }
    });
    futures::future::join_all(loops).await;
}

async fn enqueue(engine: &Engine, job: Job, tick: u64) -> anyhow::Result<()> {
    let name = match job {
        Job::Prize => "prize",
        Job::Cleanup => "cleanup",
        Job::Checkpoint => "checkpoint",
    };
    let args = serde_json::to_vec(&HygieneJob { job, tick })?;
    let task = TaskBuilder::new(args)
        .task_id(apalis::prelude::TaskId::from_ulid(ulid::Ulid::generate()))
        .idempotency_key(format!("{name}:{tick}"))
        .build();
    let mut conn = engine.pool.acquire().await?;
    apalis_sqlite::queries::push_tasks(&mut *conn, HYGIENE_QUEUE, &[task])
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs one hygiene job.
pub async fn run(engine: &Arc<Engine>, job: HygieneJob) -> anyhow::Result<()> {
    match job.job {
        Job::Prize => {
            let n = prize(engine).await?;
            tracing::info!(tick = job.tick, "prizer: {n} pull request(s) to open");
            Ok(())
        }
        Job::Checkpoint => {
            let n = checkpoint(engine).await?;
            tracing::info!(tick = job.tick, "checkpointer: {n} checkpoint(s)");
            Ok(())
        }
        Job::Cleanup => {
            let n = cleanup(engine).await?;
            tracing::info!(tick = job.tick, "clean-up: {n} worktree(s) removed");
            Ok(())
        }
    }
}

/// Removes the worktrees of tasks that ended more than `hygiene.cleanup_after_hours` ago. The
/// branches stay: a retry makes a new worktree and continues from them.
pub async fn cleanup(engine: &Engine) -> anyhow::Result<usize> {
    let hours = engine.settings.file.hygiene.cleanup_after_hours;
    let before = chrono::Utc::now() - chrono::Duration::hours(hours as i64);
    let mut removed = 0;
    for task in crate::db::ended_with_worktree(&engine.pool, before).await? {
        let Some(path) = task.worktree.as_deref().map(std::path::PathBuf::from) else {
            continue;
        };
        let repo = if task.repo_name().is_local() {
            engine.settings.repo_path.clone()
        } else {
            engine.mirror_path(&task.repo_name())
        };
        let _lock = crate::gitops::RepoLock::acquire(engine.repo_lock(&task.repo_name())).await?;
        // Re-read under the lock: a retry may have taken the task since.
        match crate::db::get_task(&engine.pool, task.pk).await? {
            Some(t) if t.state.is_terminal() && t.worktree.is_some() => {}
            _ => continue,
        }
        engine.git.remove_worktree(&repo, &path).await?;
        crate::db::clear_worktree(&engine.pool, task.pk).await?;
        engine
            .record(
                task.pk,
                task.run_seq,
                "cleanup",
                &format!("removed worktree {}", path.display()),
            )
            .await;
        removed += 1;
    }
    engine.refresh_gauges().await;
    Ok(removed)
}

/// Queues a pull request for every passed, pushed task that has none. Returns how many.
pub async fn prize(engine: &Engine) -> anyhow::Result<usize> {
    let keys = crate::db::tasks_needing_pr(&engine.pool).await?;
    for key in &keys {
        outbox::push(
            &engine.pool,
            Effect::OpenPr { task: *key },
            0,
            Duration::ZERO,
        )
        .await?;
    }
    Ok(keys.len())
}

/// A work-in-progress commit for each running task whose worktree changed since its last
/// checkpoint, kept under `refs/autodev/checkpoints/<task_id>`; in App mode also pushed to the
/// task branch, so a crash or a lost machine costs at most one interval of the agent's work.
/// Returns how many checkpoints were made.
pub async fn checkpoint(engine: &Engine) -> anyhow::Result<usize> {
    let tmp = engine.settings.data_dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut made = 0;
    for task in
        crate::db::list_tasks(&engine.pool, Some(crate::db::TaskState::Running), 1000).await?
    {
        let Some(path) = task.worktree.as_deref().map(std::path::PathBuf::from) else {
            continue;
        };
        if !path.join(".git").exists() {
            continue;
        }
        let message = format!(
            "chore({}): checkpoint of {}\n\nWork in progress, saved while the agent runs.\n\nAutodev-Task: {}\n",
            task.role, task.title, task.task_id
        );
        let side_ref = format!("refs/autodev/checkpoints/{}", task.task_id);
        let index = tmp.join(format!("checkpoint-{}.index", task.pk));
        let commit = match engine
            .git
            .checkpoint(&path, &index, &side_ref, &message)
            .await
        {
            Ok(Some(c)) => c,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(task = %task.task_id, "checkpoint failed: {e:#}");
                continue;
            }
        };
        made += 1;
        engine
            .record(
                task.pk,
                task.run_seq,
                "checkpoint",
                &format!(
                    "checkpoint {} saved as {side_ref}",
                    &commit[..10.min(commit.len())]
                ),
            )
            .await;
        if let (Some(gh), Some(installation), Some(url)) = (
            &engine.github,
            task.installation_id,
            task.clone_url.as_deref(),
        ) {
            let token = gh
                .installation_token(crate::github::event::InstallationId(installation))
                .await?;
            let _lock =
                crate::gitops::RepoLock::acquire(engine.repo_lock(&task.repo_name())).await?;
            // Under the lock, only if the run is still going and has not committed since: the
            // final push must never be replaced by an older checkpoint.
            let now = crate::db::get_task(&engine.pool, task.pk).await?;
            let still = now.as_ref().is_some_and(|t| {
                t.state == crate::db::TaskState::Running && t.run_seq == task.run_seq
            });
            let parent = engine.git.head(&path).await.ok();
            let checkpoint_parent = engine.git.parent_of(&path, &commit).await.ok();
            if !still || parent.is_none() || parent != checkpoint_parent {
                continue;
            }
            let lease = now.and_then(|t| t.pushed_sha);
            match engine
                .git
                .push(&path, url, &commit, &task.branch, &token, lease.as_deref())
                .await
            {
                Ok(()) => {
                    crate::db::set_pushed(&engine.pool, task.pk, &commit).await?;
                    outbox::push(
                        &engine.pool,
                        Effect::CheckRun { task: task.pk },
                        0,
                        Duration::ZERO,
                    )
                    .await?;
                }
                Err(e) => {
                    tracing::warn!(task = %task.task_id, "pushing the checkpoint failed: {e:#}")
                }
            }
        }
    }
    Ok(made)
}
