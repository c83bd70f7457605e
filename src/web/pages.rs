//! Task pages for people: the check run's Details link and the status comment's link lead
//! here. A browser following a link from GitHub carries no bearer token, so with
//! `AUTODEV_API_TOKEN` set a page needs the signature autodev puts into the links it makes
//! (an HMAC of the task's name under that token): whoever can see the link can read the page,
//! nobody can guess another's.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::Settings;
use crate::core::ids::RepoName;
use crate::engine::Engine;
use crate::store::{self, EventRow, GateRow, TaskRow};

#[derive(Deserialize)]
pub struct Signed {
    sig: Option<String>,
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage<'a> {
    title: &'a str,
    task_id: &'a str,
    repo: &'a str,
    state: &'a str,
    live: bool,
    role: &'a str,
    branch: &'a str,
    base_branch: Option<&'a str>,
    pull_request: Option<i64>,
    pr_url: Option<String>,
    provider: Option<&'a str>,
    rounds: i64,
    runs: i64,
    head_sha: Option<&'a str>,
    created_at: String,
    finished_at: Option<String>,
    last_error: Option<&'a str>,
    gates: Vec<GateRow>,
    events: Vec<EventRow>,
}

fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `/view/tasks/{id}`: a local task.
pub async fn local_page(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<Signed>,
) -> Response {
    show(&engine, &RepoName::local(), &id, q).await
}

/// `/view/repos/{owner}/{repo}/tasks/{id}`.
pub async fn repo_page(
    State(engine): State<Arc<Engine>>,
    Path((owner, repo, id)): Path<(String, String, String)>,
    Query(q): Query<Signed>,
) -> Response {
    show(&engine, &RepoName::github(&owner, &repo), &id, q).await
}

/// The signature is checked before the task is looked up, so unsigned requests learn
/// nothing, not even whether a task exists.
async fn show(engine: &Engine, repo: &RepoName, id: &str, q: Signed) -> Response {
    let settings = &engine.settings;
    if settings.api_token.is_some() {
        let want = crate::links::signature(settings, repo.as_str(), id);
        let given = q.sig.unwrap_or_default();
        if !crate::web::api::constant_time_eq(given.as_bytes(), want.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                "this page needs the signed link autodev posts (the check run's Details, the status comment, `autodev status`)",
            )
                .into_response();
        }
    }
    match store::find_task(&engine.pool, repo, id).await {
        Ok(Some(row)) => page(engine, row).await,
        Ok(None) => not_found(id),
        Err(e) => failure(e),
    }
}

async fn page(engine: &Engine, t: TaskRow) -> Response {
    let settings = &engine.settings;
    let (events, gates) = match (
        store::events(&engine.pool, t.pk).await,
        store::gate_results(&engine.pool, t.pk).await,
    ) {
        (Ok(e), Ok(g)) => (e, g),
        (Err(e), _) | (_, Err(e)) => return failure(e),
    };
    let pr_url = t.pr_number.and_then(|n| pr_url(settings, &t, n));
    let page = TaskPage {
        title: &t.title,
        task_id: &t.task_id,
        repo: &t.repo,
        state: t.state.as_str(),
        live: !t.state.is_terminal(),
        role: &t.role,
        branch: &t.branch,
        base_branch: t.base_branch.as_deref(),
        pull_request: t.pr_number,
        pr_url,
        provider: t.provider.as_deref(),
        rounds: t.rounds,
        runs: t.run_seq,
        head_sha: t.head_sha.as_deref(),
        created_at: stamp(t.created_at),
        finished_at: t.finished_at.map(stamp),
        last_error: t.last_error.as_deref(),
        gates,
        events,
    };
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => failure(e.into()),
    }
}

/// The pull request on GitHub's web host (github.com, or the Enterprise Server's).
fn pr_url(settings: &Settings, t: &TaskRow, number: i64) -> Option<String> {
    let host = crate::bot::origin::git_host(&settings.github_api_url)?;
    let full_name = match t.clone_url.as_deref() {
        Some(url) if t.repo == "local" => crate::bot::origin::parse(url, &settings.github_api_url)
            .ok()?
            .full_name(),
        _ if t.repo != "local" => t.repo.clone(),
        _ => return None,
    };
    Some(format!("https://{host}/{full_name}/pull/{number}"))
}

fn not_found(id: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no task `{id}`")).into_response()
}

fn failure(e: anyhow::Error) -> Response {
    tracing::error!("task page: {e:#}");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}
