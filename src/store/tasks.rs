//! Task rows: creating them, finding them, and what a run writes as it goes.

use super::*;

pub struct NewTask<'a> {
    pub repo: &'a RepoName,
    pub task_id: &'a str,
    pub role: &'a str,
    pub title: &'a str,
    pub spec_json: &'a str,
    pub branch: &'a str,
    /// The queue job that runs it, when it is queued as it is written.
    pub job_id: Option<&'a str>,
}

/// A queued task (its fields in [`NewTask`]'s order, then the time twice); `pk` back, none
/// when the repository already has a task with that id. Shared with the group-commit writer.
pub(super) const INSERT_TASK: &str = "INSERT INTO tasks (repo, task_id, role, title, spec, branch,
       job_id, state, created_at, updated_at)
     VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)
     ON CONFLICT (repo, task_id) DO NOTHING
     RETURNING pk";

/// Inserts a queued task; `Ok(None)` when the repository already has a task with that id.
pub async fn insert_task<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    t: &NewTask<'_>,
) -> anyhow::Result<Option<TaskKey>> {
    let now = Utc::now();
    let res = sqlx::query_scalar::<_, TaskKey>(INSERT_TASK)
        .bind(t.repo.as_str())
        .bind(t.task_id)
        .bind(t.role)
        .bind(t.title)
        .bind(t.spec_json)
        .bind(t.branch)
        .bind(t.job_id)
        .bind(now)
        .bind(now)
        .fetch_optional(ex)
        .await
        .context("inserting task")?;
    Ok(res)
}

impl Writer<'_> {
    /// [`insert_task`], in a group commit.
    pub fn insert_task(&self, t: &NewTask<'_>) -> anyhow::Result<Option<TaskKey>> {
        let now = stamp(Utc::now());
        self.statement(INSERT_TASK)?
            .query_row(
                rusqlite::params![
                    t.repo.as_str(),
                    t.task_id,
                    t.role,
                    t.title,
                    t.spec_json,
                    t.branch,
                    t.job_id,
                    now,
                    now
                ],
                |row| row.get(0).map(TaskKey),
            )
            .optional()
            .context("inserting task")
    }

    /// The issue a task came from, if any (`None` too when there is no such task).
    pub fn task_issue(&self, key: TaskKey) -> anyhow::Result<Option<i64>> {
        Ok(self
            .statement("SELECT issue_number FROM tasks WHERE pk = ?")?
            .query_row([key.0], |row| row.get(0))
            .optional()?
            .flatten())
    }
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

pub async fn get_task<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
) -> anyhow::Result<Option<TaskRow>> {
    Ok(sqlx::query_as("SELECT * FROM tasks WHERE pk = ?")
        .bind(key)
        .fetch_optional(ex)
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

/// The task `task_id` of `repo`; in a write transaction, what the transaction sees.
pub async fn find_task<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    repo: &RepoName,
    task_id: &str,
) -> anyhow::Result<Option<TaskRow>> {
    Ok(
        sqlx::query_as("SELECT * FROM tasks WHERE repo = ? AND task_id = ?")
            .bind(repo.as_str())
            .bind(task_id)
            .fetch_optional(ex)
            .await?,
    )
}

/// Tasks, newest first.
pub async fn list_tasks(
    pool: &SqlitePool,
    state: Option<TaskState>,
    repo: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks WHERE (?1 IS NULL OR state = ?1) AND (?3 IS NULL OR repo = lower(?3))
         ORDER BY pk DESC LIMIT ?2",
    )
    .bind(state)
    .bind(limit)
    .bind(repo)
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

/// The round reached, the provider that ran it, and what it cost (added to what the task
/// has cost so far, over all rounds and runs).
pub async fn set_progress<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
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

pub async fn clear_worktree<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE tasks SET worktree = NULL WHERE pk = ? AND state NOT IN ('queued', 'running')",
    )
    .bind(key)
    .execute(ex)
    .await?;
    Ok(())
}

/// A passed task whose branch no longer passes after hygiene (a rebase) is failed.
pub async fn fail_after_hygiene<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    error: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE tasks SET state = 'failed', last_error = ?, updated_at = ? WHERE pk = ? AND state = 'passed'",
    )
    .bind(error)
    .bind(Utc::now())
    .bind(key)
    .execute(ex)
    .await?;
    Ok(())
}

/// The branch's new head after it caught up with its base at `base_sha`.
pub async fn set_head<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    sha: &str,
    base_sha: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET head_sha = ?, base_sha = ? WHERE pk = ?")
        .bind(sha)
        .bind(base_sha)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}
