//! One task's pipeline, top to bottom: lease → worktree → (prompt → agent → gates)* → commit →
//! final state. A task that ends `failed` is a job that succeeded; only infrastructure faults
//! (the database) are job errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::providers::{self, AgentRequest, AttemptStatus};
use crate::core::spec::{self, TaskSpec};
use crate::engine::Engine;
use crate::git::ops;
use crate::jobs::RunTask;
use crate::proc::exec;
use crate::proc::lock::FileLock;
use crate::run::gates::{self, GateResult};
use crate::run::prompt::{self, PromptInput};
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
struct StopSignal {
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
    let row = loop {
        match store::acquire_lease(&engine.pool, job.task, job.run, &engine.owner, ttl).await? {
            LeaseAttempt::Acquired(row) => break row,
            LeaseAttempt::NothingToRun(_) | LeaseAttempt::Missing => return Ok(()),
            LeaseAttempt::HeldElsewhere { until_ms, .. } => {
                let wait = (until_ms - store::now_ms()).clamp(100, 1000) as u64;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    };
    run_leased(engine, *row).await.map(|_| ())
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
                crate::store::EventKind::Recovered,
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
        keeper: tokio::spawn(keep_lease(engine.clone(), key, stop.clone())),
    };
    engine.track_running(key, cancel.clone());
    let started = Instant::now();

    let result = pipeline(engine, &row, &cancel, &stop).await;

    drop(running);
    if stop.lease_lost() {
        tracing::warn!("lease lost; another worker owns the task now");
        return Ok(TaskState::Running);
    }
    let outcome = result.unwrap_or_else(|e| Outcome {
        state: TaskState::Error,
        error: Some(format!("{e:#}")),
        head: None,
    });
    let finished = store::finish(
        &engine.pool,
        key,
        &engine.owner,
        outcome.state,
        outcome.error.as_deref(),
        outcome.head.as_deref(),
    )
    .await?;
    if !finished {
        tracing::warn!("lease lost before the result could be written");
        return Ok(TaskState::Running);
    }
    engine
        .metrics
        .task_duration_seconds
        .with_label_values(&[&row.role])
        .observe(started.elapsed().as_secs_f64());
    announce_end(engine, &row, outcome.state, outcome.error.as_deref()).await;
    Ok(outcome.state)
}

/// What follows a run's final state, once written: the metric, the timeline, and on GitHub
/// the check run's conclusion and, for a passed task, its pull request.
async fn announce_end(engine: &Engine, row: &TaskRow, state: TaskState, error: Option<&str>) {
    let key = row.pk;
    engine
        .metrics
        .tasks_total
        .with_label_values(&[&row.role, state.as_str()])
        .inc();
    let message = match error {
        Some(e) => format!("{state}: {e}"),
        None => state.to_string(),
    };
    engine
        .record(key, row.run_seq, state.into(), &message)
        .await;
    if let Some(gh) = &engine.github
        && let Ok(Some(t)) = store::get_task(&engine.pool, key).await
    {
        use crate::jobs::Effect;
        let mut effects = Vec::new();
        if t.pushed_sha.is_some() {
            effects.push(Effect::CheckRun { task: key });
        }
        if state == TaskState::Passed && pr_on_pass(engine, gh, &t) {
            effects.push(Effect::OpenPr { task: key });
        }
        for effect in effects {
            if let Err(e) =
                crate::jobs::push_now(&engine.pool, &crate::jobs::OutboxJob::new(effect)).await
            {
                tracing::warn!("queueing a GitHub update: {e:#}");
            }
        }
    }
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
    match store::finish(
        &engine.pool,
        job.task,
        &engine.owner,
        TaskState::Error,
        Some(&why),
        None,
    )
    .await
    {
        Ok(true) => announce_end(engine, &row, TaskState::Error, Some(&why)).await,
        Ok(false) => {}
        Err(e) => tracing::error!("finishing task {} after a panic: {e:#}", job.task),
    }
}

/// Renews the lease every tick; cancels the run when a cancel is requested (from any process)
/// or the lease is lost.
async fn keep_lease(engine: Arc<Engine>, key: crate::core::ids::TaskKey, stop: StopSignal) {
    let ttl = lease_ttl(&engine);
    loop {
        tokio::time::sleep(LEASE_TICK).await;
        match store::renew_lease(&engine.pool, key, &engine.owner, ttl).await {
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

struct Outcome {
    state: TaskState,
    error: Option<String>,
    head: Option<String>,
}

impl Outcome {
    fn ended(state: TaskState, error: impl Into<String>) -> Self {
        Self {
            state,
            error: Some(error.into()),
            head: None,
        }
    }
}

/// Everything a run needs, resolved once.
struct Run<'a> {
    engine: &'a Arc<Engine>,
    row: &'a TaskRow,
    spec: TaskSpec,
    /// What the run uses: the spec within what the server and the repository allow.
    settings: crate::core::trust::Resolved,
    deadline: Instant,
    cancel: &'a CancellationToken,
}

impl Run<'_> {
    async fn note(&self, kind: store::EventKind, message: &str) {
        self.engine
            .record(self.row.pk, self.row.run_seq, kind, message)
            .await;
    }

    fn time_left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn budget(&self) -> Duration {
        self.settings.timeout
    }
}

/// Egress for one run, in the sandbox: the agent reaches its providers' hosts
/// (`agent.egress`), the gates only `gates.egress` (no network at all when it is empty); each
/// host refused goes on the task's timeline, once.
pub struct RunEgress {
    agent: Option<crate::proc::egress::Proxy>,
    gates: Option<crate::proc::egress::Proxy>,
    refusals: Option<tokio::task::JoinHandle<()>>,
}

impl RunEgress {
    pub fn start(
        engine: &Arc<Engine>,
        homes: &std::path::Path,
        key: crate::core::ids::TaskKey,
        run_seq: i64,
    ) -> anyhow::Result<Self> {
        if engine.sandbox.is_none() {
            return Ok(Self {
                agent: None,
                gates: None,
                refusals: None,
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = |file: &str, who, allowed| {
            crate::proc::egress::Proxy::start(&homes.join(file), who, allowed, tx.clone())
                .with_context(|| format!("starting the {who} egress proxy"))
        };
        let agent = Some(start("egress-agent.sock", "agent", engine.agent_egress())?);
        let gates_list = engine.settings.file.gates.egress.clone();
        let gates = match gates_list.is_empty() {
            true => None,
            false => Some(start("egress-gates.sock", "gates", gates_list)?),
        };
        drop(tx);
        let engine = engine.clone();
        let refusals = tokio::spawn(async move {
            // Each host once, and not more than a timeline can hold.
            const MAX_REPORTED: usize = 20;
            let mut seen = std::collections::HashSet::new();
            while let Some(refusal) = rx.recv().await {
                if seen.len() > MAX_REPORTED || !seen.insert(refusal.clone()) {
                    continue;
                }
                let (who, host) = refusal;
                let message = if seen.len() > MAX_REPORTED {
                    format!(
                        "more refused connections; only the first {MAX_REPORTED} hosts are listed"
                    )
                } else {
                    format!("refused the {who}'s connection to {host}")
                };
                engine
                    .record(key, run_seq, crate::store::EventKind::Egress, &message)
                    .await;
            }
        });
        Ok(Self {
            agent,
            gates,
            refusals: Some(refusals),
        })
    }

    pub fn agent_net(&self) -> crate::proc::sandbox::Net<'_> {
        match &self.agent {
            Some(p) => crate::proc::sandbox::Net::Proxy(p.socket()),
            None => crate::proc::sandbox::Net::None,
        }
    }

    pub fn gates_net(&self) -> crate::proc::sandbox::Net<'_> {
        match &self.gates {
            Some(p) => crate::proc::sandbox::Net::Proxy(p.socket()),
            None => crate::proc::sandbox::Net::None,
        }
    }

    /// Stops the proxies and waits (briefly) until every refusal is on the timeline.
    pub async fn finish(mut self) {
        self.agent.take();
        self.gates.take();
        if let Some(refusals) = self.refusals.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), refusals).await;
        }
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

async fn pipeline(
    engine: &Arc<Engine>,
    row: &TaskRow,
    cancel: &CancellationToken,
    stop: &StopSignal,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    #[cfg(feature = "failpoints")]
    fail::fail_point!("worker::pipeline");
    let spec_value: serde_json::Value =
        serde_json::from_str(&row.spec).context("reading the stored spec")?;
    let spec = match spec::from_value(spec_value, &engine.roles, &spec::Limits::absolute()) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Outcome::ended(
                TaskState::Error,
                format!("stored spec no longer valid: {e}"),
            ));
        }
    };
    let Some(role) = engine.roles.get(&spec.role).cloned() else {
        return Ok(Outcome::ended(
            TaskState::Error,
            format!("role `{}` is no longer defined", spec.role),
        ));
    };
    let settings = &engine.settings;
    let git = &engine.git;

    // 1. The worktree, on the task branch, outside the repository: in local mode from the
    // repository itself, in App mode from a mirror fetched with the installation's token.
    let source = match Source::resolve(engine, row, &spec).await {
        Ok(s) => s,
        Err(e) => return Ok(Outcome::ended(TaskState::Error, format!("{e:#}"))),
    };
    // What the run may use is settled from the base branch, before the agent touches anything.
    let resolved = match engine
        .task_settings(&spec, spec_source(row), &source.repo, &source.base_sha)
        .await
    {
        Ok(r) => r,
        Err(e) => return Ok(Outcome::ended(TaskState::Error, e)),
    };
    let run = Run {
        engine,
        row,
        deadline: deadline_after(started, resolved.timeout),
        settings: resolved,
        spec,
        cancel,
    };
    for note in &run.settings.notes {
        run.note(crate::store::EventKind::Settings, note).await;
    }
    let spec = &run.spec;
    let task = &run.settings;
    let (repo, base, base_sha) = (&source.repo, source.base.clone(), source.base_sha.clone());
    let path = engine.worktree_path(&row.repo_name(), &row.task_id);
    let worktree = {
        let _lock = FileLock::acquire(engine.repo_lock(&row.repo_name())).await?;
        match git
            .prepare_worktree(repo, &path, &row.branch, &base_sha)
            .await
        {
            Ok(w) => w,
            Err(e) => {
                return Ok(Outcome::ended(
                    TaskState::Error,
                    format!("preparing the worktree: {e:#}"),
                ));
            }
        }
    };
    store::mark_running(
        &engine.pool,
        row.pk,
        &engine.owner,
        &base,
        &base_sha,
        &path.to_string_lossy(),
    )
    .await?;
    run.note(
        crate::store::EventKind::Worktree,
        &format!(
            "worktree {} on {} ({} from {base} at {})",
            worktree.path.display(),
            worktree.branch,
            if worktree.reused_branch {
                "continuing the existing branch"
            } else {
                "new branch"
            },
            short(&base_sha)
        ),
    )
    .await;
    let workdir = worktree.path.join(&task.target_dir);
    std::fs::create_dir_all(&workdir)
        .with_context(|| format!("creating target_dir {}", workdir.display()))?;
    // The run's own HOMEs (its agents', its gates'), gone when the run ends.
    let run_homes = engine.fresh_homes(&format!("task-{}", row.pk))?;
    let homes = run_homes.path().to_owned();
    // autodev reads the agent's work with its own git, in the repository the branch lives in.
    let home_git = git.common_dir(repo).await?;
    let paths = engine.task_paths(&worktree.path, &home_git);
    let reading = Reading::new(engine, row);
    let scratch = reading
        .index
        .parent()
        .unwrap_or(&settings.data_dir)
        .to_owned();
    let confine = |job: exec::Job| engine.confine_reader(&paths, &home_git, &scratch, job);
    let egress = RunEgress::start(engine, &homes, row.pk, row.run_seq)?;
    let (agent_net, gates_net) = (egress.agent_net(), egress.gates_net());

    // 2. Rounds: agent, then gates; failures go back to the agent.
    let providers =
        match providers::chain(&settings.file.providers, task.provider_override.as_deref()) {
            Ok(p) => p,
            Err(e) => return Ok(Outcome::ended(TaskState::Error, e)),
        };
    let mut gate_env = providers::base_env(
        &settings.env,
        &homes.join("gates"),
        &settings.file.agent.env,
    );
    let path_env = gate_env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let mut gates_config = settings.file.gates.clone();
    gates_config.lint = task.gates.lint.clone();
    gates_config.typecheck = task.gates.typecheck.clone();
    let planned = gates::plan(
        &task.acceptance,
        &gates_config,
        &workdir,
        &worktree.path,
        path_env,
    );
    let marker = exec::run_marker(&engine.owner, row.pk, row.run_seq);
    if let Some((k, v)) = marker.split_once('=') {
        // Gates run code the agent wrote: they are marked like the agent for crash recovery.
        gate_env.push((k.to_owned(), v.to_owned()));
    }
    // Recorded before anything is started: a crash between starting an agent and recording
    // its group still leaves the marker to find it by, in this run or after a retry.
    store::set_agent_process(&engine.pool, row.pk, None, Some(&marker)).await?;
    let pool = engine.pool.clone();
    let key = row.pk;
    let marker_for_record = marker.clone();
    let record = move |pgid: Option<i32>| -> futures::future::BoxFuture<'static, ()> {
        let pool = pool.clone();
        let marker = marker_for_record.clone();
        Box::pin(async move {
            if let Err(e) =
                store::set_agent_process(&pool, key, pgid.map(i64::from), Some(&marker)).await
            {
                tracing::warn!("recording the agent process: {e:#}");
            }
        })
    };

    // An issue's title and text are its author's words, whoever that is.
    let untrusted = row
        .issue_number
        .map(|n| format!("the author of GitHub issue #{n} in {}", row.repo));
    let rounds = Rounds {
        run: &run,
        stop,
        role: &role,
        worktree: &worktree,
        workdir: &workdir,
        home_git: &home_git,
        reading: &reading,
        confine: &confine,
        providers: &providers,
        planned: &planned,
        gate_env: &gate_env,
        gates_config: &gates_config,
        paths: &paths,
        agent_net,
        gates_net,
        marker: &marker,
        homes: &homes,
        record: &record,
        untrusted: untrusted.as_deref(),
    };
    let mut failures: Vec<GateResult> = Vec::new();
    let mut verdict: Option<Outcome> = None;
    let mut passed = false;
    for round in 1..=task.max_rounds {
        match rounds.play(round, &failures).await? {
            Round::Passed => {
                passed = true;
                break;
            }
            Round::Retry(failed) => failures = failed,
            Round::Stop(outcome) => {
                verdict = Some(outcome);
                break;
            }
        }
    }
    if !passed && verdict.is_none() {
        let why = failures
            .iter()
            .map(|f| {
                format!(
                    "{}: {}",
                    f.summary(),
                    exec::tail_chars(f.output.trim(), 600)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        verdict = Some(Outcome::ended(
            TaskState::Failed,
            format!(
                "acceptance not met after {} round(s): {why}",
                task.max_rounds
            ),
        ));
    }

    // A run that lost its lease leaves the worktree to the worker that has the task now.
    if stop.lease_lost() {
        return Ok(Outcome::ended(
            TaskState::Cancelled,
            "stopped: another worker took the task over",
        ));
    }

    egress.finish().await;

    // 3. Commit whatever the agent left, so a retry continues from it and nothing is lost:
    // its branch and files, read into the repository the branch lives in.
    let message = ops::commit_message(&spec.role, &spec.title, spec.id.as_str(), passed);
    let snap = reading.snapshot(&home_git, &worktree, &confine).await?;
    if let Some(why) = &snap.unread {
        run.note(
            crate::store::EventKind::Commit,
            &format!(
                "the agent's branch was not read from its repository ({why}); its files are kept on top of {}",
                short(&snap.tip)
            ),
        )
        .await;
    }
    let head = match git.commit_snapshot(&home_git, &snap, &message).await? {
        Some(sha) => {
            run.note(
                crate::store::EventKind::Commit,
                &format!("committed {} on {}", short(&sha), worktree.branch),
            )
            .await;
            sha
        }
        None => snap.tip.clone(),
    };
    {
        let _lock = FileLock::acquire(engine.repo_lock(&row.repo_name())).await?;
        git.set_branch(&home_git, &worktree.branch, &head).await?;
    }
    reading.finish(&home_git).await;

    // 4. In App mode, the branch goes to GitHub.
    if source.token.is_some()
        && head != base_sha
        && let Some(o) = push(&run, &source, &home_git, &worktree.branch, &head).await?
    {
        return Ok(Outcome {
            head: Some(head),
            ..o
        });
    }
    let mut outcome = if passed {
        Outcome {
            state: TaskState::Passed,
            error: None,
            head: None,
        }
    } else {
        verdict.unwrap_or_else(|| Outcome::ended(TaskState::Failed, "acceptance not met"))
    };
    outcome.head = Some(head);
    Ok(outcome)
}

/// How autodev reads a running task's work: the agent's branch fetched into a ref of its own,
/// the files gathered with an index of autodev's (outside the sandbox), both dropped at the end.
struct Reading {
    key: crate::core::ids::TaskKey,
    fetch_ref: String,
    index: std::path::PathBuf,
    git: ops::Git,
}

impl Reading {
    fn new(engine: &Engine, row: &TaskRow) -> Self {
        Self {
            key: row.pk,
            fetch_ref: format!("refs/autodev/agent/{}", row.task_id),
            index: engine
                .settings
                .data_dir
                .join("tmp")
                .join(format!("task-{}.index", row.pk)),
            git: engine.git.clone(),
        }
    }

    async fn snapshot(
        &self,
        home_git: &std::path::Path,
        worktree: &ops::Worktree,
        confine: &ops::Confine<'_>,
    ) -> anyhow::Result<ops::Snapshot> {
        if let Some(dir) = self.index.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.git
            .snapshot(
                home_git,
                &worktree.path,
                &worktree.branch,
                Some(&self.fetch_ref),
                &self.index,
                Some(confine),
            )
            .await
    }

    async fn finish(&self, home_git: &std::path::Path) {
        if let Err(e) = self.git.delete_ref(home_git, &self.fetch_ref).await {
            tracing::debug!("deleting {}: {e:#}", self.fetch_ref);
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.index);
        // The checkpointer's (see `maintenance::checkpoint`).
        let _ = std::fs::remove_file(
            self.index
                .with_file_name(format!("checkpoint-{}.index", self.key)),
        );
    }
}

/// What one round came to.
enum Round {
    /// Every gate passed.
    Passed,
    /// These gates failed: the next round tells the agent.
    Retry(Vec<GateResult>),
    /// The run ends here, with this outcome.
    Stop(Outcome),
}

/// What every round of a run uses, prepared once.
struct Rounds<'a> {
    run: &'a Run<'a>,
    stop: &'a StopSignal,
    role: &'a crate::core::roles::Role,
    worktree: &'a ops::Worktree,
    workdir: &'a std::path::Path,
    home_git: &'a std::path::Path,
    reading: &'a Reading,
    confine: &'a ops::Confine<'a>,
    providers: &'a [providers::Provider],
    planned: &'a [gates::PlannedGate],
    gate_env: &'a [(String, String)],
    gates_config: &'a crate::config::GatesConfig,
    paths: &'a crate::proc::sandbox::TaskPaths,
    agent_net: crate::proc::sandbox::Net<'a>,
    gates_net: crate::proc::sandbox::Net<'a>,
    marker: &'a str,
    homes: &'a std::path::Path,
    record: providers::ProcessRecorder<'a>,
    untrusted: Option<&'a str>,
}

impl Rounds<'_> {
    /// Round `round`: the agent (told what failed before), then, if it changed anything, the
    /// gates.
    async fn play(&self, round: u32, failures: &[GateResult]) -> anyhow::Result<Round> {
        let run = self.run;
        let stop = self.stop;
        let engine = run.engine;
        let row = run.row;
        let spec = &run.spec;
        let task = &run.settings;
        let settings = &engine.settings;
        let cancel = run.cancel;
        if let Some(o) = interrupted(run, stop) {
            return Ok(Round::Stop(o));
        }
        let round_start = self
            .reading
            .snapshot(self.home_git, self.worktree, self.confine)
            .await?;
        let text = prompt::build(&PromptInput {
            role: self.role,
            spec,
            settings: task,
            untrusted: self.untrusted,
            branch: &self.worktree.branch,
            gates: self.planned,
            round,
            failures,
        });
        run.note(
            crate::store::EventKind::Agent,
            &format!("round {round} of {}: running the agent", task.max_rounds),
        )
        .await;
        let request = AgentRequest {
            jail: engine.jail(self.paths, self.agent_net),
            prompt: &text,
            cwd: self.workdir,
            model: task.model.as_deref(),
            time_left: run.time_left(),
            marker: self.marker,
            homes_dir: self.homes,
            git_name: &settings.file.agent.git_user_name,
            git_email: &settings.file.agent.git_user_email,
            extra_env: &settings.file.agent.env,
            output_limit: settings.file.agent.max_output_bytes,
        };
        let chain =
            providers::run_chain(self.providers, &settings.env, &request, cancel, self.record)
                .await;
        for a in &chain.attempts {
            engine
                .metrics
                .provider_requests_total
                .with_label_values(&[&a.provider, a.status.as_str()])
                .inc();
            run.note(
                crate::store::EventKind::Provider,
                &format!("{}: {} ({})", a.provider, a.status.as_str(), a.detail),
            )
            .await;
        }
        // Failed attempts that still cost something (API runs with prices) count too.
        let failed_cost = chain
            .attempts
            .iter()
            .filter_map(|a| a.cost_usd)
            .reduce(|a, b| a + b);
        let Some(report) = chain.report else {
            if failed_cost.is_some() {
                store::set_progress(&engine.pool, row.pk, i64::from(round), None, failed_cost)
                    .await?;
            }
            return Ok(Round::Stop(if let Some(o) = interrupted(run, stop) {
                o
            } else if chain.stopped_by(AttemptStatus::Timeout) {
                Outcome::ended(
                    TaskState::Failed,
                    format!(
                        "timed out: the task's {}s budget ran out while the agent worked ({})",
                        run.budget().as_secs(),
                        chain.reasons()
                    ),
                )
            } else {
                Outcome::ended(
                    TaskState::Error,
                    format!("no provider could run the task: {}", chain.reasons()),
                )
            }));
        };
        store::set_progress(
            &engine.pool,
            row.pk,
            i64::from(round),
            Some(&report.provider),
            match (report.cost_usd, failed_cost) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
        )
        .await?;
        if self
            .reading
            .snapshot(self.home_git, self.worktree, self.confine)
            .await?
            .same_as(&round_start)
        {
            return Ok(Round::Stop(Outcome::ended(
                TaskState::Failed,
                format!(
                    "the agent ({}) changed nothing in round {round}",
                    report.provider
                ),
            )));
        }
        run.note(
            crate::store::EventKind::Gates,
            &format!("round {round}: running {} gate(s)", self.planned.len()),
        )
        .await;
        let mut gate_config = self.gates_config.clone();
        gate_config.timeout = gate_config
            .timeout
            .min(run.time_left().max(Duration::from_secs(1)));
        let at = gates::Recorded {
            engine,
            task: row.pk,
            run_seq: row.run_seq,
            round: i64::from(round),
        };
        let results = gates::run_recorded(
            at,
            self.planned,
            self.workdir,
            self.gate_env,
            &gate_config,
            cancel,
            self.record,
            engine.jail(self.paths, self.gates_net),
        )
        .await?;
        if let Some(o) = interrupted(run, stop) {
            return Ok(Round::Stop(o));
        }
        let failures: Vec<GateResult> = results.into_iter().filter(|r| !r.status.is_ok()).collect();
        Ok(if failures.is_empty() {
            Round::Passed
        } else {
            Round::Retry(failures)
        })
    }
}

/// Where a task's code comes from.
struct Source {
    /// The repository (local mode) or mirror (App mode) that worktrees are added to.
    repo: std::path::PathBuf,
    base: String,
    base_sha: String,
    /// App mode: the installation token for fetch and push.
    token: Option<secrecy::SecretString>,
}

impl Source {
    async fn resolve(engine: &Engine, row: &TaskRow, spec: &TaskSpec) -> anyhow::Result<Self> {
        let settings = &engine.settings;
        if row.repo_name().is_local() {
            let repo = settings.repo_path.clone();
            ops::check_data_dir_outside(&repo, &settings.data_dir)?;
            let wanted = spec
                .options
                .base_branch
                .as_deref()
                .or(settings.dev_branch.as_deref());
            let (base, base_sha) = engine.git.resolve_base(&repo, wanted).await?;
            // Where its pull request will go, taken before the agent can touch the config.
            if engine.settings.github_token.is_some()
                && let Ok(remote) = crate::bot::origin::local_remote(engine).await
            {
                // An `origin` that moved since the last task (an agent can edit the
                // repository's config) is pointed out on the timeline.
                if row.clone_url.is_none()
                    && let Some(before) = store::last_local_remote(&engine.pool, row.pk).await?
                    && before != remote.push_url
                {
                    engine
                        .record(
                            row.pk,
                            row.run_seq,
                            crate::store::EventKind::Github,
                            &format!(
                                "`origin` now leads to {}; the task before pushed to {before}",
                                remote.push_url
                            ),
                        )
                        .await;
                }
                store::set_local_remote(&engine.pool, row.pk, &remote.push_url).await?;
            }
            return Ok(Self {
                repo,
                base,
                base_sha,
                token: None,
            });
        }
        let gh = engine
            .github
            .as_ref()
            .context("this task comes from GitHub, but GitHub App mode is not configured")?;
        let installation = row
            .installation_id
            .context("the task has no installation")?;
        let url = row
            .clone_url
            .as_deref()
            .context("the task has no clone URL")?;
        let base = spec
            .options
            .base_branch
            .clone()
            .context("the task has no base branch")?;
        let token = gh
            .installation_token(crate::github::event::InstallationId(installation))
            .await?;
        let repo = engine.mirror_path(&row.repo_name());
        let _lock = FileLock::acquire(engine.repo_lock(&row.repo_name())).await?;
        let base_sha = engine.git.fetch_mirror(&repo, url, &token, &base).await?;
        Ok(Self {
            repo,
            base,
            base_sha,
            token: Some(token),
        })
    }
}

/// Pushes the task branch, unless it touches `.github/workflows/` and the repository does not
/// allow that. `Some(outcome)` when the push did not happen.
async fn push(
    run: &Run<'_>,
    source: &Source,
    home_git: &std::path::Path,
    branch: &str,
    head: &str,
) -> anyhow::Result<Option<Outcome>> {
    let engine = run.engine;
    let guard = engine.push_guard(&run.row.repo, &source.base_sha);
    let _lock = FileLock::acquire(engine.repo_lock(&run.row.repo_name())).await?;
    // The last commit autodev pushed there (a checkpoint, an earlier run): the one the push may
    // replace.
    let lease = store::get_task(&engine.pool, run.row.pk)
        .await?
        .and_then(|t| t.pushed_sha);
    // A fresh token: the one from the start of the task may be near its end by now.
    let pushed = match (
        &engine.github,
        run.row.installation_id,
        run.row.clone_url.as_deref(),
    ) {
        (Some(gh), Some(installation), Some(url)) => {
            let token = gh
                .installation_token(crate::github::event::InstallationId(installation))
                .await?;
            engine
                .git
                .push(
                    home_git,
                    url,
                    head,
                    branch,
                    &token,
                    lease.as_deref(),
                    &guard,
                )
                .await
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
    store::set_pushed(&engine.pool, run.row.pk, head).await?;
    run.note(
        crate::store::EventKind::Push,
        &format!("pushed {} to {branch}", short(head)),
    )
    .await;
    Ok(None)
}

/// A cancel request or a spent budget ends the run between steps.
fn interrupted(run: &Run<'_>, stop: &StopSignal) -> Option<Outcome> {
    if run.cancel.is_cancelled() {
        let why = match stop.why() {
            Some(Stop::LeaseLost) => "stopped: another worker took the task over",
            Some(Stop::Cancelled) | None => "cancelled on request",
        };
        return Some(Outcome::ended(TaskState::Cancelled, why));
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

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}
