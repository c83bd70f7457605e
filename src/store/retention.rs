//! What is kept, and for how long: pruning history older than `hygiene.keep_history_days`
//! (webhook deliveries, the timelines, gate results and output tails of ended tasks, finished queue jobs
//! and the queue's dead workers, outsider-reply marks). Deletes go in batches, so that no
//! prune holds SQLite's write lock long enough to make a request wait.

use super::*;

/// Rows one delete removes at most.
const BATCH: i64 = 2000;

/// What one prune removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub deliveries: u64,
    /// Deliveries kept (for their id) with their payload dropped.
    pub payloads: u64,
    pub events: u64,
    pub gate_results: u64,
    /// Live tails of ended tasks' runs.
    pub outputs: u64,
    pub jobs: u64,
    pub workers: u64,
    pub outsider_replies: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.deliveries
            + self.payloads
            + self.events
            + self.gate_results
            + self.outputs
            + self.jobs
            + self.workers
            + self.outsider_replies
    }
}

/// A delivery's id is kept at least this long, so that the same delivery sent again (GitHub's
/// "Redeliver", or a replay of a signed body) is still known for one.
pub const DELIVERY_IDS_KEPT: chrono::Duration = chrono::Duration::days(90);

/// Deletes what is older than `before`. A queued or running task keeps its whole timeline;
/// a delivery keeps its id (not its payload) for [`DELIVERY_IDS_KEPT`] at least;
/// a queue job is deleted only when it is finished for good (done, killed, or failed with no
/// attempt left), and a queue worker only when no job names it.
pub async fn prune(pool: &SqlitePool, before: DateTime<Utc>) -> anyhow::Result<Pruned> {
    let unix = before.timestamp();
    Ok(Pruned {
        payloads: batched(
            pool,
            "UPDATE deliveries SET payload = NULL WHERE rowid IN
               (SELECT rowid FROM deliveries WHERE received_at < ?1 AND payload IS NOT NULL LIMIT ?2)",
            Cutoff::Time(before),
        )
        .await?,
        deliveries: batched(
            pool,
            "DELETE FROM deliveries WHERE rowid IN
               (SELECT rowid FROM deliveries WHERE received_at < ?1 LIMIT ?2)",
            Cutoff::Time(before.min(Utc::now() - DELIVERY_IDS_KEPT)),
        )
        .await?,
        events: batched(
            pool,
            "DELETE FROM task_events WHERE id IN
               (SELECT e.id FROM task_events e JOIN tasks t ON t.pk = e.task_pk
                WHERE e.at < ?1 AND t.state NOT IN ('queued', 'running') LIMIT ?2)",
            Cutoff::Time(before),
        )
        .await?,
        gate_results: batched(
            pool,
            "DELETE FROM gate_results WHERE id IN
               (SELECT g.id FROM gate_results g JOIN tasks t ON t.pk = g.task_pk
                WHERE g.at < ?1 AND t.state NOT IN ('queued', 'running') LIMIT ?2)",
            Cutoff::Time(before),
        )
        .await?,
        outputs: batched(
            pool,
            "DELETE FROM task_output WHERE task_pk IN
               (SELECT o.task_pk FROM task_output o JOIN tasks t ON t.pk = o.task_pk
                WHERE o.updated_ms < ?1 AND t.state NOT IN ('queued', 'running') LIMIT ?2)",
            Cutoff::Unix(before.timestamp_millis()),
        )
        .await?,
        jobs: batched(
            pool,
            "DELETE FROM Jobs WHERE rowid IN
               (SELECT rowid FROM Jobs
                WHERE (status IN ('Done', 'Killed') OR (status = 'Failed' AND attempts >= max_attempts))
                  AND done_at IS NOT NULL AND done_at < ?1 LIMIT ?2)",
            Cutoff::Unix(unix),
        )
        .await?,
        workers: batched(
            pool,
            "DELETE FROM Workers WHERE rowid IN
               (SELECT rowid FROM Workers w WHERE w.last_seen < ?1
                  AND NOT EXISTS (SELECT 1 FROM Jobs j WHERE j.lock_by = w.id) LIMIT ?2)",
            Cutoff::Unix(unix),
        )
        .await?,
        // A mark lasts an hour (see `claim_outsider_reply`); older ones only take room.
        outsider_replies: batched(
            pool,
            "DELETE FROM outsider_replies WHERE rowid IN
               (SELECT rowid FROM outsider_replies WHERE last_at < ?1 LIMIT ?2)",
            Cutoff::Unix(now_ms() / 1000 - 3600),
        )
        .await?,
    })
}

/// How a table keeps its times.
#[derive(Clone, Copy)]
enum Cutoff {
    /// RFC 3339 text, as autodev's own tables.
    Time(DateTime<Utc>),
    /// Seconds since the epoch, as the queue's tables.
    Unix(i64),
}

/// Runs `sql` (bound to the cutoff and [`BATCH`]) until it deletes less than a batch.
async fn batched(pool: &SqlitePool, sql: &'static str, cutoff: Cutoff) -> anyhow::Result<u64> {
    let mut total = 0;
    loop {
        let query = sqlx::query(sql);
        let query = match cutoff {
            Cutoff::Time(t) => query.bind(t),
            Cutoff::Unix(s) => query.bind(s),
        };
        let n = query.bind(BATCH).execute(pool).await?.rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// The repositories of tasks that came from GitHub.
pub async fn github_repos(pool: &SqlitePool) -> anyhow::Result<Vec<RepoName>> {
    let repos: Vec<String> = sqlx::query_scalar("SELECT DISTINCT repo FROM tasks")
        .fetch_all(pool)
        .await?;
    Ok(repos
        .into_iter()
        .map(RepoName::from_db)
        .filter(|r| !r.is_local())
        .collect())
}

/// Whether an active installation covers `repo`, or a task of it is queued or running: its
/// mirror is still needed.
pub async fn repo_in_use(pool: &SqlitePool, repo: &RepoName) -> anyhow::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM installation_repos r JOIN installations i
                   ON i.id = r.installation_id WHERE i.active = 1 AND r.repo = lower(?1))
              + (SELECT COUNT(*) FROM tasks WHERE repo = ?1 AND state IN ('queued', 'running'))",
    )
    .bind(repo.as_str())
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// The ended tasks of `repo` that still have a worktree.
pub async fn ended_with_worktree_in(
    pool: &SqlitePool,
    repo: &RepoName,
) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks WHERE repo = ? AND worktree IS NOT NULL
           AND state IN ('passed', 'failed', 'error', 'cancelled') ORDER BY pk",
    )
    .bind(repo.as_str())
    .fetch_all(pool)
    .await?)
}

/// What the gauges show: state every process shares, read from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Gauges {
    pub queued: i64,
    pub running: i64,
    /// Tasks holding a worktree.
    pub worktrees: i64,
    /// GitHub effects (outbox jobs) not yet done.
    pub outbox_backlog: i64,
    /// The id of the oldest of them: a ULID, which tells when it was queued.
    pub outbox_oldest: Option<String>,
}

/// The gauges, in one statement.
pub async fn gauges(pool: &SqlitePool) -> anyhow::Result<Gauges> {
    Ok(sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM tasks WHERE state = 'queued') AS queued,
                (SELECT COUNT(*) FROM tasks WHERE state = 'running') AS running,
                (SELECT COUNT(*) FROM tasks WHERE worktree IS NOT NULL) AS worktrees,
                (SELECT COUNT(*) FROM Jobs WHERE job_type = 'autodev.outbox'
                    AND (status IN ('Pending', 'Queued', 'Running')
                         OR (status = 'Failed' AND attempts < max_attempts))) AS outbox_backlog,
                (SELECT MIN(id) FROM Jobs WHERE job_type = 'autodev.outbox'
                    AND (status IN ('Pending', 'Queued', 'Running')
                         OR (status = 'Failed' AND attempts < max_attempts))) AS outbox_oldest",
    )
    .fetch_one(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn count(pool: &SqlitePool, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
    }

    /// Old history of ended tasks goes; a live task's, recent history, and queue jobs that
    /// may still run stay.
    #[tokio::test]
    async fn prune_takes_old_history_of_ended_tasks_only() {
        let (_dir, pool, live) = scratch_store().await;
        let ended = insert_task(
            &pool,
            &NewTask {
                repo: &RepoName::local(),
                task_id: "t-2",
                role: "backend",
                title: "another",
                spec_json: "{}",
                branch: "auto/backend/t-2",
                job_id: None,
            },
        )
        .await
        .unwrap()
        .unwrap();
        sqlx::query("UPDATE tasks SET state = 'passed' WHERE pk = ?")
            .bind(ended)
            .execute(&pool)
            .await
            .unwrap();
        let old = Utc::now() - chrono::Duration::days(40);
        for (task, at) in [(live, old), (ended, old), (ended, Utc::now())] {
            sqlx::query(
                "INSERT INTO task_events (task_pk, run_seq, at, kind, message)
                 VALUES (?, 1, ?, 'queued', 'x')",
            )
            .bind(task)
            .bind(at)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO gate_results (task_pk, run_seq, round, gate, status, duration_ms, output, at)
                 VALUES (?, 1, 1, 'test', 'passed', 1, '', ?)",
            )
            .bind(task)
            .bind(at)
            .execute(&pool)
            .await
            .unwrap();
        }
        let ancient = Utc::now() - chrono::Duration::days(400);
        for (id, at) in [
            ("d-ancient", ancient),
            ("d-old", old),
            ("d-new", Utc::now()),
        ] {
            sqlx::query(
                "INSERT INTO deliveries (id, event, outcome, received_at, payload)
                 VALUES (?, 'issues', 'task', ?, '{}')",
            )
            .bind(id)
            .bind(at)
            .execute(&pool)
            .await
            .unwrap();
        }
        let old_secs = old.timestamp();
        let now_secs = Utc::now().timestamp();
        // (id, status, attempts, done_at): only finished-for-good old jobs go.
        let jobs = [
            ("done-old", "Done", 1, Some(old_secs)),
            ("killed-old", "Killed", 1, Some(old_secs)),
            ("dead-old", "Failed", 25, Some(old_secs)),
            ("retrying-old", "Failed", 2, Some(old_secs)),
            ("pending", "Pending", 0, None),
            ("done-new", "Done", 1, Some(now_secs)),
        ];
        for (id, status, attempts, done_at) in jobs {
            sqlx::query(
                "INSERT INTO Jobs (job, id, job_type, status, attempts, max_attempts, done_at)
                 VALUES (x'00', ?, 'autodev::Task', ?, ?, 25, ?)",
            )
            .bind(id)
            .bind(status)
            .bind(attempts)
            .bind(done_at)
            .execute(&pool)
            .await
            .unwrap();
        }

        let pruned = prune(&pool, Utc::now() - chrono::Duration::days(30))
            .await
            .unwrap();
        assert_eq!(
            (
                pruned.events,
                pruned.gate_results,
                pruned.deliveries,
                pruned.payloads,
                pruned.jobs
            ),
            (1, 1, 1, 2, 3),
            "{pruned:?}"
        );
        // A delivery of 40 days keeps its id, not its payload.
        let kept: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT id, payload FROM deliveries ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(
            kept,
            [("d-new".into(), Some("{}".into())), ("d-old".into(), None)]
        );
        let kept: Vec<String> = sqlx::query_scalar("SELECT id FROM Jobs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(kept, ["done-new", "pending", "retrying-old"]);
        assert_eq!(
            count(&pool, "SELECT COUNT(*) FROM deliveries WHERE id = 'd-new'").await,
            1
        );
        // The live task keeps its old history; the ended one its recent history.
        for task in [live, ended] {
            for table in ["task_events", "gate_results"] {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM {table} WHERE task_pk = ?"
                )))
                .bind(task)
                .fetch_one(&pool)
                .await
                .unwrap();
                assert_eq!(n, 1, "{table} of task {task}");
            }
        }
        // Pruning again finds nothing.
        let again = prune(&pool, Utc::now() - chrono::Duration::days(30))
            .await
            .unwrap();
        assert_eq!(again.total(), 0, "{again:?}");
    }
}
