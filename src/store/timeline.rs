//! A task's timeline (`task_events`) and its gate results.

use super::*;

/// What a timeline entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Queued,
    Running,
    Passed,
    Failed,
    Error,
    Cancelled,
    /// Processes of an earlier run stopped, a run taken over.
    Recovered,
    /// The run was stopped by a shutdown, its work kept, and the task queued again.
    Interrupted,
    /// What the run may use, as settled (`core::trust`).
    Settings,
    Worktree,
    Agent,
    Provider,
    Gates,
    Gate,
    Commit,
    Push,
    Egress,
    Checkpoint,
    Rebase,
    Cleanup,
    PullRequest,
    Github,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Running => "running",
            EventKind::Passed => "passed",
            EventKind::Failed => "failed",
            EventKind::Error => "error",
            EventKind::Cancelled => "cancelled",
            EventKind::Recovered => "recovered",
            EventKind::Interrupted => "interrupted",
            EventKind::Settings => "settings",
            EventKind::Worktree => "worktree",
            EventKind::Agent => "agent",
            EventKind::Provider => "provider",
            EventKind::Gates => "gates",
            EventKind::Gate => "gate",
            EventKind::Commit => "commit",
            EventKind::Push => "push",
            EventKind::Egress => "egress",
            EventKind::Checkpoint => "checkpoint",
            EventKind::Rebase => "rebase",
            EventKind::Cleanup => "cleanup",
            EventKind::PullRequest => "pull_request",
            EventKind::Github => "github",
        }
    }

    /// Whether it changes what a task's status comment shows.
    pub fn changes_status(self) -> bool {
        matches!(
            self,
            EventKind::Queued
                | EventKind::Worktree
                | EventKind::Agent
                | EventKind::Passed
                | EventKind::Failed
                | EventKind::Error
                | EventKind::Cancelled
                | EventKind::Recovered
                | EventKind::Interrupted
        )
    }
}

impl From<TaskState> for EventKind {
    /// The entry a task's new state writes.
    fn from(state: TaskState) -> Self {
        match state {
            TaskState::Queued => EventKind::Queued,
            TaskState::Running => EventKind::Running,
            TaskState::Passed => EventKind::Passed,
            TaskState::Failed => EventKind::Failed,
            TaskState::Error => EventKind::Error,
            TaskState::Cancelled => EventKind::Cancelled,
        }
    }
}

/// A timeline event: task, run, time, kind, message. Shared with the group-commit writer.
pub(super) const INSERT_EVENT: &str =
    "INSERT INTO task_events (task_pk, run_seq, at, kind, message) VALUES (?, ?, ?, ?, ?)";

pub async fn add_event<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    run_seq: i64,
    kind: EventKind,
    message: &str,
) -> anyhow::Result<()> {
    sqlx::query(INSERT_EVENT)
        .bind(key)
        .bind(run_seq)
        .bind(Utc::now())
        .bind(kind.as_str())
        .bind(message)
        .execute(ex)
        .await?;
    Ok(())
}

impl Writer<'_> {
    /// [`add_event`], in a group commit.
    pub fn add_event(
        &self,
        key: TaskKey,
        run_seq: i64,
        kind: EventKind,
        message: &str,
    ) -> anyhow::Result<()> {
        self.statement(INSERT_EVENT)?.execute(rusqlite::params![
            key.0,
            run_seq,
            stamp(Utc::now()),
            kind.as_str(),
            message
        ])?;
        Ok(())
    }
}

/// Whether run `run_seq` of the task was cut off (its worker died, or it was interrupted by a
/// shutdown) rather than ended: it has such an event and no end of its own.
pub async fn run_cut_off(pool: &SqlitePool, key: TaskKey, run_seq: i64) -> anyhow::Result<bool> {
    let cut: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM task_events WHERE task_pk = ?1 AND run_seq = ?2
                          AND kind IN ('recovered', 'interrupted'))
            AND NOT EXISTS (SELECT 1 FROM task_events WHERE task_pk = ?1 AND run_seq = ?2
                          AND kind IN ('passed', 'failed', 'error', 'cancelled'))",
    )
    .bind(key)
    .bind(run_seq)
    .fetch_one(pool)
    .await?;
    Ok(cut)
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

pub async fn add_gate_result<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
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
    .execute(ex)
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
