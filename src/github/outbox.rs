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
    /// Open the pull request of a passed task's branch, with CODEOWNERS and role reviewers.
    OpenPr { task: TaskKey },
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
        Effect::OpenPr { task } => open_pr(engine, gh, *task).await,
        Effect::Status { task } => {
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
            // Lock first, then look: two status jobs of one new task must not both find
            // nothing and both post.
            let _write = gh.write_lock(inst).await?;
            let recorded = db::get_task(&engine.pool, t.pk)
                .await
                .map_err(internal)?
                .and_then(|t| t.status_comment_id);
            let existing = match recorded {
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
            let id = upsert(
                gh,
                inst,
                existing,
                |id| format!("/repos/{owner}/{repo}/issues/comments/{id}"),
                &format!("/repos/{owner}/{repo}/issues/{issue}/comments"),
                &json!({ "body": body }),
            )
            .await?;
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
    if t.state == crate::db::TaskState::Passed && t.pr_number.is_none() {
        body["actions"] = json!([{
            "label": "Open PR",
            "description": "Open a pull request for this branch",
            "identifier": messages::OPEN_PR_ACTION,
        }]);
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
    // A run on an earlier commit (a checkpoint) is concluded as superseded, not left going.
    if let (None, Some(previous)) = (existing, t.check_run_id) {
        let superseded = json!({
            "status": "completed",
            "conclusion": "neutral",
            "output": { "title": "Superseded", "summary": format!("autodev pushed a newer commit of this task: {sha}") },
        });
        gh.call(
            inst,
            "PATCH",
            &format!("/repos/{owner}/{repo}/check-runs/{previous}"),
            Some(&superseded),
        )
        .await?;
    }
    let id = upsert(
        gh,
        inst,
        existing,
        |id| format!("/repos/{owner}/{repo}/check-runs/{id}"),
        &format!("/repos/{owner}/{repo}/check-runs"),
        &body,
    )
    .await?;
    db::set_check_run(&engine.pool, t.pk, id as i64)
        .await
        .map_err(internal)?;
    Ok(())
}

/// Most reviewers GitHub takes in one request.
const MAX_REVIEWERS: usize = 15;

async fn open_pr(engine: &Engine, gh: &GithubClient, task: TaskKey) -> Result<(), ApiError> {
    let Some(t) = db::get_task(&engine.pool, task).await.map_err(internal)? else {
        return Ok(());
    };
    let (Some(installation), Some(sha), None) =
        (t.installation_id, t.pushed_sha.clone(), t.pr_number)
    else {
        return Ok(());
    };
    let Some((owner, repo)) = t.repo.split_once('/') else {
        return Ok(());
    };
    let inst = InstallationId(installation);
    let base = t.base_branch.clone().unwrap_or_default();
    // Look before create: a pull request made before a crash, and not yet recorded, is reused.
    let open = gh
        .call(
            inst,
            "GET",
            &format!(
                "/repos/{owner}/{repo}/pulls?state=open&head={owner}:{}&per_page=100",
                t.branch
            ),
            None,
        )
        .await?;
    let existing = open
        .as_array()
        .and_then(|prs| {
            prs.iter()
                .find(|p| p["head"]["ref"].as_str() == Some(t.branch.as_str()))
        })
        .cloned();
    let pr = match existing {
        Some(pr) => pr,
        None => {
            let gates = db::gate_results(&engine.pool, t.pk)
                .await
                .map_err(internal)?;
            let body = json!({
                "title": crate::gitops::commit_message(&t.role, &t.title, &t.task_id, true).lines().next().unwrap_or_default(),
                "head": t.branch,
                "base": base,
                "body": messages::pr_body(&t, &gates),
                "draft": engine.settings.file.hygiene.draft,
            });
            let _write = gh.write_lock(inst).await?;
            match gh
                .call(
                    inst,
                    "POST",
                    &format!("/repos/{owner}/{repo}/pulls"),
                    Some(&body),
                )
                .await
            {
                Ok(pr) => pr,
                Err(ApiError::Status {
                    status: 422,
                    message,
                    ..
                }) => {
                    report(
                        engine,
                        &t,
                        &format!("could not open a pull request: {message}"),
                    )
                    .await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    };
    let number = pr["number"].as_i64().unwrap_or_default();
    let author = pr["user"]["login"].as_str().unwrap_or_default().to_owned();
    let reviewers = reviewers_for(engine, &t, &base, &sha, &author)
        .await
        .map_err(internal)?;
    if !reviewers.users.is_empty() || !reviewers.teams.is_empty() {
        let body = json!({ "reviewers": reviewers.users, "team_reviewers": reviewers.teams });
        let _write = gh.write_lock(inst).await?;
        let path = format!("/repos/{owner}/{repo}/pulls/{number}/requested_reviewers");
        match gh.call(inst, "POST", &path, Some(&body)).await {
            Ok(_) => {}
            // Not collaborators, or otherwise refused: say so once, do not retry forever.
            Err(ApiError::Status {
                status: 422,
                message,
                ..
            }) => {
                report(engine, &t, &format!("pull request #{number} is open, but GitHub refused its reviewers: {message}")).await;
            }
            Err(e) => return Err(e),
        }
    }
    db::set_pr(&engine.pool, t.pk, number)
        .await
        .map_err(internal)?;
    let _ = db::add_event(
        &engine.pool,
        t.pk,
        t.run_seq,
        "pull_request",
        &format!("pull request #{number} open for {}", t.branch),
    )
    .await;
    push(
        &engine.pool,
        Effect::Status { task: t.pk },
        0,
        Duration::ZERO,
    )
    .await
    .map_err(internal)?;
    Ok(())
}

/// CODEOWNERS (read from the base branch) of the changed files, then the role's reviewers;
/// never the pull request's author; at most fifteen.
async fn reviewers_for(
    engine: &Engine,
    t: &db::TaskRow,
    base: &str,
    head: &str,
    author: &str,
) -> anyhow::Result<crate::codeowners::Reviewers> {
    use crate::codeowners::{self, Codeowners};
    let mirror = engine.mirror_path(&t.repo_name());
    let base_ref = format!("refs/remotes/origin/{base}");
    let mut text = None;
    for location in codeowners::LOCATIONS {
        if let Some(found) = engine.git.read_at(&mirror, &base_ref, location).await? {
            text = Some(found);
            break;
        }
    }
    let owners = Codeowners::parse(text.as_deref().unwrap_or_default());
    let changed = engine.git.changed_between(&mirror, &base_ref, head).await?;
    let mut r = owners.reviewers_for(changed.iter().map(String::as_str));
    if let Some(role) = engine.roles.get(&t.role) {
        for reviewer in &role.reviewers {
            codeowners::add_owner(&mut r, reviewer);
        }
    }
    r.users
        .retain(|u| !u.eq_ignore_ascii_case(author) && !u.ends_with("[bot]"));
    r.users.truncate(MAX_REVIEWERS);
    r.teams.truncate(MAX_REVIEWERS - r.users.len());
    Ok(r)
}

/// A problem worth a person's attention: on the task's timeline and as a reply on its issue.
async fn report(engine: &Engine, t: &db::TaskRow, message: &str) {
    let _ = db::add_event(&engine.pool, t.pk, t.run_seq, "github", message).await;
    let (Some(installation), Some(issue), Some((owner, repo))) =
        (t.installation_id, t.issue_number, t.repo.split_once('/'))
    else {
        return;
    };
    let effect = Effect::Reply {
        installation,
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        issue: issue as u64,
        key: format!("{}-run{}-{}", t.task_id, t.run_seq, short_hash(message)),
        body: message.to_owned(),
    };
    let _ = push(&engine.pool, effect, 0, Duration::ZERO).await;
}

/// Edits the object `existing` names, or creates it; its id either way.
async fn upsert(
    gh: &GithubClient,
    inst: InstallationId,
    existing: Option<u64>,
    patch_path: impl Fn(u64) -> String,
    post_path: &str,
    body: &Value,
) -> Result<u64, ApiError> {
    match existing {
        Some(id) => {
            gh.call(inst, "PATCH", &patch_path(id), Some(body)).await?;
            Ok(id)
        }
        None => {
            let created = gh.call(inst, "POST", post_path, Some(body)).await?;
            Ok(created["id"].as_u64().unwrap_or_default())
        }
    }
}

/// A short stable fingerprint of a message, for reply keys.
fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

/// A database failure inside an effect: retried like a network fault.
fn internal(e: anyhow::Error) -> ApiError {
    ApiError::Transport {
        method: "DB",
        path: String::new(),
        message: format!("{e:#}"),
    }
}
