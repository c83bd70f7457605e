//! One task's pipeline, top to bottom: lease → worktree → (prompt → agent → gates)* → commit →
//! final state. A task that ends `failed` is a job that succeeded; only infrastructure faults
//! (the database) are job errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::core::faults::crash_point;
use crate::core::ids::TaskKey;
use crate::core::spec::{self, TaskSpec};
use crate::engine::Engine;
use crate::git::ops;
use crate::jobs::{Effect, OutboxJob, RunTask};
use crate::proc::exec;
use crate::proc::lock::FileLock;
use crate::run::publish::{Push, push_branch};
use crate::run::round::Rounds;
use crate::run::workspace::{Source, Workspace};
use crate::store::{self, LeaseAttempt, LeaseStatus, TaskRow, TaskState};

/// How often a running task renews its lease and looks for a cancel request.
const LEASE_TICK: Duration = Duration::from_secs(1);

/// Why a run stops before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Someone asked (from any process).
    Cancelled,
    /// Another worker holds the task now: this run must write nothing more.
    LeaseLost,
}

/// A run's stop signal: the token every wait of the run watches, and why it fired. A lost
/// lease outranks a cancel: whatever was asked, the run no longer owns the task.
#[derive(Clone, Default)]
pub(super) struct StopSignal {
    token: CancellationToken,
    why: Arc<std::sync::Mutex<Option<Stop>>>,
}

impl StopSignal {
    fn stop(&self, why: Stop) {
        {
            let mut current = self.why.lock().expect("lock");
            if *current != Some(Stop::LeaseLost) {
                *current = Some(why);
            }
        }
        self.token.cancel();
    }

    fn why(&self) -> Option<Stop> {
        *self.why.lock().expect("lock")
    }

    fn lease_lost(&self) -> bool {
        self.why() == Some(Stop::LeaseLost)
    }
}

/// Runs a queue job: waits for the task's lease (another worker may still hold it), then runs
/// the task. A stale job (the task ended, or a retry superseded it) does nothing.
pub async fn run_job(engine: &Arc<Engine>, job: RunTask) -> anyhow::Result<()> {
    let ttl = lease_ttl(engine);
    // A run of the task that this process still runs (one a retry superseded) stops first: its
    // lease is lost at its next renewal. Two runs never share a worktree, unless the old one
    // ignores its stop for longer than this.
    let wait_until = Instant::now() + ttl.max(Duration::from_secs(30));
    while engine.is_running(job.task) && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let row = loop {
        match store::acquire_lease(&engine.pool, job.task, job.run, &engine.owner, ttl).await? {
            LeaseAttempt::Acquired(row) => break row,
            LeaseAttempt::NothingToRun(_) | LeaseAttempt::Missing => return Ok(()),
            LeaseAttempt::Orphaned(row) => return requeue_orphan(engine, &row).await,
            LeaseAttempt::HeldElsewhere { until_ms, .. } => {
                let wait = (until_ms - store::now_ms()).clamp(100, 1000) as u64;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    };
    run_leased(engine, *row).await.map(|_| ())
}

/// Ends a run whose worker died mid-run by queuing the task again, as a run with a number of its
/// own: what the dead run left running is stopped by the new run before it starts.
async fn requeue_orphan(engine: &Arc<Engine>, row: &TaskRow) -> anyhow::Result<()> {
    if let Some(job) = engine.retry(row.pk).await? {
        engine
            .record(
                row.pk,
                row.run_seq,
                store::EventKind::Recovered,
                &format!(
                    "run {} stopped with its worker before it ended; run {} is queued as job {job}",
                    row.run_seq,
                    row.run_seq + 1
                ),
            )
            .await;
    }
    Ok(())
}

/// How often a run's output tail is written while it changes.
const OUTPUT_EVERY: Duration = Duration::from_secs(1);

/// Writes `tap`'s output to the task's row whenever it changed, every [`OUTPUT_EVERY`], and a
/// last time when `done`. Secrets are blotted out first (an agent sees its provider's key, and
/// may be talked into printing it), pieces of one where the kept tail cuts through it
/// included. A failed write is only logged: watching is not worth a run.
async fn copy_output(
    engine: Arc<Engine>,
    key: TaskKey,
    run_seq: i64,
    tap: exec::Tap,
    done: CancellationToken,
) {
    let secrets = engine.secrets();
    let mut written = 0;
    loop {
        let last = tokio::select! {
            _ = tokio::time::sleep(OUTPUT_EVERY) => false,
            _ = done.cancelled() => true,
        };
        let (writes, text) = tap.read();
        if writes != written {
            let text = secrets.blot_tail(&text);
            match store::set_output(&engine.pool, key, run_seq, &text).await {
                Ok(()) => written = writes,
                Err(e) => tracing::debug!("writing the output tail: {e:#}"),
            }
        }
        if last {
            return;
        }
    }
}

fn lease_ttl(engine: &Engine) -> Duration {
    engine
        .settings
        .file
        .workers
        .orphan_after()
        .max(Duration::from_secs(5))
}

/// Runs a task whose lease this process holds to a final state, and returns it.
pub async fn run_leased(engine: &Arc<Engine>, row: TaskRow) -> anyhow::Result<TaskState> {
    let span =
        tracing::info_span!("task", task_id = %row.task_id, repo = %row.repo, run = row.run_seq);
    run_leased_inner(engine, row).instrument(span).await
}

async fn run_leased_inner(engine: &Arc<Engine>, row: TaskRow) -> anyhow::Result<TaskState> {
    let key = row.pk;
    let run_seq = row.run_seq;
    let leftover = engine.stop_leftovers(&row).await;
    if leftover {
        engine
            .record(
                key,
                run_seq,
                store::EventKind::Recovered,
                "stopped agent processes left by an earlier run",
            )
            .await;
    }
    let stop = StopSignal::default();
    let cancel = stop.token.clone();
    // Dropped on every way out, a panic included: the lease stops being renewed (so the task
    // can be finished, or taken over) and the run is no longer tracked.
    let running = RunningGuard {
        engine: engine.clone(),
        key,
        keeper: tokio::spawn(keep_lease(engine.clone(), key, run_seq, stop.clone())),
    };
    engine.track_running(key, cancel.clone());
    let started = Instant::now();

    // What is blotted out of what this run shows: the agents' login files may have been
    // refreshed since the last run.
    engine.set_secrets(crate::agent::providers::login_secrets(
        &engine.settings.file.providers,
        &engine.settings.env,
    ));
    // What the agent and the gates print, copied to the task's row every second for pages
    // in any process to show.
    let tap = exec::Tap::default();
    let watched = CancellationToken::new();
    let copier = tokio::spawn(copy_output(
        engine.clone(),
        key,
        run_seq,
        tap.clone(),
        watched.clone(),
    ));
    let result = exec::with_tap(tap, pipeline(engine, &row, &cancel, &stop)).await;
    watched.cancel();
    let _ = copier.await;

    drop(running);
    if stop.lease_lost() {
        tracing::warn!("lease lost; another worker owns the task now");
        return Ok(TaskState::Running);
    }
    let mut outcome = result.unwrap_or_else(|e| {
        engine.note_disk_full(&e);
        Outcome {
            state: TaskState::Error,
            error: Some(format!("{e:#}")),
            head: None,
        }
    });
    // The words of a full disk, and the disk full in fact (the words may be the agent's).
    let disk_full = outcome.error.as_deref().is_some_and(store::says_disk_full)
        && engine.disk.release_if_full();
    if let (true, Some(why)) = (disk_full, outcome.error.as_mut()) {
        *why = format!("autodev's data directory is full: {why}");
    }
    let ended = match end_run(engine, &row, &outcome).await {
        Err(e) if engine.note_disk_full(&e) => end_run(engine, &row, &outcome).await,
        ended => ended,
    };
    if !ended? {
        tracing::warn!("lease lost before the result could be written");
        return Ok(TaskState::Running);
    }
    // A disk full when the run ends (whatever filled it: this task's agent, most likely) gets
    // the run's worktree back at once; its branch keeps the work.
    if (disk_full || engine.disk.release_if_full())
        && let Err(e) = engine
            .remove_ended_worktree(row.pk, ": the disk is full")
            .await
    {
        tracing::warn!("removing the worktree of a task that ended on a full disk: {e:#}");
    }
    engine
        .metrics
        .task_duration_seconds
        .with_label_values(&[&row.role, outcome.state.as_str()])
        .observe(started.elapsed().as_secs_f64());
    Ok(outcome.state)
}

/// Writes a run's final state and, in the same transaction, what follows it: the timeline
/// event and, on GitHub, the status comment, the check run's conclusion and, for a passed
/// task, its pull request (jobs of the outbox). `false` when the run's lease was lost first.
async fn end_run(engine: &Engine, row: &TaskRow, outcome: &Outcome) -> anyhow::Result<bool> {
    let key = row.pk;
    let mut tx = store::begin_write(&engine.pool).await?;
    let interrupted = if outcome.state == TaskState::Queued {
        if let Some(next) = store::interrupt(
            &mut *tx,
            key,
            row.run_seq,
            &engine.owner,
            outcome.head.as_deref(),
        )
        .await?
        {
            return requeue_interrupted(engine, row, tx, next)
                .await
                .map(|()| true);
        }
        // Not queued again: someone asked for a cancel meanwhile (or the lease is gone).
        Some(Outcome::ended(TaskState::Cancelled, "cancelled on request"))
    } else {
        None
    };
    let outcome = interrupted.as_ref().unwrap_or(outcome);
    let state = outcome.state;
    // An agent's failure says what it printed last, which may be its key.
    let error = outcome.error.as_deref().map(|e| engine.secrets().blot(e));
    let message = match &error {
        Some(e) => format!("{state}: {e}"),
        None => state.to_string(),
    };
    let finished = store::finish(
        &mut *tx,
        key,
        row.run_seq,
        &engine.owner,
        state,
        error.as_deref(),
        outcome.head.as_deref(),
    )
    .await?;
    if !finished {
        return Ok(false);
    }
    engine
        .record_in(&mut tx, key, row.run_seq, state.into(), &message)
        .await?;
    if let Some(gh) = &engine.github()
        && let Some(t) = store::get_task(&mut *tx, key).await?
    {
        let mut effects = Vec::new();
        if t.pushed_sha.is_some() {
            effects.push(Effect::CheckRun { task: key });
        }
        if state == TaskState::Passed && pr_on_pass(engine, gh, &t) {
            effects.push(Effect::OpenPr { task: key });
        }
        for effect in effects {
            crate::jobs::push(&mut tx, &OutboxJob::new(effect), Duration::ZERO).await?;
        }
    }
    tx.commit().await.context("writing the run's end")?;
    engine.wakeups.wake::<OutboxJob>();
    crash_point("final-state-written");
    engine.announce(key, row.run_seq, state.into(), &message);
    engine
        .metrics
        .tasks_total
        .with_label_values(&[&row.role, state.as_str()])
        .inc();
    Ok(true)
}

/// Queues run `next` of a task whose run a shutdown interrupted, in the transaction that
/// released the run (`store::interrupt`), and says so on the timeline.
async fn requeue_interrupted(
    engine: &Engine,
    row: &TaskRow,
    mut tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    next: i64,
) -> anyhow::Result<()> {
    let key = row.pk;
    let job = RunTask {
        task: key,
        run: next,
    };
    let job_id = crate::jobs::push(&mut tx, &job, Duration::ZERO).await?;
    store::set_job_id(&mut *tx, key, &job_id).await?;
    let message = format!(
        "interrupted by shutdown: the work so far is kept on {}; run {next} is queued as job {job_id}",
        row.branch
    );
    engine
        .record_in(
            &mut tx,
            key,
            row.run_seq,
            store::EventKind::Interrupted,
            &message,
        )
        .await?;
    tx.commit().await.context("requeueing an interrupted run")?;
    engine.announce(key, row.run_seq, store::EventKind::Interrupted, &message);
    Ok(())
}

/// Whether a task that just passed gets its pull request now: App tasks once pushed, when
/// `hygiene.pr_on_pass` says so; local ones (which push their branch when the pull request is
/// opened) likewise, and always when their pull request is already open, so that the new work
/// reaches it.
fn pr_on_pass(engine: &Engine, gh: &crate::github::client::GithubClient, t: &TaskRow) -> bool {
    let local = t.repo_name().is_local() && gh.personal_token().is_some();
    let wanted = engine.settings.file.hygiene.pr_on_pass || (local && t.pr_number.is_some());
    wanted && (t.pushed_sha.is_some() || local)
}

/// Stops renewing a run's lease and forgets the run, however the run ends.
struct RunningGuard {
    engine: Arc<Engine>,
    key: crate::core::ids::TaskKey,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.keeper.abort();
        self.engine.untrack_running(self.key);
    }
}

/// Ends a run whose job panicked: the task is finished as `error` with the panic's message
/// (if this process still holds its lease), and whatever the run started is stopped.
pub async fn finish_after_panic(engine: &Arc<Engine>, job: RunTask, message: &str) {
    let why = format!("internal error: autodev failed while running the task ({message})");
    tracing::error!(task = %job.task, run = job.run, "{why}");
    let Ok(Some(row)) = store::get_task(&engine.pool, job.task).await else {
        return;
    };
    if row.run_seq != job.run || row.lease_owner.as_deref() != Some(engine.owner.as_str()) {
        return;
    }
    if let Some(marker) = row.agent_marker.as_deref() {
        exec::kill_marked(marker).await;
    }
    let outcome = Outcome::ended(TaskState::Error, why);
    if let Err(e) = end_run(engine, &row, &outcome).await {
        tracing::error!("finishing task {} after a panic: {e:#}", job.task);
    }
}

/// Renews the lease every tick; cancels the run when a cancel is requested (from any process)
/// or the lease is lost.
async fn keep_lease(
    engine: Arc<Engine>,
    key: crate::core::ids::TaskKey,
    run_seq: i64,
    stop: StopSignal,
) {
    let ttl = lease_ttl(&engine);
    loop {
        tokio::time::sleep(LEASE_TICK).await;
        match store::renew_lease(&engine.pool, key, run_seq, &engine.owner, ttl).await {
            Ok(LeaseStatus::Held {
                cancel_requested: true,
            }) => stop.stop(Stop::Cancelled),
            Ok(LeaseStatus::Held { .. }) => {}
            Ok(LeaseStatus::Lost) => {
                stop.stop(Stop::LeaseLost);
                return;
            }
            Err(e) => tracing::warn!("renewing lease: {e:#}"),
        }
    }
}

/// How a run ended: its final state, why (unless it passed), and the commit its branch ended
/// on.
pub(super) struct Outcome {
    pub state: TaskState,
    pub error: Option<String>,
    pub head: Option<String>,
}

impl Outcome {
    pub fn passed() -> Self {
        Self {
            state: TaskState::Passed,
            error: None,
            head: None,
        }
    }

    pub fn ended(state: TaskState, error: impl Into<String>) -> Self {
        Self {
            state,
            error: Some(error.into()),
            head: None,
        }
    }
}

/// Why the steps of a run stop before their end: an outcome for the task, or a fault of
/// autodev's own (the database), which fails the job.
pub(super) enum Ended {
    Early(Outcome),
    Fault(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Ended {
    fn from(e: E) -> Self {
        Ended::Fault(e.into())
    }
}

/// Turns a step's error into the run's end, in `state`, with `what` before the error's words.
pub(super) trait EndAs<T> {
    fn end_as(self, state: TaskState, what: &str) -> Result<T, Ended>;
}

impl<T, E: std::fmt::Display> EndAs<T> for Result<T, E> {
    fn end_as(self, state: TaskState, what: &str) -> Result<T, Ended> {
        self.map_err(|e| {
            let why = match what {
                "" => format!("{e:#}"),
                what => format!("{what}: {e:#}"),
            };
            Ended::Early(Outcome::ended(state, why))
        })
    }
}

/// Everything a run needs, resolved once.
pub(super) struct Run<'a> {
    pub engine: &'a Arc<Engine>,
    pub row: &'a TaskRow,
    pub spec: TaskSpec,
    pub role: crate::core::roles::Role,
    /// Where the code comes from.
    pub source: Source,
    /// What the run uses: the spec within what the server and the repository allow.
    pub settings: crate::core::trust::Resolved,
    pub deadline: Instant,
    pub cancel: &'a CancellationToken,
}

impl Run<'_> {
    pub async fn note(&self, kind: store::EventKind, message: &str) {
        self.engine
            .record(self.row.pk, self.row.run_seq, kind, message)
            .await;
    }

    pub fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn budget(&self) -> Duration {
        self.settings.timeout
    }
}

/// Whose spec a task runs: an issue's (held to `allowed_overrides`), or the operator's.
pub fn spec_source(row: &TaskRow) -> crate::core::trust::SpecSource {
    if row.issue_number.is_some() {
        crate::core::trust::SpecSource::Issue
    } else {
        crate::core::trust::SpecSource::Operator
    }
}

/// `start + budget`, or as far ahead as the clock goes.
fn deadline_after(start: Instant, budget: Duration) -> Instant {
    start
        .checked_add(budget)
        .or_else(|| start.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(start)
}

/// The steps of a run: prepare, play the rounds, finalize. An `Outcome` comes back however the
/// run ends; an error only for a fault of autodev's own (the database).
async fn pipeline(
    engine: &Arc<Engine>,
    row: &TaskRow,
    cancel: &CancellationToken,
    stop: &StopSignal,
) -> anyhow::Result<Outcome> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("worker::pipeline");
    let steps = async {
        let run = Run::prepare(engine, row, cancel).await?;
        let ws = Workspace::prepare(&run).await?;
        let verdict = Rounds {
            run: &run,
            ws: &ws,
            stop,
        }
        .play_all()
        .await?;
        // A run that lost its lease leaves the worktree to the worker that has the task now.
        if stop.lease_lost() {
            return Ok(Outcome::ended(
                TaskState::Cancelled,
                "stopped: another worker took the task over",
            ));
        }
        finalize(&run, ws, verdict).await
    };
    match steps.await {
        Ok(outcome) | Err(Ended::Early(outcome)) => Ok(outcome),
        Err(Ended::Fault(e)) => Err(e),
    }
}

impl<'a> Run<'a> {
    /// Reads the stored spec, resolves where the code comes from and settles, from the base
    /// branch, what the run may use: all before the agent touches anything.
    async fn prepare(
        engine: &'a Arc<Engine>,
        row: &'a TaskRow,
        cancel: &'a CancellationToken,
    ) -> Result<Self, Ended> {
        let started = Instant::now();
        let spec_value: serde_json::Value =
            serde_json::from_str(&row.spec).context("reading the stored spec")?;
        let spec = spec::from_value(spec_value, &engine.roles, &spec::Limits::absolute())
            .end_as(TaskState::Error, "stored spec no longer valid")?;
        let role = engine.roles.get(&spec.role).cloned().ok_or_else(|| {
            Ended::Early(Outcome::ended(
                TaskState::Error,
                format!("role `{}` is no longer defined", spec.role),
            ))
        })?;
        // In local mode the repository itself, in App mode a mirror fetched with the
        // installation's token.
        let source = Source::resolve(engine, row, &spec)
            .await
            .end_as(TaskState::Error, "")?;
        let settings = engine
            .task_settings(&spec, spec_source(row), &source.repo, &source.base_sha)
            .await
            .end_as(TaskState::Error, "")?;
        let run = Run {
            engine,
            row,
            deadline: deadline_after(started, settings.timeout),
            settings,
            spec,
            role,
            source,
            cancel,
        };
        for note in &run.settings.notes {
            run.note(store::EventKind::Settings, note).await;
        }
        Ok(run)
    }
}

/// Commits whatever the agent left, so a retry continues from it and nothing is lost, and in
/// App mode pushes the branch; the verdict, with the head it ended on.
async fn finalize(run: &Run<'_>, mut ws: Workspace, verdict: Outcome) -> Result<Outcome, Ended> {
    let (engine, row) = (run.engine, run.row);
    let git = &engine.git;
    ws.egress.finish().await;
    let Workspace {
        reading,
        worktree,
        home_git,
        ..
    } = &ws;
    // Its branch and files, read into the repository the branch lives in.
    let passed = verdict.state == TaskState::Passed;
    let message = ops::commit_message(
        &run.spec.role,
        &run.spec.title,
        run.spec.id.as_str(),
        passed,
    );
    let snap = ws.snapshot(engine).await?;
    if let Some(why) = &snap.unread {
        run.note(
            store::EventKind::Commit,
            &format!(
                "the agent's branch was not read from its repository ({why}); its files are kept on top of {}",
                short(&snap.tip)
            ),
        )
        .await;
    }
    let head = match git.commit_snapshot(home_git, &snap, &message).await? {
        Some(sha) => {
            run.note(
                store::EventKind::Commit,
                &format!("committed {} on {}", short(&sha), worktree.branch),
            )
            .await;
            sha
        }
        None => snap.tip.clone(),
    };
    crash_point("commit-made");
    {
        let _lock = FileLock::acquire(engine.repo_lock(&row.repo_name())).await?;
        git.set_branch(home_git, &worktree.branch, &head).await?;
    }
    reading.finish(home_git).await;

    // In App mode, the branch goes to GitHub.
    let source = &run.source;
    if source.token.is_some()
        && head != source.base_sha
        && let Some(refused) = push(run, home_git, &worktree.branch, &head).await?
    {
        return Ok(Outcome {
            head: Some(head),
            ..refused
        });
    }
    Ok(Outcome {
        head: Some(head),
        ..verdict
    })
}

/// Pushes the task branch, unless it touches `.github/workflows/` and the repository does not
/// allow that. `Some(outcome)` when the push did not happen.
async fn push(
    run: &Run<'_>,
    home_git: &std::path::Path,
    branch: &str,
    head: &str,
) -> anyhow::Result<Option<Outcome>> {
    let engine = run.engine;
    let guard = engine.push_guard(&run.row.repo, &run.source.base_sha);
    let _lock = FileLock::acquire(engine.repo_lock(&run.row.repo_name())).await?;
    // A fresh token: the one from the start of the task may be near its end by now.
    let pushed = match (
        &engine.github(),
        run.row.installation_id,
        run.row.clone_url.as_deref(),
    ) {
        (Some(gh), Some(installation), Some(url)) => {
            let token = gh
                .installation_token(crate::github::event::InstallationId(installation))
                .await?;
            let push = Push {
                dir: home_git,
                url,
                token: &token,
                branch,
                head,
                guard: &guard,
            };
            push_branch(engine, run.row.pk, push, &[]).await
        }
        _ => Err(anyhow::anyhow!(
            "this task has no GitHub installation or clone URL to push to"
        )),
    };
    if let Err(e) = pushed {
        let state = if e.is::<ops::HeldBack>() {
            TaskState::Failed
        } else {
            TaskState::Error
        };
        return Ok(Some(Outcome::ended(state, format!("{e:#}"))));
    }
    run.note(
        store::EventKind::Push,
        &format!("pushed {} to {branch}", short(head)),
    )
    .await;
    Ok(None)
}

/// A cancel request or a spent budget ends the run between steps.
pub(super) fn interrupted(run: &Run<'_>, stop: &StopSignal) -> Option<Outcome> {
    if run.cancel.is_cancelled() {
        return Some(match stop.why() {
            Some(Stop::LeaseLost) => Outcome::ended(
                TaskState::Cancelled,
                "stopped: another worker took the task over",
            ),
            // The process is shutting down: the run ends with the task queued again.
            None if run.engine.interrupting() => {
                Outcome::ended(TaskState::Queued, "interrupted by shutdown")
            }
            Some(Stop::Cancelled) | None => {
                Outcome::ended(TaskState::Cancelled, "cancelled on request")
            }
        });
    }
    if run.time_left().is_zero() {
        return Some(Outcome::ended(
            TaskState::Failed,
            format!(
                "timed out: the task's {}s budget ran out",
                run.budget().as_secs()
            ),
        ));
    }
    None
}

pub(super) fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}
