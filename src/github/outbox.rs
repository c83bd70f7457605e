//! GitHub side effects as durable jobs: reactions, replies and status comments. Each effect is
//! idempotent (look before create), so a job that runs twice posts nothing twice. A failure
//! GitHub says will pass (5xx, rate limits) is queued again after the wait it asks for; one
//! that will not (422, 404) is logged and dropped, not retried forever.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::TaskBuilder;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::client::{ApiError, GithubClient, Retry};
use super::event::InstallationId;
use super::messages;
use crate::db;
use crate::engine::Engine;
use crate::ids::TaskKey;

pub const OUTBOX_QUEUE: &str = "autodev.outbox";
const MAX_ATTEMPTS: u32 = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    Reaction {
        installation: i64,
        owner: String,
        repo: String,
        issue: u64,
        content: String,
    },
    Reply {
        installation: i64,
        owner: String,
        repo: String,
        issue: u64,
        key: String,
        body: String,
    },
    /// Create or edit the task's status comment from its current state.
    Status { task: TaskKey },
    /// Create or conclude the task's check run on the commit last pushed.
    CheckRun { task: TaskKey },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxJob {
    pub effect: Effect,
    pub attempt: u32,
}

/// Queues an effect, to run after `delay`.
pub async fn push(
    pool: &sqlx::SqlitePool,
    effect: Effect,
    attempt: u32,
    delay: Duration,
) -> anyhow::Result<()> {
    let args = serde_json::to_vec(&OutboxJob { effect, attempt })?;
    let job = TaskBuilder::new(args)
        .task_id(apalis::prelude::TaskId::from_ulid(ulid::Ulid::generate()))
        .run_after(delay)
        .build();
    let mut conn = pool.acquire().await?;
    apalis_sqlite::queries::push_tasks(&mut *conn, OUTBOX_QUEUE, &[job])
        .await
        .map_err(|e| anyhow::anyhow!("queueing a GitHub side effect: {e}"))
}

/// Runs one outbox job; retryable failures are queued again with GitHub's wait.
pub async fn run(engine: &Arc<Engine>, job: OutboxJob) -> anyhow::Result<()> {
    let Some(gh) = engine.github.clone() else {
        return Ok(());
    };
    let result = perform(engine, &gh, &job.effect).await;
    let Err(e) = result else { return Ok(()) };
    let wait = match e.retry() {
        Retry::Never => None,
        Retry::After(d) => Some(d),
        Retry::Backoff => Some(Duration::from_secs(2u64.pow(job.attempt.min(8)))),
    };
    match wait {
        Some(d) if job.attempt + 1 < MAX_ATTEMPTS => {
            tracing::warn!(
                attempt = job.attempt,
                "GitHub side effect failed, again in {}s: {e}",
                d.as_secs()
            );
            push(&engine.pool, job.effect, job.attempt + 1, d).await
        }
        _ => {
            tracing::error!("GitHub side effect dropped: {e}");
            if let Effect::Status { task } = job.effect
                && let Ok(Some(t)) = db::get_task(&engine.pool, task).await
            {
                let _ = db::add_event(
                    &engine.pool,
                    task,
                    t.run_seq,
                    "github",
                    &format!("could not update GitHub: {e}"),
                )
                .await;
            }
            Ok(())
        }
    }
}

async fn perform(engine: &Engine, gh: &GithubClient, effect: &Effect) -> Result<(), ApiError> {
    match effect {
        Effect::Reaction {
            installation,
            owner,
            repo,
            issue,
            content,
        } => {
            let inst = InstallationId(*installation);
            let _write = gh.write_lock(inst).await?;
            let path = format!("/repos/{owner}/{repo}/issues/{issue}/reactions");
            gh.call(inst, "POST", &path, Some(&json!({ "content": content })))
                .await?;
            Ok(())
        }
        Effect::Reply {
            installation,
            owner,
            repo,
            issue,
            key,
            body,
        } => {
            let inst = InstallationId(*installation);
            let marker = messages::reply_marker(key);
            if find_comment(gh, inst, owner, repo, *issue, &marker)
                .await?
                .is_some()
            {
                return Ok(());
            }
            let _write = gh.write_lock(inst).await?;
            let path = format!("/repos/{owner}/{repo}/issues/{issue}/comments");
            gh.call(
                inst,
                "POST",
                &path,
                Some(&json!({ "body": format!("{marker}\n{body}") })),
            )
            .await?;
            Ok(())
        }
        Effect::CheckRun { task } => check_run(engine, gh, *task).await,
        Effect::Status { task } => {
            let internal = |e: anyhow::Error| ApiError::Transport {
                method: "DB",
                path: String::new(),
                message: format!("{e:#}"),
            };
            let Some(t) = db::get_task(&engine.pool, *task).await.map_err(internal)? else {
                return Ok(());
            };
            let (Some(installation), Some(issue)) = (t.installation_id, t.issue_number) else {
                return Ok(());
            };
            let Some((owner, repo)) = t.repo.split_once('/') else {
                return Ok(());
            };
            let inst = InstallationId(installation);
            let gates = db::gate_results(&engine.pool, t.pk)
                .await
                .map_err(internal)?;
            let body = messages::status_comment(&t, &gates, engine.settings.public_url.as_deref());
            let existing = match t.status_comment_id {
                Some(id) => Some(id as u64),
                None => {
                    find_comment(
                        gh,
                        inst,
                        owner,
                        repo,
                        issue as u64,
                        &messages::status_marker(&t.task_id),
                    )
                    .await?
                }
            };
            let _write = gh.write_lock(inst).await?;
            let id = match existing {
                Some(id) => {
                    gh.call(
                        inst,
                        "PATCH",
                        &format!("/repos/{owner}/{repo}/issues/comments/{id}"),
                        Some(&json!({ "body": body })),
                    )
                    .await?;
                    id
                }
                None => {
                    let created = gh
                        .call(
                            inst,
                            "POST",
                            &format!("/repos/{owner}/{repo}/issues/{issue}/comments"),
                            Some(&json!({ "body": body })),
                        )
                        .await?;
                    created["id"].as_u64().unwrap_or_default()
                }
            };
            if t.status_comment_id != Some(id as i64) {
                db::set_status_comment(&engine.pool, t.pk, id as i64)
                    .await
                    .map_err(internal)?;
            }
            Ok(())
        }
    }
}

/// The id of the first comment on the issue holding `marker`.
async fn find_comment(
    gh: &GithubClient,
    inst: InstallationId,
    owner: &str,
    repo: &str,
    issue: u64,
    marker: &str,
) -> Result<Option<u64>, ApiError> {
    for page in 1..=10 {
        let path =
            format!("/repos/{owner}/{repo}/issues/{issue}/comments?per_page=100&page={page}");
        let list = gh.call(inst, "GET", &path, None).await?;
        let Value::Array(items) = list else {
            return Ok(None);
        };
        if let Some(c) = items
            .iter()
            .find(|c| c["body"].as_str().is_some_and(|b| b.contains(marker)))
        {
            return Ok(c["id"].as_u64());
        }
        if items.len() < 100 {
            break;
        }
    }
    Ok(None)
}

async fn check_run(engine: &Engine, gh: &GithubClient, task: TaskKey) -> Result<(), ApiError> {
    let internal = |e: anyhow::Error| ApiError::Transport {
        method: "DB",
        path: String::new(),
        message: format!("{e:#}"),
    };
    let Some(t) = db::get_task(&engine.pool, task).await.map_err(internal)? else {
        return Ok(());
    };
    let (Some(installation), Some(sha)) = (t.installation_id, t.pushed_sha.clone()) else {
        return Ok(());
    };
    let Some((owner, repo)) = t.repo.split_once('/') else {
        return Ok(());
    };
    let inst = InstallationId(installation);
    let name = format!("autodev/{}", t.role);
    let gates = db::gate_results(&engine.pool, t.pk)
        .await
        .map_err(internal)?;
    let (title, summary, text) = messages::check_output(&t, &gates);
    let mut body = json!({
        "name": name,
        "head_sha": sha,
        "external_id": t.task_id,
        "output": { "title": title, "summary": summary, "text": text },
    });
    match messages::check_conclusion(&t) {
        Some(c) => {
            body["status"] = json!("completed");
            body["conclusion"] = json!(c);
            body["completed_at"] =
                json!(t.finished_at.unwrap_or_else(chrono::Utc::now).to_rfc3339());
        }
        None => body["status"] = json!("in_progress"),
    }
    if let Some(url) = &engine.settings.public_url {
        body["details_url"] = json!(format!("{url}/repos/{}/tasks/{}", t.repo, t.task_id));
    }
    // Look before create: this task's run on this commit, by external id.
    let list = gh
        .call(
            inst,
            "GET",
            &format!(
                "/repos/{owner}/{repo}/commits/{sha}/check-runs?check_name={name}&per_page=100"
            ),
            None,
        )
        .await?;
    let existing = list["check_runs"]
        .as_array()
        .and_then(|runs| {
            runs.iter()
                .find(|r| r["external_id"].as_str() == Some(t.task_id.as_str()))
        })
        .and_then(|r| r["id"].as_u64());
    let _write = gh.write_lock(inst).await?;
    let id = match existing {
        Some(id) => {
            gh.call(
                inst,
                "PATCH",
                &format!("/repos/{owner}/{repo}/check-runs/{id}"),
                Some(&body),
            )
            .await?;
            id
        }
        None => {
            let created = gh
                .call(
                    inst,
                    "POST",
                    &format!("/repos/{owner}/{repo}/check-runs"),
                    Some(&body),
                )
                .await?;
            created["id"].as_u64().unwrap_or_default()
        }
    };
    db::set_check_run(&engine.pool, t.pk, id as i64)
        .await
        .map_err(internal)?;
    Ok(())
}
