//! Every SQL statement of the domain tables (`migrations/`): typed rows, task state changes,
//! leases, the timeline and gate results. The queue's tables belong to apalis.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, Sqlite, SqlitePool};

use crate::config::DatabaseConfig;
use crate::core::ids::{RepoName, TaskKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Running,
    Passed,
    Failed,
    Error,
    Cancelled,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Passed => "passed",
            TaskState::Failed => "failed",
            TaskState::Error => "error",
            TaskState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        match self {
            TaskState::Queued | TaskState::Running => false,
            TaskState::Passed | TaskState::Failed | TaskState::Error | TaskState::Cancelled => true,
        }
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    pub pk: TaskKey,
    pub repo: String,
    pub task_id: String,
    pub role: String,
    pub title: String,
    pub spec: String,
    pub branch: String,
    pub base_branch: Option<String>,
    pub state: TaskState,
    pub run_seq: i64,
    pub job_id: Option<String>,
    pub rounds: i64,
    pub provider: Option<String>,
    pub last_error: Option<String>,
    pub head_sha: Option<String>,
    pub worktree: Option<String>,
    pub cost_usd: Option<f64>,
    pub cancel_requested: bool,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub agent_pgid: Option<i64>,
    pub agent_marker: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub installation_id: Option<i64>,
    pub issue_number: Option<i64>,
    pub requested_by: Option<String>,
    pub status_comment_id: Option<i64>,
    pub check_run_id: Option<i64>,
    pub clone_url: Option<String>,
    pub pushed_sha: Option<String>,
    pub pr_number: Option<i64>,
    pub pr_state: Option<String>,
    /// Why part of what the task's issue asked for was not used.
    pub notice: Option<String>,
    /// The base commit the last run started from.
    pub base_sha: Option<String>,
}

impl TaskRow {
    pub fn repo_name(&self) -> RepoName {
        RepoName::from_db(self.repo.clone())
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub run_seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct GateRow {
    pub run_seq: i64,
    pub round: i64,
    pub gate: String,
    pub command: Option<String>,
    pub status: String,
    pub exit_code: Option<i64>,
    pub duration_ms: i64,
    pub output: String,
    pub at: DateTime<Utc>,
}

/// Opens (creating if needed) the database with the pragmas set on every connection.
pub async fn connect(url: &str, config: &DatabaseConfig) -> anyhow::Result<SqlitePool> {
    let synchronous = SqliteSynchronous::from_str(&config.synchronous)
        .map_err(|e| anyhow::anyhow!("database.synchronous: {e}"))?;
    let options = SqliteConnectOptions::from_str(url)
        .with_context(|| format!("database URL `{url}`"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(Duration::from_millis(config.busy_timeout_ms))
        .foreign_keys(true);
    if let Some(parent) = Path::new(options.get_filename()).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating database directory {}", parent.display()))?;
    }
    SqlitePoolOptions::new()
        .max_connections(config.max_connections)
        .connect_with(options)
        .await
        .with_context(|| format!("opening database {url}"))
}

/// Applies apalis's migrations and ours. Both record in `_sqlx_migrations`, so each runner
/// ignores the other's entries.
pub async fn migrate(pool: &SqlitePool) -> anyhow::Result<()> {
    let mut queue = apalis_sqlite::SqliteStorage::migrations();
    queue.set_ignore_missing(true);
    queue.run(pool).await.context("applying queue migrations")?;
    let mut ours = sqlx::migrate!("./migrations");
    ours.set_ignore_missing(true);
    ours.run(pool)
        .await
        .context("applying autodev migrations")?;
    Ok(())
}

/// A write transaction. `BEGIN IMMEDIATE` takes SQLite's write lock at the start (waiting up
/// to `busy_timeout`), so a transaction that reads before it writes cannot fail with
/// `SQLITE_BUSY` halfway when another process wrote in between, as a deferred one can.
pub async fn begin_write(pool: &SqlitePool) -> anyhow::Result<sqlx::Transaction<'static, Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .context("starting a write transaction")
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub struct NewTask<'a> {
    pub repo: &'a RepoName,
    pub task_id: &'a str,
    pub role: &'a str,
    pub title: &'a str,
    pub spec_json: &'a str,
    pub branch: &'a str,
}

/// Inserts a queued task; `Ok(None)` when the repository already has a task with that id.
pub async fn insert_task<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    t: &NewTask<'_>,
) -> anyhow::Result<Option<TaskKey>> {
    let now = Utc::now();
    let res = sqlx::query_scalar::<_, TaskKey>(
        "INSERT INTO tasks (repo, task_id, role, title, spec, branch, state, created_at, updated_at)
         VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)
         ON CONFLICT (repo, task_id) DO NOTHING
         RETURNING pk",
    )
    .bind(t.repo.as_str())
    .bind(t.task_id)
    .bind(t.role)
    .bind(t.title)
    .bind(t.spec_json)
    .bind(t.branch)
    .bind(now)
    .bind(now)
    .fetch_optional(ex)
    .await
    .context("inserting task")?;
    Ok(res)
}

pub async fn set_job_id<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    job_id: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET job_id = ? WHERE pk = ?")
        .bind(job_id)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn get_task(pool: &SqlitePool, key: TaskKey) -> anyhow::Result<Option<TaskRow>> {
    Ok(sqlx::query_as("SELECT * FROM tasks WHERE pk = ?")
        .bind(key)
        .fetch_optional(pool)
        .await?)
}

/// The task of `repo` whose branch is `branch`, if any.
pub async fn task_on_branch(
    pool: &SqlitePool,
    repo: &RepoName,
    branch: &str,
) -> anyhow::Result<Option<TaskRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM tasks WHERE repo = ? AND branch = ?")
            .bind(repo.as_str())
            .bind(branch)
            .fetch_optional(pool)
            .await?,
    )
}

/// Every task with this id, across repositories.
pub async fn find_tasks(pool: &SqlitePool, task_id: &str) -> anyhow::Result<Vec<TaskRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM tasks WHERE task_id = ? ORDER BY pk")
            .bind(task_id)
            .fetch_all(pool)
            .await?,
    )
}

pub async fn find_task(
    pool: &SqlitePool,
    repo: &RepoName,
    task_id: &str,
) -> anyhow::Result<Option<TaskRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM tasks WHERE repo = ? AND task_id = ?")
            .bind(repo.as_str())
            .bind(task_id)
            .fetch_optional(pool)
            .await?,
    )
}

/// Tasks, newest first.
pub async fn list_tasks(
    pool: &SqlitePool,
    state: Option<TaskState>,
    limit: i64,
) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks WHERE (?1 IS NULL OR state = ?1) ORDER BY pk DESC LIMIT ?2",
    )
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn count_in_state(pool: &SqlitePool, state: TaskState) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE state = ?")
            .bind(state)
            .fetch_one(pool)
            .await?,
    )
}

pub async fn add_event(
    pool: &SqlitePool,
    key: TaskKey,
    run_seq: i64,
    kind: &str,
    message: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO task_events (task_pk, run_seq, at, kind, message) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(key)
    .bind(run_seq)
    .bind(Utc::now())
    .bind(kind)
    .bind(message)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn events(pool: &SqlitePool, key: TaskKey) -> anyhow::Result<Vec<EventRow>> {
    Ok(sqlx::query_as(
        "SELECT run_seq, at, kind, message FROM task_events WHERE task_pk = ? ORDER BY id",
    )
    .bind(key)
    .fetch_all(pool)
    .await?)
}

pub struct NewGateResult<'a> {
    pub run_seq: i64,
    pub round: i64,
    pub gate: &'a str,
    pub command: Option<&'a str>,
    pub status: &'a str,
    pub exit_code: Option<i64>,
    pub duration_ms: i64,
    pub output: &'a str,
}

pub async fn add_gate_result(
    pool: &SqlitePool,
    key: TaskKey,
    g: &NewGateResult<'_>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO gate_results
           (task_pk, run_seq, round, gate, command, status, exit_code, duration_ms, output, at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(key)
    .bind(g.run_seq)
    .bind(g.round)
    .bind(g.gate)
    .bind(g.command)
    .bind(g.status)
    .bind(g.exit_code)
    .bind(g.duration_ms)
    .bind(g.output)
    .bind(Utc::now())
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn gate_results(pool: &SqlitePool, key: TaskKey) -> anyhow::Result<Vec<GateRow>> {
    Ok(sqlx::query_as(
        "SELECT run_seq, round, gate, command, status, exit_code, duration_ms, output, at
         FROM gate_results WHERE task_pk = ? ORDER BY id",
    )
    .bind(key)
    .fetch_all(pool)
    .await?)
}

/// What taking a task's lease found.
#[derive(Debug)]
pub enum LeaseAttempt {
    /// The lease is ours; the row as it was before we took it.
    Acquired(Box<TaskRow>),
    /// Another live worker holds it until `until_ms`.
    HeldElsewhere {
        owner: String,
        until_ms: i64,
    },
    /// Nothing to run: the task ended, or a retry made this job stale.
    NothingToRun(Box<TaskRow>),
    Missing,
}

/// Takes the lease on a queued or running task for `run_seq`, if no live worker holds it.
pub async fn acquire_lease(
    pool: &SqlitePool,
    key: TaskKey,
    run_seq: i64,
    owner: &str,
    ttl: Duration,
) -> anyhow::Result<LeaseAttempt> {
    let mut tx = begin_write(pool).await?;
    let Some(row): Option<TaskRow> = sqlx::query_as("SELECT * FROM tasks WHERE pk = ?")
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(LeaseAttempt::Missing);
    };
    if row.state.is_terminal() || row.run_seq != run_seq {
        return Ok(LeaseAttempt::NothingToRun(Box::new(row)));
    }
    let now = now_ms();
    if let (Some(holder), Some(until)) = (&row.lease_owner, row.lease_until)
        && holder != owner
        && until > now
    {
        return Ok(LeaseAttempt::HeldElsewhere {
            owner: holder.clone(),
            until_ms: until,
        });
    }
    let taken = sqlx::query(
        "UPDATE tasks SET lease_owner = ?, lease_until = ?, updated_at = ?
         WHERE pk = ? AND run_seq = ? AND state IN ('queued', 'running')
           AND (lease_owner IS NULL OR lease_owner = ? OR lease_until <= ?)",
    )
    .bind(owner)
    .bind(now + ttl.as_millis() as i64)
    .bind(Utc::now())
    .bind(key)
    .bind(run_seq)
    .bind(owner)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if taken == 1 {
        Ok(LeaseAttempt::Acquired(Box::new(row)))
    } else {
        Ok(LeaseAttempt::HeldElsewhere {
            owner: String::new(),
            until_ms: now + 1000,
        })
    }
}

/// What a lease renewal saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    Held { cancel_requested: bool },
    Lost,
}

pub async fn renew_lease(
    pool: &SqlitePool,
    key: TaskKey,
    owner: &str,
    ttl: Duration,
) -> anyhow::Result<LeaseStatus> {
    let row: Option<bool> = sqlx::query_scalar(
        "UPDATE tasks SET lease_until = ? WHERE pk = ? AND lease_owner = ?
         RETURNING cancel_requested",
    )
    .bind(now_ms() + ttl.as_millis() as i64)
    .bind(key)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some(cancel_requested) => LeaseStatus::Held { cancel_requested },
        None => LeaseStatus::Lost,
    })
}

/// Marks a leased task running for this run.
pub async fn mark_running(
    pool: &SqlitePool,
    key: TaskKey,
    owner: &str,
    base_branch: &str,
    base_sha: &str,
    worktree: &str,
) -> anyhow::Result<()> {
    let now = Utc::now();
    sqlx::query(
        "UPDATE tasks SET state = 'running', base_branch = ?, base_sha = ?, worktree = ?,
           rounds = 0, last_error = NULL, started_at = ?, finished_at = NULL, updated_at = ?
         WHERE pk = ? AND lease_owner = ? AND state IN ('queued', 'running')",
    )
    .bind(base_branch)
    .bind(base_sha)
    .bind(worktree)
    .bind(now)
    .bind(now)
    .bind(key)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// The round reached, the provider that ran it, and what it cost (added to what the task
/// has cost so far, over all rounds and runs).
pub async fn set_progress(
    pool: &SqlitePool,
    key: TaskKey,
    rounds: i64,
    provider: Option<&str>,
    cost_usd: Option<f64>,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE tasks SET rounds = ?1, provider = COALESCE(?2, provider),
           cost_usd = CASE WHEN ?3 IS NULL THEN cost_usd ELSE COALESCE(cost_usd, 0) + ?3 END,
           updated_at = ?4 WHERE pk = ?5",
    )
    .bind(rounds)
    .bind(provider)
    .bind(cost_usd)
    .bind(Utc::now())
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the process group of the agent (or gate) now running, so that a later run can stop
/// it if this process dies.
pub async fn set_agent_process(
    pool: &SqlitePool,
    key: TaskKey,
    pgid: Option<i64>,
    marker: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET agent_pgid = ?, agent_marker = ? WHERE pk = ?")
        .bind(pgid)
        .bind(marker)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends a run: final state, error, head, and the lease released. Only the lease holder can.
pub async fn finish(
    pool: &SqlitePool,
    key: TaskKey,
    owner: &str,
    state: TaskState,
    last_error: Option<&str>,
    head_sha: Option<&str>,
) -> anyhow::Result<bool> {
    let now = Utc::now();
    let done = sqlx::query(
        "UPDATE tasks SET state = ?, last_error = ?, head_sha = COALESCE(?, head_sha),
           finished_at = ?, updated_at = ?, lease_owner = NULL, lease_until = NULL,
           agent_pgid = NULL, agent_marker = NULL, cancel_requested = 0
         WHERE pk = ? AND lease_owner = ? AND state IN ('queued', 'running')",
    )
    .bind(state)
    .bind(last_error)
    .bind(head_sha)
    .bind(now)
    .bind(now)
    .bind(key)
    .bind(owner)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Cancels a queued task at once, or asks the worker running it to stop. Returns the state the
/// task was in, or `None` if it does not exist.
pub async fn request_cancel(pool: &SqlitePool, key: TaskKey) -> anyhow::Result<Option<TaskState>> {
    let mut tx = begin_write(pool).await?;
    let state: Option<TaskState> = sqlx::query_scalar("SELECT state FROM tasks WHERE pk = ?")
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    let now = Utc::now();
    // A queued task whose lease is held is being set up by a worker: ask that worker to stop,
    // as for a running one, instead of flipping the state under it.
    let leased: bool = sqlx::query_scalar(
        "SELECT lease_owner IS NOT NULL AND lease_until > ? FROM tasks WHERE pk = ?",
    )
    .bind(now_ms())
    .bind(key)
    .fetch_optional(&mut *tx)
    .await?
    .unwrap_or(false);
    let state = match state {
        Some(TaskState::Queued) if leased => Some(TaskState::Running),
        Some(TaskState::Running) if !leased => {
            // Its worker is gone (a crashed `autodev run`, a job out of attempts): end it.
            sqlx::query(
                "UPDATE tasks SET state = 'cancelled', last_error = 'cancelled; its worker had stopped',
                   finished_at = ?, updated_at = ?, agent_pgid = NULL, agent_marker = NULL WHERE pk = ?",
            )
            .bind(now)
            .bind(now)
            .bind(key)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Some(TaskState::Queued));
        }
        other => other,
    };
    match state {
        Some(TaskState::Queued) => {
            sqlx::query(
                "UPDATE tasks SET state = 'cancelled', last_error = 'cancelled before it started',
                   finished_at = ?, updated_at = ? WHERE pk = ?",
            )
            .bind(now)
            .bind(now)
            .bind(key)
            .execute(&mut *tx)
            .await?;
        }
        Some(TaskState::Running) => {
            sqlx::query("UPDATE tasks SET cancel_requested = 1, updated_at = ? WHERE pk = ?")
                .bind(now)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        _ => {}
    }
    tx.commit().await?;
    Ok(state)
}

/// Puts an ended task back in the queue for a new run on the same branch; returns the new
/// `run_seq`, or `None` when the task is still queued or running.
pub async fn requeue<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
) -> anyhow::Result<Option<i64>> {
    let now = Utc::now();
    Ok(sqlx::query_scalar(
        "UPDATE tasks SET state = 'queued', run_seq = run_seq + 1, cancel_requested = 0,
           last_error = NULL, finished_at = NULL, started_at = NULL, updated_at = ?,
           pr_state = CASE WHEN pr_state = 'refused' THEN NULL ELSE pr_state END
         WHERE pk = ? AND (state NOT IN ('queued', 'running')
           OR (state = 'running' AND (lease_until IS NULL OR lease_until <= ?)))
         RETURNING run_seq",
    )
    .bind(now)
    .bind(key)
    .bind(now_ms())
    .fetch_optional(ex)
    .await?)
}

/// Running tasks whose lease ran out: their worker died.
pub async fn expired_leases(pool: &SqlitePool, grace: Duration) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks WHERE state = 'running'
           AND (lease_until IS NULL OR lease_until <= ?)",
    )
    .bind(now_ms() - grace.as_millis() as i64)
    .fetch_all(pool)
    .await?)
}

pub struct NewDelivery<'a> {
    pub id: &'a str,
    pub event: &'a str,
    pub repo: Option<&'a str>,
    pub installation: Option<i64>,
    /// The parsed domain event, as JSON.
    pub payload: &'a str,
    pub outcome: &'a str,
}

/// Records a delivery; `false` when this delivery id was already recorded (a redelivery, or a
/// copy that arrived at the same moment).
pub async fn insert_delivery<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    d: &NewDelivery<'_>,
) -> anyhow::Result<bool> {
    let inserted: Option<String> = sqlx::query_scalar(
        "INSERT INTO deliveries (id, event, repo, installation_id, payload, outcome, received_at)
         VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(d.id)
    .bind(d.event)
    .bind(d.repo)
    .bind(d.installation)
    .bind(d.payload)
    .bind(d.outcome)
    .bind(Utc::now())
    .fetch_optional(ex)
    .await
    .context("recording delivery")?;
    Ok(inserted.is_some())
}

pub async fn delivery_payload(pool: &SqlitePool, id: &str) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT payload FROM deliveries WHERE id = ?")
            .bind(id)
            .fetch_optional(pool)
            .await?
            .flatten(),
    )
}

pub async fn count_deliveries(pool: &SqlitePool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
        .fetch_one(pool)
        .await?)
}

/// Records an installation and, when given, the full list of its repositories.
pub async fn upsert_installation(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    id: i64,
    account: &str,
    active: bool,
    repos: Option<&[String]>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO installations (id, account, active, updated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET account = excluded.account, active = excluded.active,
           updated_at = excluded.updated_at",
    )
    .bind(id)
    .bind(account)
    .bind(active)
    .bind(Utc::now())
    .execute(&mut **tx)
    .await?;
    if let Some(repos) = repos {
        sqlx::query("DELETE FROM installation_repos WHERE installation_id = ?")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        add_installation_repos(tx, id, repos).await?;
    }
    Ok(())
}

pub async fn add_installation_repos(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    id: i64,
    repos: &[String],
) -> anyhow::Result<()> {
    for repo in repos {
        sqlx::query(
            "INSERT INTO installation_repos (installation_id, repo) VALUES (?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(repo.to_lowercase())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

pub async fn remove_installation_repos(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    id: i64,
    repos: &[String],
) -> anyhow::Result<()> {
    for repo in repos {
        sqlx::query("DELETE FROM installation_repos WHERE installation_id = ? AND repo = ?")
            .bind(id)
            .bind(repo.to_lowercase())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Whether an active installation covers `repo` (`owner/name`, any case).
pub async fn repo_installed(
    pool: &SqlitePool,
    installation: i64,
    repo: &str,
) -> anyhow::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM installation_repos r JOIN installations i ON i.id = r.installation_id
         WHERE i.id = ? AND i.active = 1 AND r.repo = ?",
    )
    .bind(installation)
    .bind(repo.to_lowercase())
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// Marks a task as coming from a GitHub issue.
pub async fn set_github_origin<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    installation: i64,
    issue: i64,
    requested_by: &str,
    clone_url: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE tasks SET installation_id = ?, issue_number = ?, requested_by = ?, clone_url = ?
         WHERE pk = ?",
    )
    .bind(installation)
    .bind(issue)
    .bind(requested_by)
    .bind(clone_url)
    .bind(key)
    .execute(ex)
    .await?;
    Ok(())
}

/// Replaces the spec (and role and branch) of an ended task before it runs again.
pub async fn replace_spec<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    role: &str,
    title: &str,
    spec_json: &str,
    branch: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET role = ?, title = ?, spec = ?, branch = ? WHERE pk = ?")
        .bind(role)
        .bind(title)
        .bind(spec_json)
        .bind(branch)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

/// Sets (or clears) why part of what the task's issue asked for was not used.
pub async fn set_notice<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    notice: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET notice = ? WHERE pk = ?")
        .bind(notice)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

/// Whether autodev may answer `login` on issue `issue` of `repo` now: true at most once per
/// `window` for each of them (the claim is recorded).
pub async fn claim_outsider_reply(
    pool: &SqlitePool,
    repo: &str,
    issue: i64,
    login: &str,
    window: Duration,
) -> anyhow::Result<bool> {
    let now = now_ms();
    let done = sqlx::query(
        "INSERT INTO outsider_replies (repo, issue, login, last_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (repo, issue, login) DO UPDATE SET last_at = excluded.last_at
         WHERE outsider_replies.last_at <= ?",
    )
    .bind(repo.to_lowercase())
    .bind(issue)
    .bind(login.to_lowercase())
    .bind(now)
    .bind(now - window.as_millis() as i64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_status_comment(
    pool: &SqlitePool,
    key: TaskKey,
    comment_id: i64,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET status_comment_id = ? WHERE pk = ?")
        .bind(comment_id)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_pushed(pool: &SqlitePool, key: TaskKey, sha: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET pushed_sha = ? WHERE pk = ?")
        .bind(sha)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_check_run(pool: &SqlitePool, key: TaskKey, id: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET check_run_id = ? WHERE pk = ?")
        .bind(id)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

/// What became of a delivery after its job looked at it (e.g. refused).
pub async fn set_delivery_outcome(
    pool: &SqlitePool,
    id: &str,
    outcome: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE deliveries SET outcome = ? WHERE id = ?")
        .bind(outcome)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn set_pr(pool: &SqlitePool, key: TaskKey, number: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET pr_number = ?, pr_state = 'open' WHERE pk = ?")
        .bind(number)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records where a local task's branch goes on GitHub, the first time only.
pub async fn set_local_remote(pool: &SqlitePool, key: TaskKey, url: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET clone_url = ? WHERE pk = ? AND clone_url IS NULL")
        .bind(url)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

/// Where the latest other local task's pull request went.
pub async fn last_local_remote(
    pool: &SqlitePool,
    except: TaskKey,
) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT clone_url FROM tasks WHERE repo = 'local' AND clone_url IS NOT NULL AND pk != ?
         ORDER BY pk DESC LIMIT 1",
    )
    .bind(except)
    .fetch_optional(pool)
    .await?)
}

/// Passed GitHub tasks whose branch is pushed and has no pull request yet. The schedule
/// leaves those refused one; asked `by_hand`, they are tried again.
pub async fn tasks_needing_pr(pool: &SqlitePool, by_hand: bool) -> anyhow::Result<Vec<TaskKey>> {
    Ok(sqlx::query_scalar(
        "SELECT pk FROM tasks WHERE state = 'passed' AND pushed_sha IS NOT NULL
           AND pr_number IS NULL AND installation_id IS NOT NULL
           AND (? OR pr_state IS NOT 'refused') ORDER BY pk",
    )
    .bind(by_hand)
    .fetch_all(pool)
    .await?)
}

/// Passed local tasks without a pull request (local mode pushes their branch when it opens
/// one). The schedule takes only those that ran with local pull requests set up (their
/// `origin` recorded) and were not refused one; asked `by_hand`, all of them.
pub async fn local_tasks_needing_pr(
    pool: &SqlitePool,
    by_hand: bool,
) -> anyhow::Result<Vec<TaskKey>> {
    Ok(sqlx::query_scalar(
        "SELECT pk FROM tasks WHERE state = 'passed' AND repo = 'local' AND pr_number IS NULL
           AND (? OR (pr_state IS NOT 'refused' AND clone_url IS NOT NULL)) ORDER BY pk",
    )
    .bind(by_hand)
    .fetch_all(pool)
    .await?)
}

/// Ended tasks that still have a worktree and finished before `before`.
pub async fn ended_with_worktree(
    pool: &SqlitePool,
    before: DateTime<Utc>,
) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks WHERE state IN ('passed', 'failed', 'error', 'cancelled')
           AND worktree IS NOT NULL AND finished_at <= ? ORDER BY pk",
    )
    .bind(before)
    .fetch_all(pool)
    .await?)
}

pub async fn clear_worktree(pool: &SqlitePool, key: TaskKey) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE tasks SET worktree = NULL WHERE pk = ? AND state NOT IN ('queued', 'running')",
    )
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets the agent process of a run, unless another run has recorded its own since.
pub async fn clear_agent_process_if(
    pool: &SqlitePool,
    key: TaskKey,
    marker: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE tasks SET agent_pgid = NULL, agent_marker = NULL WHERE pk = ? AND agent_marker = ?",
    )
    .bind(key)
    .bind(marker)
    .execute(pool)
    .await?;
    Ok(())
}

/// Passed GitHub tasks with an open pull request (the rebase job's work list).
pub async fn tasks_with_open_pr(pool: &SqlitePool) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks WHERE state = 'passed' AND pr_number IS NOT NULL
           AND pushed_sha IS NOT NULL AND installation_id IS NOT NULL
           AND (pr_state IS NULL OR pr_state = 'open') ORDER BY pk",
    )
    .fetch_all(pool)
    .await?)
}

/// A passed task whose branch no longer passes after hygiene (a rebase) is failed.
pub async fn fail_after_hygiene(
    pool: &SqlitePool,
    key: TaskKey,
    error: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE tasks SET state = 'failed', last_error = ?, updated_at = ? WHERE pk = ? AND state = 'passed'",
    )
    .bind(error)
    .bind(Utc::now())
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Tasks with a pull request not yet known to be closed.
pub async fn tasks_with_pr_not_closed(pool: &SqlitePool) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks WHERE pr_number IS NOT NULL
           AND state NOT IN ('queued', 'running') AND (pr_state IS NULL OR pr_state = 'open') ORDER BY pk",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn set_pr_state(pool: &SqlitePool, key: TaskKey, state: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET pr_state = ? WHERE pk = ?")
        .bind(state)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

/// The branch's new head after it caught up with its base at `base_sha`.
pub async fn set_head(
    pool: &SqlitePool,
    key: TaskKey,
    sha: &str,
    base_sha: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET head_sha = ?, base_sha = ? WHERE pk = ?")
        .bind(sha)
        .bind(base_sha)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}
