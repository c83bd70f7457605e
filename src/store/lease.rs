//! Who runs a task: acquiring and renewing its lease, bound to the owner and the run, and the
//! state changes that only the lease holder (or a cancel) may make. A lease is held by one
//! process for one run: a run that a retry superseded writes nothing more, even in the process
//! that now runs its successor.

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
    /// The run was started, and its worker stopped renewing the lease before it ended (the
    /// process died): the run is over, and the task is to be queued again as a new run.
    Orphaned(Box<TaskRow>),
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
    if row.state == TaskState::Running {
        return Ok(LeaseAttempt::Orphaned(Box::new(row)));
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

/// Extends the lease of run `run_seq`; `Lost` once the task is another process's, ended, or on
/// a later run.
pub async fn renew_lease<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    run_seq: i64,
    owner: &str,
    ttl: Duration,
) -> anyhow::Result<LeaseStatus> {
    let row: Option<bool> = sqlx::query_scalar(
        "UPDATE tasks SET lease_until = ?
         WHERE pk = ? AND run_seq = ? AND lease_owner = ? AND state IN ('queued', 'running')
         RETURNING cancel_requested",
    )
    .bind(now_ms() + ttl.as_millis() as i64)
    .bind(key)
    .bind(run_seq)
    .bind(owner)
    .fetch_optional(ex)
    .await?;
    Ok(match row {
        Some(cancel_requested) => LeaseStatus::Held { cancel_requested },
        None => LeaseStatus::Lost,
    })
}

/// Marks a leased task running for run `run_seq`.
pub async fn mark_running<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    run_seq: i64,
    owner: &str,
    base_branch: &str,
    base_sha: &str,
    worktree: &str,
) -> anyhow::Result<()> {
    let now = Utc::now();
    sqlx::query(
        "UPDATE tasks SET state = 'running', base_branch = ?, base_sha = ?, worktree = ?,
           rounds = 0, last_error = NULL, started_at = ?, finished_at = NULL, updated_at = ?
         WHERE pk = ? AND run_seq = ? AND lease_owner = ? AND state IN ('queued', 'running')",
    )
    .bind(base_branch)
    .bind(base_sha)
    .bind(worktree)
    .bind(now)
    .bind(now)
    .bind(key)
    .bind(run_seq)
    .bind(owner)
    .execute(ex)
    .await?;
    Ok(())
}

/// Records the process group of run `run_seq`'s agent (or gate) now running, so that a later
/// run can stop it if this process dies. A superseded run records nothing.
pub async fn set_agent_process<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    run_seq: i64,
    pgid: Option<i64>,
    marker: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET agent_pgid = ?, agent_marker = ? WHERE pk = ? AND run_seq = ?")
        .bind(pgid)
        .bind(marker)
        .bind(key)
        .bind(run_seq)
        .execute(ex)
        .await?;
    Ok(())
}

/// Ends run `run_seq`: final state, error, head, and the lease released. Only the holder of
/// that run's lease can.
pub async fn finish<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    run_seq: i64,
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
         WHERE pk = ? AND run_seq = ? AND lease_owner = ? AND state IN ('queued', 'running')",
    )
    .bind(state)
    .bind(last_error)
    .bind(head_sha)
    .bind(now)
    .bind(now)
    .bind(key)
    .bind(run_seq)
    .bind(owner)
    .execute(ex)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Ends run `run_seq` without a result, because its process is shutting down: the lease is
/// released and the task queued again as run `run_seq + 1` (returned), keeping the branch and
/// the head the run ended on. Only the holder of the run's lease can.
pub async fn interrupt<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    run_seq: i64,
    owner: &str,
    head_sha: Option<&str>,
) -> anyhow::Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "UPDATE tasks SET state = 'queued', run_seq = run_seq + 1, head_sha = COALESCE(?, head_sha),
           lease_owner = NULL, lease_until = NULL, agent_pgid = NULL, agent_marker = NULL,
           started_at = NULL, updated_at = ?
         WHERE pk = ? AND run_seq = ? AND lease_owner = ? AND state IN ('queued', 'running')
           AND cancel_requested = 0
         RETURNING run_seq",
    )
    .bind(head_sha)
    .bind(Utc::now())
    .bind(key)
    .bind(run_seq)
    .bind(owner)
    .fetch_optional(ex)
    .await?)
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

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    /// One process, two runs of one task: run 1's lease ran out, a retry made run 2, and the
    /// same process took run 2. Run 1 must be unable to renew, record its agent, or finish.
    #[tokio::test]
    async fn a_superseded_run_writes_nothing_even_in_the_process_running_its_successor() {
        let (_dir, pool, key) = scratch_store().await;
        let me = "host:1";
        assert!(matches!(
            acquire_lease(&pool, key, 1, me, TTL).await.unwrap(),
            LeaseAttempt::Acquired(_)
        ));
        mark_running(&pool, key, 1, me, "main", "abc", "/w")
            .await
            .unwrap();
        // Run 1's lease runs out; a retry queues run 2, which this same process takes.
        sqlx::query("UPDATE tasks SET lease_until = 0 WHERE pk = ?")
            .bind(key)
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(requeue(&pool, key).await.unwrap(), Some(2));
        assert!(matches!(
            acquire_lease(&pool, key, 1, me, TTL).await.unwrap(),
            LeaseAttempt::NothingToRun(_)
        ));
        assert!(matches!(
            acquire_lease(&pool, key, 2, me, TTL).await.unwrap(),
            LeaseAttempt::Acquired(_)
        ));
        mark_running(&pool, key, 2, me, "main", "abc", "/w")
            .await
            .unwrap();
        set_agent_process(&pool, key, 2, Some(42), Some("run-2"))
            .await
            .unwrap();

        assert_eq!(
            renew_lease(&pool, key, 1, me, TTL).await.unwrap(),
            LeaseStatus::Lost
        );
        set_agent_process(&pool, key, 1, Some(7), Some("run-1"))
            .await
            .unwrap();
        assert!(
            !finish(
                &pool,
                key,
                1,
                me,
                TaskState::Error,
                Some("run 1's end"),
                None
            )
            .await
            .unwrap()
        );
        let row = get_task(&pool, key).await.unwrap().unwrap();
        assert_eq!(
            (
                row.state,
                row.run_seq,
                row.agent_pgid,
                row.agent_marker.as_deref()
            ),
            (TaskState::Running, 2, Some(42), Some("run-2"))
        );

        // Run 2's own lease works to the end.
        assert_eq!(
            renew_lease(&pool, key, 2, me, TTL).await.unwrap(),
            LeaseStatus::Held {
                cancel_requested: false
            }
        );
        assert!(
            finish(&pool, key, 2, me, TaskState::Passed, None, Some("def"))
                .await
                .unwrap()
        );
        let row = get_task(&pool, key).await.unwrap().unwrap();
        assert_eq!((row.state, row.last_error), (TaskState::Passed, None));
        assert_eq!(
            renew_lease(&pool, key, 2, me, TTL).await.unwrap(),
            LeaseStatus::Lost,
            "an ended run holds no lease"
        );
    }

    /// A process died mid-run: whoever finds its lease run out is told the run is orphaned
    /// (the task is queued again as a new run), never handed the dead run to continue.
    #[tokio::test]
    async fn a_dead_workers_run_is_orphaned_not_taken_over() {
        let (_dir, pool, key) = scratch_store().await;
        assert!(matches!(
            acquire_lease(&pool, key, 1, "host:1", TTL).await.unwrap(),
            LeaseAttempt::Acquired(_)
        ));
        assert!(matches!(
            acquire_lease(&pool, key, 1, "host:2", TTL).await.unwrap(),
            LeaseAttempt::HeldElsewhere { .. }
        ));
        mark_running(&pool, key, 1, "host:1", "main", "abc", "/w")
            .await
            .unwrap();
        sqlx::query("UPDATE tasks SET lease_until = 0 WHERE pk = ?")
            .bind(key)
            .execute(&pool)
            .await
            .unwrap();
        let LeaseAttempt::Orphaned(row) =
            acquire_lease(&pool, key, 1, "host:2", TTL).await.unwrap()
        else {
            panic!("not orphaned");
        };
        assert_eq!(
            (row.run_seq, row.lease_owner.as_deref()),
            (1, Some("host:1"))
        );
        assert_eq!(requeue(&pool, key).await.unwrap(), Some(2));
        assert!(matches!(
            acquire_lease(&pool, key, 2, "host:2", TTL).await.unwrap(),
            LeaseAttempt::Acquired(_)
        ));
    }
}
