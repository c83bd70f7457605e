//! Scheduled git hygiene. Each schedule ticks on wall-clock multiples of its interval (the
//! same instants in every process), and each tick is queued with the idempotency key
//! `<job>:<timestamp>`, so with several `serve`/`worker` processes on one database a job runs
//! once per tick, not once per process. The pull request sweep opens pull requests for passed tasks that
//! have none (the on-pass trigger catches most; the schedule catches what it missed).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis_cron::{CronScheduler, Schedule, Tick};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::bot::outbox;
use crate::engine::Engine;
use crate::github::client::Identity;
use crate::github::event::InstallationId;
use crate::jobs::{Chore, Effect, HygieneJob};

mod reconcile;
mod retention;

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

/// Turns ticks into queued jobs until `shutdown`.
pub async fn run_schedules(engine: Arc<Engine>, shutdown: CancellationToken) {
    let hygiene = &engine.settings.file.hygiene;
    let schedules = [
        (Chore::OpenPrs, hygiene.pr_minutes),
        (Chore::Cleanup, hygiene.cleanup_minutes),
        (Chore::Checkpoint, hygiene.checkpoint_minutes),
        (Chore::Rebase, hygiene.rebase_minutes),
        (Chore::Reconcile, hygiene.reconcile_minutes),
    ];
    // Once at start too: what a stop left half-done is finished without waiting for a tick.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    if let Err(e) = enqueue(&engine, Chore::Reconcile, now).await {
        tracing::warn!("queueing the reconciler at start: {e:#}");
    }
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

async fn enqueue(engine: &Engine, job: Chore, tick: u64) -> anyhow::Result<()> {
    crate::jobs::push_now(&engine.pool, &HygieneJob { job, tick })
        .await
        .map(|_| ())
}

/// Runs one hygiene job.
pub async fn run(engine: &Arc<Engine>, job: HygieneJob) -> anyhow::Result<()> {
    match job.job {
        Chore::OpenPrs => {
            let n = open_missing_prs(engine).await?;
            tracing::info!(tick = job.tick, "pull request sweep: {n} to open");
            Ok(())
        }
        Chore::Rebase => {
            let n = rebase(engine).await?;
            tracing::info!(tick = job.tick, "rebase: {n} branch(es) brought up to date");
            Ok(())
        }
        Chore::Checkpoint => {
            let n = checkpoint(engine).await?;
            tracing::info!(tick = job.tick, "checkpointer: {n} checkpoint(s)");
            Ok(())
        }
        Chore::Reconcile => {
            let r = reconcile::run(engine).await?;
            if r != reconcile::Reconciled::default() {
                tracing::info!(
                    tick = job.tick,
                    "reconciler: {} stalled GitHub effect(s) queued again, {} push(es) recorded",
                    r.effects,
                    r.pushes
                );
            }
            Ok(())
        }
        Chore::Cleanup => {
            let n = cleanup(engine).await?;
            let r = retention::run(engine).await?;
            tracing::info!(
                tick = job.tick,
                "clean-up: {n} worktree(s), {} history row(s) ({:?}), {} stale home(s), {} mirror(s) removed",
                r.history.total(),
                r.history,
                r.homes,
                r.mirrors
            );
            engine.refresh_gauges().await;
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
    for task in crate::store::ended_with_worktree(&engine.pool, before).await? {
        if engine.remove_ended_worktree(task.pk, "").await? {
            removed += 1;
        }
    }
    removed += prune_closed(engine).await?;
    Ok(removed)
}

/// The disk is full and its reserve cannot be made again: the worktrees of ended tasks go at
/// once, whatever their age (their branches keep the work; what an agent left beside it, such
/// as a file that filled the disk, is not on a branch). Returns how many.
pub async fn free_ended_worktrees(engine: &Engine) -> anyhow::Result<usize> {
    let mut removed = 0;
    for task in crate::store::ended_with_worktree(&engine.pool, chrono::Utc::now()).await? {
        if !engine
            .remove_ended_worktree(task.pk, ": the disk is full")
            .await?
        {
            continue;
        }
        removed += 1;
        if engine.disk.restore() {
            break;
        }
    }
    Ok(removed)
}

/// In App mode: tasks whose pull request was merged or closed lose their worktree and their
/// branch in the mirror (GitHub keeps the pushed branch, or deleted it on merge). In local
/// mode such a task is only marked, so its branch is no longer rebased.
async fn prune_closed(engine: &Engine) -> anyhow::Result<usize> {
    let Some(gh) = engine.github() else {
        return Ok(0);
    };
    let mut pruned = 0;
    for task in crate::store::tasks_with_pr_not_closed(&engine.pool).await? {
        let Some(pr) = task.pr_number else {
            continue;
        };
        let (who, owner, repo): (Identity, String, String) =
            match (task.installation_id, task.repo.split_once('/')) {
                (Some(i), Some((o, r))) => (InstallationId(i).into(), o.into(), r.into()),
                (None, None) if task.repo_name().is_local() => {
                    match crate::bot::origin::task_remote(engine, &task).await {
                        Ok(remote) => (Identity::Token, remote.owner, remote.repo),
                        Err(_) => continue,
                    }
                }
                _ => continue,
            };
        let repo_path = crate::github::api::RepoPath {
            owner: &owner,
            name: &repo,
        };
        let state = match gh.pull_request(who, repo_path, pr).await {
            Ok(pull) => pull.state,
            Err(e) => {
                tracing::warn!(task = %task.task_id, "reading pull request #{pr}: {e}");
                continue;
            }
        };
        if state != "closed" {
            continue;
        }
        let what = if task.installation_id.is_none() {
            // Local mode: the branch is in the user's repository, and stays there.
            format!("{} is no longer kept up to date", task.branch)
        } else {
            let mirror = engine.mirror_path(&task.repo_name());
            let _lock =
                crate::proc::lock::FileLock::acquire(engine.repo_lock(&task.repo_name())).await?;
            if let Some(wt) = task.worktree.as_deref() {
                engine
                    .git
                    .remove_worktree(&mirror, std::path::Path::new(wt))
                    .await?;
                crate::store::clear_worktree(&engine.pool, task.pk).await?;
            }
            engine
                .git
                .delete_branch(
                    &mirror,
                    &task.branch,
                    &format!("refs/autodev/checkpoints/{}", task.task_id),
                )
                .await?;
            pruned += 1;
            format!("pruned {} from the mirror", task.branch)
        };
        crate::store::set_pr_state(&engine.pool, task.pk, crate::store::PrState::Closed).await?;
        engine
            .record(
                task.pk,
                task.run_seq,
                crate::store::EventKind::Cleanup,
                &format!("pull request #{pr} is closed: {what}"),
            )
            .await;
    }
    Ok(pruned)
}

/// Queues a pull request for every passed task that has none and has not been refused one:
/// App tasks once pushed, local tasks that ran with `GITHUB_TOKEN` and a GitHub `origin`.
/// Returns how many.
pub async fn open_missing_prs(engine: &Engine) -> anyhow::Result<usize> {
    let keys = pr_candidates(engine, false).await?;
    for key in &keys {
        crate::jobs::push_now(
            &engine.pool,
            &crate::jobs::OutboxJob::new(Effect::OpenPr { task: *key }),
        )
        .await?;
    }
    Ok(keys.len())
}

/// The passed tasks without a pull request that one can be opened for. Asked `by_hand`, also
/// those refused one before, and local tasks that ran before local pull requests were set up.
pub async fn pr_candidates(
    engine: &Engine,
    by_hand: bool,
) -> anyhow::Result<Vec<crate::core::ids::TaskKey>> {
    let mut keys = Vec::new();
    if engine.app_mode() {
        keys.extend(crate::store::tasks_needing_pr(&engine.pool, by_hand).await?);
    }
    if engine.settings.github_token.is_some() {
        match crate::bot::origin::local_remote(engine).await {
            Ok(_) => {
                keys.extend(crate::store::local_tasks_needing_pr(&engine.pool, by_hand).await?)
            }
            Err(why) => tracing::debug!("local pull requests: {why}"),
        }
    }
    Ok(keys)
}

/// A work-in-progress commit for each running task whose worktree changed since its last
/// checkpoint, kept under `refs/autodev/checkpoints/<task_id>`; in App mode also pushed to the
/// task branch, so a crash or a lost machine costs at most one interval of the agent's work.
/// Returns how many checkpoints were made.
pub async fn checkpoint(engine: &Engine) -> anyhow::Result<usize> {
    let tmp = engine.settings.data_dir.join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let mut made = 0;
    for task in crate::store::list_tasks(
        &engine.pool,
        Some(crate::store::TaskState::Running),
        None,
        1000,
    )
    .await?
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
        let home_git = match engine
            .git
            .common_dir(&engine.home_repo(&task.repo_name()))
            .await
        {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(task = %task.task_id, "checkpoint failed: {e:#}");
                continue;
            }
        };
        // The branch autodev keeps moves only when the run ends (under the repository's lock):
        // a checkpoint taken before that is never pushed after it.
        let branch_ref = format!("refs/heads/{}", task.branch);
        let kept_before = engine.git.rev(&home_git, &branch_ref).await.ok().flatten();
        let paths = engine.task_paths(&path, &home_git);
        let confine = |job| engine.confine_reader(&paths, &home_git, &tmp, job);
        let taken = engine
            .git
            .checkpoint(
                &home_git,
                &path,
                &task.branch,
                &index,
                &side_ref,
                &message,
                Some(&confine),
            )
            .await;
        let commit = match taken {
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
                crate::store::EventKind::Checkpoint,
                &format!(
                    "checkpoint {} saved as {side_ref}",
                    &commit[..10.min(commit.len())]
                ),
            )
            .await;
        if let (Some(gh), Some(installation), Some(url)) = (
            &engine.github(),
            task.installation_id,
            task.clone_url.as_deref(),
        ) {
            let token = gh.installation_token(InstallationId(installation)).await?;
            let _lock =
                crate::proc::lock::FileLock::acquire(engine.repo_lock(&task.repo_name())).await?;
            // Under the lock, only if the run is still going and has not committed since: the
            // final push must never be replaced by an older checkpoint.
            let now = crate::store::get_task(&engine.pool, task.pk).await?;
            let still = now.as_ref().is_some_and(|t| {
                t.state == crate::store::TaskState::Running && t.run_seq == task.run_seq
            });
            let kept_now = engine.git.rev(&home_git, &branch_ref).await.ok().flatten();
            if !still || kept_now != kept_before {
                continue;
            }
            // Checked like the final push, against the base commit the run started from (a ref
            // in the git directory is the agent's to move): a checkpoint must not carry what
            // the end would not.
            let Some(base_sha) = task.base_sha.as_deref() else {
                continue;
            };
            let guard = engine.push_guard(&task.repo, base_sha);
            let push = crate::run::publish::Push {
                dir: &home_git,
                url,
                token: &token,
                branch: &task.branch,
                head: &commit,
                guard: &guard,
            };
            let effects = [Effect::CheckRun { task: task.pk }];
            match crate::run::publish::push_branch(engine, task.pk, push, &effects).await {
                Ok(()) => {}
                Err(e) if e.is::<crate::git::ops::HeldBack>() => {
                    engine
                        .record(
                            task.pk,
                            task.run_seq,
                            crate::store::EventKind::Checkpoint,
                            &format!("checkpoint {e:#}"),
                        )
                        .await;
                }
                Err(e) => {
                    tracing::warn!(task = %task.task_id, "pushing the checkpoint failed: {e:#}")
                }
            }
        }
    }
    Ok(made)
}

/// Brings stale branches up to date with their base (rebase or merge, per
/// `hygiene.merge_strategy`) and runs the gates again. In App mode: the branches of open
/// autodev pull requests, pushed with a lease so a new check run lands on the new head, and a
/// conflict named once on the pull request. In local mode: passed tasks' branches, moved in
/// the repository. A conflict leaves the branch as it was. Returns how many branches moved.
/// Whether `task` is still as the chore listed it: ended, in the same run.
async fn still_as_listed(engine: &Engine, task: &crate::store::TaskRow) -> anyhow::Result<bool> {
    Ok(crate::store::get_task(&engine.pool, task.pk)
        .await?
        .is_some_and(|t| t.state.is_terminal() && t.run_seq == task.run_seq))
}

pub async fn rebase(engine: &Arc<Engine>) -> anyhow::Result<usize> {
    let mut moved = 0;
    let mut tasks = match &engine.github() {
        Some(gh) if gh.is_app() => crate::store::tasks_with_open_pr(&engine.pool).await?,
        _ => Vec::new(),
    };
    tasks.extend(
        crate::store::list_tasks(
            &engine.pool,
            Some(crate::store::TaskState::Passed),
            None,
            1000,
        )
        .await?
        .into_iter()
        // A local branch whose pull request was merged or closed is left alone.
        .filter(|t| t.repo_name().is_local() && t.pr_state != Some(crate::store::PrState::Closed)),
    );
    for task in tasks {
        let result = match (&engine.github(), task.installation_id) {
            (Some(gh), Some(_)) => rebase_pushed(engine, gh, &task).await,
            _ => rebase_local(engine, &task).await,
        };
        // A local branch with a pull request on `origin` is pushed there again.
        let result = match result {
            Ok(true) if task.installation_id.is_none() && task.pr_number.is_some() => {
                outbox::republish_local(engine, task.pk)
                    .await
                    .map(|()| true)
            }
            other => other,
        };
        match result {
            Ok(true) => moved += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(task = %task.task_id, "bringing the branch up to date failed: {e:#}")
            }
        }
    }
    Ok(moved)
}

/// What catching up did.
enum CatchUp {
    Conflict(Vec<String>),
    /// The new head, and the gates that failed on it.
    Done {
        new: String,
        failures: Vec<String>,
    },
}

async fn rebase_pushed(
    engine: &Arc<Engine>,
    gh: &crate::github::client::GithubClient,
    task: &crate::store::TaskRow,
) -> anyhow::Result<bool> {
    let (Some(installation), Some(url), Some(head), Some(base), Some(pr)) = (
        task.installation_id,
        task.clone_url.as_deref(),
        task.pushed_sha.clone(),
        task.base_branch.clone(),
        task.pr_number,
    ) else {
        return Ok(false);
    };
    let git = &engine.git;
    let token = gh.installation_token(InstallationId(installation)).await?;
    let _lock = crate::proc::lock::FileLock::acquire(engine.repo_lock(&task.repo_name())).await?;
    // Again under the lock: a retry may have taken the task since it was listed.
    if !still_as_listed(engine, task).await? {
        return Ok(false);
    }
    let mirror = engine.mirror_path(&task.repo_name());
    let base_sha = git.fetch_mirror(&mirror, url, &token, &base).await?;
    if git.is_ancestor(&mirror, &base_sha, &head).await? {
        return Ok(false);
    }
    let (new, failures) = match catch_up(engine, task, &mirror, &head, &base, &base_sha).await? {
        CatchUp::Conflict(files) => {
            let list = files
                .iter()
                .map(|f| format!("- `{f}`"))
                .collect::<Vec<_>>()
                .join("\n");
            let body = format!(
                "autodev could not bring `{}` up to date with `{base}`: these files conflict. The branch is left as it was.\n\n{list}",
                task.branch
            );
            reply_on_pr(engine, task, pr, &format!("conflict-{base_sha}"), body).await?;
            return Ok(false);
        }
        CatchUp::Done { new, failures } => (new, failures),
    };
    let guard = engine.push_guard(&task.repo, &base_sha);
    let push = crate::run::publish::Push {
        dir: &mirror,
        url,
        token: &token,
        branch: &task.branch,
        head: &new,
        guard: &guard,
    };
    if let Err(e) = crate::run::publish::push_branch(engine, task.pk, push, &[]).await {
        if e.is::<crate::git::ops::HeldBack>() {
            // What the base brought in is not the task's to push; the branch stays as it was.
            engine
                .record(
                    task.pk,
                    task.run_seq,
                    crate::store::EventKind::Rebase,
                    &format!("{e:#}"),
                )
                .await;
            return Ok(false);
        }
        return Err(e);
    }
    // The mirror's own branch follows, unless something else moved it.
    let _ = git.move_branch(&mirror, &task.branch, &new, &head).await;
    settle(engine, task, &base, &base_sha, &new, &failures).await?;
    crate::jobs::push_now(
        &engine.pool,
        &crate::jobs::OutboxJob::new(Effect::CheckRun { task: task.pk }),
    )
    .await?;
    crate::jobs::push_now(
        &engine.pool,
        &crate::jobs::OutboxJob::new(Effect::Status { task: task.pk }),
    )
    .await?;
    Ok(true)
}

async fn rebase_local(engine: &Arc<Engine>, task: &crate::store::TaskRow) -> anyhow::Result<bool> {
    let Some(base) = task.base_branch.clone() else {
        return Ok(false);
    };
    let git = &engine.git;
    let repo = engine.settings.repo_path.clone();
    let _lock = crate::proc::lock::FileLock::acquire(engine.repo_lock(&task.repo_name())).await?;
    // Again under the lock: a retry may have taken the task since it was listed.
    if !still_as_listed(engine, task).await? {
        return Ok(false);
    }
    let (_, base_sha) = git.resolve_base(&repo, Some(&base)).await?;
    let (_, head) = match git.resolve_base(&repo, Some(&task.branch)).await {
        Ok(found) => found,
        Err(_) => return Ok(false),
    };
    if git.is_ancestor(&repo, &base_sha, &head).await? {
        return Ok(false);
    }
    // A branch someone has checked out in their own worktree is theirs to update.
    let ours = task
        .worktree
        .as_deref()
        .map(|p| p.trim_end_matches('/').to_owned());
    if let Some(at) = git.checked_out_at(&repo, &task.branch).await?
        && Some(at.trim_end_matches('/').to_owned()) != ours
    {
        return Ok(false);
    }
    let (new, failures) = match catch_up(engine, task, &repo, &head, &base, &base_sha).await? {
        CatchUp::Conflict(_) => return Ok(false),
        CatchUp::Done { new, failures } => (new, failures),
    };
    git.move_branch(&repo, &task.branch, &new, &head).await?;
    settle(engine, task, &base, &base_sha, &new, &failures).await?;
    Ok(true)
}

/// Rebases (or merges) `head` onto `base_sha` in a throwaway worktree of `repo` and runs the
/// gates there. The task's own worktree goes first: it would keep the old head.
async fn catch_up(
    engine: &Arc<Engine>,
    task: &crate::store::TaskRow,
    repo: &std::path::Path,
    head: &str,
    base: &str,
    base_sha: &str,
) -> anyhow::Result<CatchUp> {
    use anyhow::Context;
    let git = &engine.git;
    if let Some(wt) = task.worktree.as_deref() {
        git.remove_worktree(repo, std::path::Path::new(wt)).await?;
        crate::store::clear_worktree(&engine.pool, task.pk).await?;
    }
    let tmp = engine
        .settings
        .data_dir
        .join("tmp")
        .join(format!("rebase-{}", task.pk));
    // The rebase (or merge) in a worktree of the repository itself: nothing of the task's
    // code runs there.
    git.add_detached(repo, &tmp, head).await?;
    let merge = engine.settings.file.hygiene.merge_strategy == crate::config::MergeStrategy::Merge;
    let message = format!("chore({}): merge {base} into {}", task.role, task.branch);
    let caught_up = git.catch_up(&tmp, base_sha, merge, &message).await;
    git.remove_worktree(repo, &tmp).await?;
    let new = match caught_up? {
        Ok(new) => new,
        Err(files) => {
            engine
                .record(
                    task.pk,
                    task.run_seq,
                    crate::store::EventKind::Rebase,
                    &format!("conflicts with {base} in {}", files.join(", ")),
                )
                .await;
            return Ok(CatchUp::Conflict(files));
        }
    };
    // The gates, which run the task's code, in a repository of their own.
    let home_git = git.common_dir(repo).await?;
    git.make_task_repo(&home_git, &tmp, &task.branch, &new, false)
        .await?;
    let outcome = async {
        let spec_value: serde_json::Value =
            serde_json::from_str(&task.spec).context("reading the stored spec")?;
        let spec = crate::core::spec::from_value(
            spec_value,
            &engine.roles,
            &crate::core::spec::Limits::absolute(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        // The gates as the base branch now has them (its `.github/autodev.yml`).
        let settings = engine
            .task_settings(
                &spec,
                crate::run::pipeline::spec_source(task),
                repo,
                base_sha,
            )
            .await
            .map_err(anyhow::Error::msg)?;
        let workdir = tmp.join(&settings.target_dir);
        std::fs::create_dir_all(&workdir)?;
        let run_homes = engine.fresh_homes(&format!("rebase-{}", task.pk))?;
        let homes = run_homes.path().to_owned();
        let env = crate::agent::providers::base_env(
            &engine.settings.env,
            &homes.join("gates"),
            &engine.settings.file.agent.env,
        );
        let path_env = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let mut gates_config = engine.settings.file.gates.clone();
        gates_config.lint = settings.gates.lint.clone();
        gates_config.typecheck = settings.gates.typecheck.clone();
        let planned = crate::run::gates::plan(
            &settings.acceptance,
            &gates_config,
            &workdir,
            &tmp,
            path_env.as_deref(),
        );
        let cancel = tokio_util::sync::CancellationToken::new();
        let no_record =
            |_: Option<i32>| -> futures::future::BoxFuture<'static, ()> { Box::pin(async {}) };
        let paths = engine.task_paths(&tmp, &home_git);
        let mut egress =
            crate::run::workspace::RunEgress::start(engine, &homes, task.pk, task.run_seq)?;
        let round = task.rounds + 1;
        let at = crate::run::gates::Recorded {
            engine,
            task: task.pk,
            run_seq: task.run_seq,
            round,
        };
        let results = crate::run::gates::run_recorded(
            at,
            &planned,
            &workdir,
            &env,
            &gates_config,
            &cancel,
            &no_record,
            engine.jail(&paths, egress.gates_net()),
        )
        .await;
        egress.finish().await;
        let results = results?;
        crate::store::set_progress(&engine.pool, task.pk, round, None, None).await?;
        let failures = results
            .iter()
            .filter(|r| !r.status.is_ok())
            .map(|r| r.summary())
            .collect();
        anyhow::Ok(CatchUp::Done { new, failures })
    }
    .await;
    std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    outcome
}

/// Records the new head; a branch that no longer passes its gates fails the task.
async fn settle(
    engine: &Engine,
    task: &crate::store::TaskRow,
    base: &str,
    base_sha: &str,
    new: &str,
    failures: &[String],
) -> anyhow::Result<()> {
    if !failures.is_empty() {
        crate::store::fail_after_hygiene(
            &engine.pool,
            task.pk,
            &format!("after catching up with {base}: {}", failures.join("; ")),
        )
        .await?;
    }
    crate::store::set_head(&engine.pool, task.pk, new, base_sha).await?;
    engine
        .record(
            task.pk,
            task.run_seq,
            crate::store::EventKind::Rebase,
            &format!(
                "brought up to date with {base}: {} is now {}",
                task.branch,
                &new[..10.min(new.len())]
            ),
        )
        .await;
    Ok(())
}

async fn reply_on_pr(
    engine: &Engine,
    task: &crate::store::TaskRow,
    pr: i64,
    key: &str,
    body: String,
) -> anyhow::Result<()> {
    let (Some(installation), Some((owner, repo))) =
        (task.installation_id, task.repo.split_once('/'))
    else {
        return Ok(());
    };
    let effect = Effect::Reply {
        installation,
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        issue: pr as u64,
        key: format!("{}-{key}", task.task_id),
        body,
    };
    crate::jobs::push_now(&engine.pool, &crate::jobs::OutboxJob::new(effect))
        .await
        .map(|_| ())
}
