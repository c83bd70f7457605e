//! What GitHub brings and what autodev did there: deliveries, installations, and a task's
//! GitHub objects (status comment, check run, pull request, `origin`).

use super::*;

pub struct NewDelivery<'a> {
    pub id: &'a str,
    pub event: &'a str,
    pub repo: Option<&'a str>,
    pub installation: Option<i64>,
    /// The parsed domain event, as JSON.
    pub payload: &'a str,
    pub outcome: &'a str,
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

impl Writer<'_> {
    /// Records a delivery; `false` when this delivery id was already recorded (a
    /// redelivery, or a copy that arrived at the same moment).
    pub fn insert_delivery(&self, d: &NewDelivery<'_>) -> anyhow::Result<bool> {
        let inserted: Option<String> = self
            .statement(
                "INSERT INTO deliveries (id, event, repo, installation_id, payload, outcome,
                   received_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (id) DO NOTHING RETURNING id",
            )?
            .query_row(
                rusqlite::params![
                    d.id,
                    d.event,
                    d.repo,
                    d.installation,
                    d.payload,
                    d.outcome,
                    stamp(Utc::now())
                ],
                |row| row.get(0),
            )
            .optional()
            .context("recording delivery")?;
        Ok(inserted.is_some())
    }

    /// Records an installation and, when given, the full list of its repositories.
    pub fn upsert_installation(
        &self,
        id: i64,
        account: &str,
        active: bool,
        repos: Option<&[String]>,
    ) -> anyhow::Result<()> {
        self.statement(
            "INSERT INTO installations (id, account, active, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET account = excluded.account,
               active = excluded.active, updated_at = excluded.updated_at",
        )?
        .execute(rusqlite::params![id, account, active, stamp(Utc::now())])?;
        if let Some(repos) = repos {
            self.statement("DELETE FROM installation_repos WHERE installation_id = ?")?
                .execute([id])?;
            self.add_installation_repos(id, repos)?;
        }
        Ok(())
    }

    pub fn add_installation_repos(&self, id: i64, repos: &[String]) -> anyhow::Result<()> {
        let mut insert = self.statement(
            "INSERT INTO installation_repos (installation_id, repo) VALUES (?, ?)
             ON CONFLICT DO NOTHING",
        )?;
        for repo in repos {
            insert.execute(rusqlite::params![id, repo.to_lowercase()])?;
        }
        Ok(())
    }

    pub fn remove_installation_repos(&self, id: i64, repos: &[String]) -> anyhow::Result<()> {
        let mut delete = self
            .statement("DELETE FROM installation_repos WHERE installation_id = ? AND repo = ?")?;
        for repo in repos {
            delete.execute(rusqlite::params![id, repo.to_lowercase()])?;
        }
        Ok(())
    }
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

/// Whether autodev may answer `login` on issue `issue` of `repo` now: true at most once per
/// `window` for each of them (the claim is recorded).
pub async fn claim_outsider_reply<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
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
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn set_status_comment<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    comment_id: i64,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET status_comment_id = ? WHERE pk = ?")
        .bind(comment_id)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

/// Records that the task's branch on GitHub is at `sha` now; the intent is spent.
pub async fn set_pushed<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    sha: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET pushed_sha = ?, push_intent = NULL WHERE pk = ?")
        .bind(sha)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

/// Records the commit about to be pushed to the task's branch, before the push.
pub async fn set_push_intent<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    sha: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET push_intent = ? WHERE pk = ?")
        .bind(sha)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn set_check_run<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    id: i64,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET check_run_id = ? WHERE pk = ?")
        .bind(id)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

/// What became of a delivery after its job looked at it (e.g. refused).
pub async fn set_delivery_outcome<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    id: &str,
    outcome: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE deliveries SET outcome = ? WHERE id = ?")
        .bind(outcome)
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn set_pr<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    number: i64,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET pr_number = ?, pr_state = 'open' WHERE pk = ?")
        .bind(number)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

/// Records where a local task's branch goes on GitHub, the first time only.
pub async fn set_local_remote<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    url: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET clone_url = ? WHERE pk = ? AND clone_url IS NULL")
        .bind(url)
        .bind(key)
        .execute(ex)
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

/// Tasks with a pull request not yet known to be closed.
pub async fn tasks_with_pr_not_closed(pool: &SqlitePool) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks WHERE pr_number IS NOT NULL
           AND state NOT IN ('queued', 'running') AND (pr_state IS NULL OR pr_state = 'open') ORDER BY pk",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn set_pr_state<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    state: PrState,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET pr_state = ? WHERE pk = ?")
        .bind(state)
        .bind(key)
        .execute(ex)
        .await?;
    Ok(())
}

/// What autodev creates on GitHub, claimed before it is made (see [`claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum GithubObject {
    CheckRun,
    PullRequest,
    StatusComment,
}

/// What claiming a GitHub object found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It exists, with this id: update it, never create another.
    Made(i64),
    /// Ours to create. `fresh` when nobody claimed it before; otherwise a holder died before
    /// recording what it made, so look on GitHub first.
    Ours { fresh: bool },
    /// Another process, or another job of this one, holds the claim and may be making it now:
    /// try again later.
    Busy,
}

/// Claims the `kind` object of task `key` for `head` ('' when there is one per task) for
/// `holder`, for `ttl`. A claim still running is taken over only when `gone` says its holder
/// is known to have died.
pub async fn claim(
    pool: &SqlitePool,
    key: TaskKey,
    kind: GithubObject,
    head: &str,
    holder: &str,
    ttl: Duration,
    gone: impl Fn(&str) -> bool,
) -> anyhow::Result<Claim> {
    let mut tx = begin_write(pool).await?;
    let found: Option<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT holder, until_ms, object_id FROM github_claims
         WHERE task_pk = ? AND kind = ? AND head = ?",
    )
    .bind(key)
    .bind(kind)
    .bind(head)
    .fetch_optional(&mut *tx)
    .await?;
    let now = now_ms();
    let claim = match found {
        Some((_, _, Some(id))) => return Ok(Claim::Made(id)),
        // Held, by another process or another job of this one, and perhaps being made now.
        Some((other, until, None)) if until > now && !gone(&other) => return Ok(Claim::Busy),
        Some(_) => Claim::Ours { fresh: false },
        None => Claim::Ours { fresh: true },
    };
    sqlx::query(
        "INSERT INTO github_claims (task_pk, kind, head, holder, until_ms) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (task_pk, kind, head) DO UPDATE SET holder = excluded.holder,
           until_ms = excluded.until_ms",
    )
    .bind(key)
    .bind(kind)
    .bind(head)
    .bind(holder)
    .bind(now + ttl.as_millis() as i64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(claim)
}

/// Records the id of the object made under a claim; later claims find it made.
pub async fn claim_made<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    kind: GithubObject,
    head: &str,
    object_id: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE github_claims SET object_id = ? WHERE task_pk = ? AND kind = ? AND head = ?",
    )
    .bind(object_id)
    .bind(key)
    .bind(kind)
    .bind(head)
    .execute(ex)
    .await?;
    Ok(())
}

/// Drops `holder`'s claim on an object it did not make.
pub async fn release_claim<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    kind: GithubObject,
    head: &str,
    holder: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "DELETE FROM github_claims
         WHERE task_pk = ? AND kind = ? AND head = ? AND holder = ? AND object_id IS NULL",
    )
    .bind(key)
    .bind(kind)
    .bind(head)
    .bind(holder)
    .execute(ex)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn one_holder_makes_an_object_and_the_others_wait_or_update() {
        let (_dir, pool, key) = scratch_store().await;
        let kind = GithubObject::CheckRun;
        let alive = |_: &str| false;
        let claim_as = |holder: &'static str| claim(&pool, key, kind, "abc", holder, TTL, alive);
        assert_eq!(claim_as("a").await.unwrap(), Claim::Ours { fresh: true });
        // Another process, and another job of the same one, wait while it is being made.
        assert_eq!(claim_as("b").await.unwrap(), Claim::Busy);
        assert_eq!(claim_as("a").await.unwrap(), Claim::Busy);
        // Another commit is another object.
        assert_eq!(
            claim(&pool, key, kind, "def", "b", TTL, alive)
                .await
                .unwrap(),
            Claim::Ours { fresh: true }
        );
        // Made: everyone updates it from now on.
        claim_made(&pool, key, kind, "abc", 7).await.unwrap();
        assert_eq!(claim_as("b").await.unwrap(), Claim::Made(7));
        release_claim(&pool, key, kind, "abc", "a").await.unwrap();
        assert_eq!(
            claim_as("b").await.unwrap(),
            Claim::Made(7),
            "a made object stays"
        );
    }

    #[tokio::test]
    async fn a_claim_given_up_or_left_by_a_dead_holder_is_taken_over_with_a_look_first() {
        let (_dir, pool, key) = scratch_store().await;
        let kind = GithubObject::PullRequest;
        let alive = |_: &str| false;
        assert_eq!(
            claim(&pool, key, kind, "", "a", TTL, alive).await.unwrap(),
            Claim::Ours { fresh: true }
        );
        // Given up (the create failed): the next claims it at once, and looks first.
        release_claim(&pool, key, kind, "", "b").await.unwrap();
        assert_eq!(
            claim(&pool, key, kind, "", "b", TTL, alive).await.unwrap(),
            Claim::Busy,
            "only its holder gives a claim up"
        );
        release_claim(&pool, key, kind, "", "a").await.unwrap();
        assert_eq!(
            claim(&pool, key, kind, "", "b", TTL, alive).await.unwrap(),
            Claim::Ours { fresh: true }
        );
        // Its holder died: taken over at once when that is known, else when it runs out.
        let b_is_gone = |holder: &str| holder == "b";
        assert_eq!(
            claim(&pool, key, kind, "", "c", TTL, b_is_gone)
                .await
                .unwrap(),
            Claim::Ours { fresh: false }
        );
        assert_eq!(
            claim(&pool, key, kind, "", "d", Duration::ZERO, alive)
                .await
                .unwrap(),
            Claim::Busy
        );
        sqlx::query("UPDATE github_claims SET until_ms = 0")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            claim(&pool, key, kind, "", "d", TTL, alive).await.unwrap(),
            Claim::Ours { fresh: false }
        );
    }
}

/// A GitHub side effect the outbox gave up on, waiting for the reconciler.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StalledEffect {
    pub id: i64,
    /// The effect, as the outbox queues it (JSON).
    pub effect: String,
    /// How many times the reconciler has queued it again before.
    pub rounds: i64,
}

/// Keeps an effect the outbox gave up on (`effect` as JSON) for the reconciler.
pub async fn stall_effect(
    pool: &SqlitePool,
    effect: &str,
    rounds: u32,
    reason: &str,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO stalled_effects (effect, rounds, reason, at) VALUES (?, ?, ?, ?)")
        .bind(effect)
        .bind(rounds)
        .bind(reason)
        .bind(Utc::now())
        .execute(pool)
        .await?;
    Ok(())
}

/// The stalled effects, oldest first, up to `limit`.
pub async fn stalled_effects<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    limit: i64,
) -> anyhow::Result<Vec<StalledEffect>> {
    Ok(
        sqlx::query_as("SELECT id, effect, rounds FROM stalled_effects ORDER BY id LIMIT ?")
            .bind(limit)
            .fetch_all(ex)
            .await?,
    )
}

pub async fn forget_stalled<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    id: i64,
) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM stalled_effects WHERE id = ?")
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// GitHub tasks that no run holds whose last push has no record: the process stopped between
/// recording the intent and recording the push (a rebase, say).
pub async fn unsettled_pushes(pool: &SqlitePool) -> anyhow::Result<Vec<TaskRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM tasks WHERE installation_id IS NOT NULL AND push_intent IS NOT NULL
           AND push_intent IS NOT pushed_sha AND state NOT IN ('queued', 'running') ORDER BY pk",
    )
    .fetch_all(pool)
    .await?)
}

/// Forgets the intent to push `intent` (GitHub does not have it: that push never happened).
pub async fn drop_push_intent<'e, E: Executor<'e, Database = Sqlite>>(
    ex: E,
    key: TaskKey,
    intent: &str,
) -> anyhow::Result<()> {
    sqlx::query("UPDATE tasks SET push_intent = NULL WHERE pk = ? AND push_intent = ?")
        .bind(key)
        .bind(intent)
        .execute(ex)
        .await?;
    Ok(())
}
