//! Every SQL statement of the domain tables (`migrations/`), with typed rows, split by concern:
//! `tasks`, `lease` (who runs a task), `timeline` (events and gate results), `github`
//! (deliveries, installations, a task's GitHub objects), `board` (what the dashboard reads),
//! `retention` (what is kept), `batch` (group commit, and the [`Writer`] requests write
//! with there). The API is flat (`store::get_task`),
//! so callers need not know which file holds a statement. The queue's tables belong to
//! apalis. Imports `config` and `core`; nothing above.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rusqlite::OptionalExtension;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, Sqlite, SqlitePool};

use crate::config::DatabaseConfig;
use crate::core::ids::{RepoName, TaskKey};

mod batch;
mod board;
mod github;
mod lease;
mod retention;
mod tasks;
mod timeline;

pub use batch::*;
pub use board::*;
pub use github::*;
pub use lease::*;
pub use retention::*;
pub use tasks::*;
pub use timeline::*;

/// Where a task's pull request stands (`NULL`: none asked for yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PrState {
    Open,
    /// Merged or closed on GitHub.
    Closed,
    /// GitHub refused to open it (a 422), or its branch could not be pushed: the sweep stops
    /// asking; asking by hand tries again.
    Refused,
}

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
    pub const ALL: [TaskState; 6] = [
        TaskState::Queued,
        TaskState::Running,
        TaskState::Passed,
        TaskState::Failed,
        TaskState::Error,
        TaskState::Cancelled,
    ];

    /// The state a name says (`queued`, ...).
    pub fn parse(name: &str) -> Option<TaskState> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

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
    pub pr_state: Option<PrState>,
    /// Why part of what the task's issue asked for was not used.
    pub notice: Option<String>,
    /// The base commit the last run started from.
    pub base_sha: Option<String>,
    /// The commit being pushed to the branch, until the push is recorded in `pushed_sha`.
    pub push_intent: Option<String>,
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
/// The database every caller holds: which one it is is the store's business. (SQLite today;
/// a second database is a second module behind these names, not a change to every caller.)
pub type Pool = SqlitePool;

/// One connection of the [`Pool`], or an open transaction on one (`&mut *tx`).
pub type Conn = sqlx::SqliteConnection;

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
        // A connection still counted in a transaction goes, not back to the pool: a COMMIT
        // that failed (a full disk) leaves sqlx counting one that SQLite already rolled back,
        // and every `BEGIN` on that connection would fail after it.
        .after_release(|conn, _| {
            use sqlx::Connection;
            let reusable = !conn.is_in_transaction();
            Box::pin(async move { Ok(reusable) })
        })
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

/// Whether `e` comes from a full disk: SQLite's `SQLITE_FULL`, or `ENOSPC` from a file write.
pub fn is_disk_full(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if let Some(sqlx::Error::Database(db)) = cause.downcast_ref::<sqlx::Error>() {
            // SQLITE_FULL, and its extended codes.
            return db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c & 0xff == 13);
        }
        if let Some(rusqlite::Error::SqliteFailure(e, _)) = cause.downcast_ref::<rusqlite::Error>()
        {
            return e.code == rusqlite::ErrorCode::DiskFull;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::StorageFull
                || io.raw_os_error() == Some(libc::ENOSPC);
        }
        says_disk_full(&cause.to_string())
    })
}

/// Whether an error's words say the disk is full (errors that reached a task as text).
pub fn says_disk_full(text: &str) -> bool {
    text.contains("No space left on device") || text.contains("database or disk is full")
}

/// A write transaction. `BEGIN IMMEDIATE` takes SQLite's write lock at the start (waiting up
/// to `busy_timeout`), so a transaction that reads before it writes cannot fail with
/// `SQLITE_BUSY` halfway when another process wrote in between, as a deferred one can.
pub async fn begin_write(pool: &SqlitePool) -> anyhow::Result<sqlx::Transaction<'static, Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .context("starting a write transaction")
}

/// Whether the database answers.
pub async fn ping(pool: &SqlitePool) -> anyhow::Result<()> {
    sqlx::query("SELECT 1").execute(pool).await?;
    Ok(())
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A store in a temporary directory, holding one queued task.
#[cfg(test)]
pub(crate) async fn scratch_store() -> (tempfile::TempDir, SqlitePool, TaskKey) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("autodev.db").display());
    let pool = connect(&url, &DatabaseConfig::default()).await.unwrap();
    migrate(&pool).await.unwrap();
    let key = insert_task(
        &pool,
        &NewTask {
            repo: &RepoName::local(),
            task_id: "t-1",
            role: "backend",
            title: "a task",
            spec_json: "{}",
            branch: "auto/backend/t-1",
            job_id: None,
        },
    )
    .await
    .unwrap()
    .unwrap();
    (dir, pool, key)
}
