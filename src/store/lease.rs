//! Who runs a task: acquiring and renewing its lease, bound to the owner, and the state
//! changes that only the lease holder (or a cancel) may make.

use super::*;

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

pub async fn renew_lease<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
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
    .fetch_optional(ex)
    .await?;
    Ok(match row {
        Some(cancel_requested) => LeaseStatus::Held { cancel_requested },
        None => LeaseStatus::Lost,
    })
}

/// Marks a leased task running for this run.
pub async fn mark_running<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
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
    .execute(ex)
    .await?;
    Ok(())
}

/// Records the process group of the agent (or gate) now running, so that a later run can stop
/// it if this process dies.
pub async fn set_agent_process<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    pgid: Option<i64>,
    marker: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET agent_pgid = ?, agent_marker = ? WHERE pk = ?")
        .bind(pgid)
        .bind(marker)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

/// Ends a run: final state, error, head, and the lease released. Only the lease holder can.
pub async fn finish<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
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
    .execute(ex)
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

/// Forgets the agent process of a run, unless another run has recorded its own since.
pub async fn clear_agent_process_if<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    marker: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE tasks SET agent_pgid = NULL, agent_marker = NULL WHERE pk = ? AND agent_marker = ?",
    )
    .bind(key)
    .bind(marker)
    .execute(ex)
    .await?;
    Ok(())
}
