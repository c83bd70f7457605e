//! What the dashboard reads: tasks by filter, counts by state, repository, role and provider,
//! what runs now with its last event, the live tail of a run's output, and the marks a page's
//! stream compares to see that something changed.

use super::*;

/// Which tasks the dashboard lists; `None` is any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub repo: Option<String>,
    pub role: Option<String>,
    pub provider: Option<String>,
    /// Words in the task's id or title.
    pub search: Option<String>,
}

/// `text` as a `LIKE` pattern that matches it anywhere, its own `%` and `_` taken literally.
fn contains(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The tasks `filter` lets through, newest first, at most `limit`.
pub async fn filtered_tasks(
    pool: &SqlitePool,
    filter: &TaskFilter,
    limit: i64,
) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks
         WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR repo = ?2)
           AND (?3 IS NULL OR role = ?3) AND (?4 IS NULL OR provider = ?4)
           AND (?5 IS NULL OR task_id LIKE ?5 ESCAPE '\\' OR title LIKE ?5 ESCAPE '\\')
         ORDER BY pk DESC LIMIT ?6",
    )
    .bind(filter.state)
    .bind(filter.repo.as_deref())
    .bind(filter.role.as_deref())
    .bind(filter.provider.as_deref())
    .bind(filter.search.as_deref().map(contains))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Totals over the tasks `filter` lets through (all of them, not only those listed).
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct Totals {
    pub tasks: i64,
    pub cost_usd: f64,
    pub rounds: i64,
}

pub async fn totals(pool: &SqlitePool, filter: &TaskFilter) -> anyhow::Result<Totals> {
    Ok(sqlx::query_as(
        "SELECT COUNT(*) AS tasks, COALESCE(SUM(cost_usd), 0.0) AS cost_usd,
                COALESCE(SUM(rounds), 0) AS rounds
         FROM tasks
         WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR repo = ?2)
           AND (?3 IS NULL OR role = ?3) AND (?4 IS NULL OR provider = ?4)
           AND (?5 IS NULL OR task_id LIKE ?5 ESCAPE '\\' OR title LIKE ?5 ESCAPE '\\')",
    )
    .bind(filter.state)
    .bind(filter.repo.as_deref())
    .bind(filter.role.as_deref())
    .bind(filter.provider.as_deref())
    .bind(filter.search.as_deref().map(contains))
    .fetch_one(pool)
    .await?)
}

/// How many tasks have each value of one column.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Count {
    pub value: String,
    pub tasks: i64,
}

/// The values of each facet the dashboard filters by, with their counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facets {
    pub states: Vec<Count>,
    pub repos: Vec<Count>,
    pub roles: Vec<Count>,
    pub providers: Vec<Count>,
}

pub async fn facets(pool: &SqlitePool) -> anyhow::Result<Facets> {
    let count = |sql: &'static str| sqlx::query_as::<_, Count>(sql).fetch_all(pool);
    Ok(Facets {
        states: count(
            "SELECT state AS value, COUNT(*) AS tasks FROM tasks GROUP BY state ORDER BY state",
        )
        .await?,
        repos: count(
            "SELECT repo AS value, COUNT(*) AS tasks FROM tasks GROUP BY repo ORDER BY repo",
        )
        .await?,
        roles: count(
            "SELECT role AS value, COUNT(*) AS tasks FROM tasks GROUP BY role ORDER BY role",
        )
        .await?,
        providers: count(
            "SELECT provider AS value, COUNT(*) AS tasks FROM tasks WHERE provider IS NOT NULL
             GROUP BY provider ORDER BY provider",
        )
        .await?,
    })
}

/// The last thing a task's timeline says.
pub async fn last_event(pool: &SqlitePool, key: TaskKey) -> anyhow::Result<Option<EventRow>> {
    Ok(sqlx::query_as(
        "SELECT run_seq, at, kind, message FROM task_events WHERE task_pk = ?
         ORDER BY id DESC LIMIT 1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?)
}

/// Something that changes whenever what a page shows may have: a task, an event, an output
/// tail. Cheap (indexes only), so a stream can ask every second.
pub async fn board_mark(pool: &SqlitePool) -> anyhow::Result<(i64, i64, i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT COALESCE((SELECT MAX(pk) FROM tasks), 0),
                COALESCE((SELECT MAX(id) FROM task_events), 0),
                COALESCE((SELECT MAX(updated_ms) FROM task_output), 0),
                (SELECT COUNT(*) FROM tasks WHERE state IN ('queued', 'running'))",
    )
    .fetch_one(pool)
    .await?)
}

/// The same for one task's page.
pub async fn task_mark(pool: &SqlitePool, key: TaskKey) -> anyhow::Result<(i64, i64, String)> {
    Ok(sqlx::query_as(
        "SELECT COALESCE((SELECT MAX(id) FROM task_events WHERE task_pk = ?1), 0),
                COALESCE((SELECT updated_ms FROM task_output WHERE task_pk = ?1), 0),
                COALESCE((SELECT updated_at || state || rounds FROM tasks WHERE pk = ?1), '')",
    )
    .bind(key)
    .fetch_one(pool)
    .await?)
}

/// A run's output tail, as the worker last wrote it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutputTail {
    pub run_seq: i64,
    pub text: String,
    pub updated_ms: i64,
}

/// Writes the tail of run `run_seq`'s output (replacing an earlier run's).
pub async fn set_output<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    run_seq: i64,
    text: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO task_output (task_pk, run_seq, text, updated_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT (task_pk) DO UPDATE SET run_seq = excluded.run_seq, text = excluded.text,
           updated_ms = MAX(excluded.updated_ms, task_output.updated_ms + 1)",
    )
    .bind(key)
    .bind(run_seq)
    .bind(text)
    .bind(now_ms())
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn output(pool: &SqlitePool, key: TaskKey) -> anyhow::Result<Option<OutputTail>> {
    Ok(
        sqlx::query_as("SELECT run_seq, text, updated_ms FROM task_output WHERE task_pk = ?")
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_takes_wildcards_literally() {
        assert_eq!(contains("a%b_c"), "%a\\%b\\_c%");
        assert_eq!(contains(""), "%%");
    }
}
