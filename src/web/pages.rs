//! Task pages for people: the check run's Details link, the status comment's link and the
//! dashboard lead here. A browser following a link from GitHub carries no bearer token, so
//! with `AUTODEV_API_TOKEN` set a page needs the signature autodev puts into the links it
//! makes (an HMAC of the task's name under that token), or a signed-in session: whoever can
//! see the link can read the page, nobody can guess another's. Only a signed-in session (or
//! a server without a token) gets the cancel and retry buttons. A page stays live through a
//! stream of server-sent events that re-reads the task from the database.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::Settings;
use crate::core::ids::RepoName;
use crate::engine::Engine;
use crate::store::{self, EventRow, GateRow, TaskRow};
use crate::web::guard::{StreamTurn, Streams};
use crate::web::session::Viewer;

/// How often a page's stream looks at the database for a change.
pub const STREAM_EVERY: Duration = Duration::from_secs(1);

/// How long one stream stays open; the browser then opens the next, which is checked again
/// (a sign-out or an expired session ends there).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);

/// Where a request came from, when the server knows.
pub fn peer(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
}

pub fn too_many_streams() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "30")],
        "too many live pages are open; this page goes on without updates",
    )
        .into_response()
}

/// `events` as a stream of server-sent events that ends when the process stops or after
/// [`STREAM_LIFETIME`], and holds `turn` while it is open.
pub fn sse<S>(engine: &Engine, turn: StreamTurn, events: S) -> Response
where
    S: futures::Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    use futures::StreamExt;
    let stop = engine.stopping.clone();
    let ended = async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(STREAM_LIFETIME) => {}
        }
    };
    let events = events.take_until(ended).map(move |event| {
        let _held = &turn;
        event
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
pub struct Signed {
    sig: Option<String>,
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage<'a> {
    title: &'a str,
    task_id: &'a str,
    state: &'a str,
    live: bool,
    /// Whether the viewer came from the dashboard (is signed in, or needs no sign-in).
    dashboard: bool,
    may_act: bool,
    /// The task's JSON API path (`/tasks/{id}` or `/repos/{o}/{r}/tasks/{id}`).
    api: String,
    csrf_json: String,
    stream: String,
    body: String,
}

/// What changes while a task runs: the part of its page the stream sends again.
#[derive(Template)]
#[template(path = "task_live.html")]
struct TaskLive<'a> {
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
    cost: Option<String>,
    head_sha: Option<&'a str>,
    created_at: String,
    finished_at: Option<String>,
    duration: String,
    last_error: Option<&'a str>,
    /// Whether the viewer may see the agent's output.
    output_shown: bool,
    output: Option<String>,
    output_run: Option<i64>,
    gates: Vec<GateRow>,
    events: Vec<EventRow>,
}

pub fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How long a task has run (or ran): `1h 02m`, `3m 05s`, `12s`; empty before it started.
pub fn duration(t: &TaskRow, now: DateTime<Utc>) -> String {
    let Some(start) = t.started_at else {
        return String::new();
    };
    let end = if t.state.is_terminal() {
        t.finished_at.unwrap_or(t.updated_at)
    } else {
        now
    };
    let s = (end - start).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

pub fn money(usd: f64) -> String {
    format!("${usd:.2}")
}

/// `/view/tasks/{id}`: a local task.
pub async fn local_page(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<Signed>,
    headers: HeaderMap,
) -> Response {
    show(&engine, &RepoName::local(), &id, q, &headers).await
}

/// `/view/repos/{owner}/{repo}/tasks/{id}`.
pub async fn repo_page(
    State(engine): State<Arc<Engine>>,
    Path((owner, repo, id)): Path<(String, String, String)>,
    Query(q): Query<Signed>,
    headers: HeaderMap,
) -> Response {
    show(&engine, &RepoName::github(&owner, &repo), &id, q, &headers).await
}

/// A stream's request: who asks, from where, and the turns streams take.
pub struct Asker {
    headers: HeaderMap,
    peer: Option<std::net::IpAddr>,
    streams: Arc<Streams>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Asker {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            headers: parts.headers.clone(),
            peer: peer(&parts.extensions),
            streams: parts
                .extensions
                .get::<Arc<Streams>>()
                .cloned()
                .unwrap_or_else(Streams::new),
        })
    }
}

impl Asker {
    pub fn viewer(&self, engine: &Engine) -> Viewer {
        Viewer::of(&engine.settings, &self.headers)
    }

    /// A turn to hold a stream open; `None` when there are too many (answer
    /// [`too_many_streams`]).
    pub fn turn(&self) -> Option<StreamTurn> {
        self.streams.turn(self.peer)
    }
}

/// `/view/tasks/{id}/events`: the page's stream.
pub async fn local_stream(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(q): Query<Signed>,
    asker: Asker,
) -> Response {
    stream(engine, RepoName::local(), id, q, asker).await
}

/// `/view/repos/{owner}/{repo}/tasks/{id}/events`.
pub async fn repo_stream(
    State(engine): State<Arc<Engine>>,
    Path((owner, repo, id)): Path<(String, String, String)>,
    Query(q): Query<Signed>,
    asker: Asker,
) -> Response {
    stream(engine, RepoName::github(&owner, &repo), id, q, asker).await
}

/// Whether the request may read the page: no token configured, the link's signature, or a
/// signed-in session. Checked before the task is looked up, so a refused request learns
/// nothing, not even whether a task exists.
fn may_read(settings: &Settings, repo: &RepoName, id: &str, q: &Signed, viewer: &Viewer) -> bool {
    if settings.api_token.is_none() || matches!(viewer, Viewer::SignedIn { .. }) {
        return true;
    }
    let want = crate::links::signature(settings, repo.as_str(), id);
    let given = q.sig.as_deref().unwrap_or_default();
    crate::web::api::constant_time_eq(given.as_bytes(), want.as_bytes())
}

fn unsigned() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        "this page needs the signed link autodev posts (the check run's Details, the status comment, `autodev status`), or signing in at /login",
    )
        .into_response()
}

async fn show(
    engine: &Engine,
    repo: &RepoName,
    id: &str,
    q: Signed,
    headers: &HeaderMap,
) -> Response {
    let settings = &engine.settings;
    let viewer = Viewer::of(settings, headers);
    if !may_read(settings, repo, id, &q, &viewer) {
        return unsigned();
    }
    let t = match store::find_task(&engine.pool, repo, id).await {
        Ok(Some(row)) => row,
        Ok(None) => return not_found(id),
        Err(e) => return failure(e),
    };
    let body = match live_part(engine, &t, viewer.may_act()).await {
        Ok(body) => body,
        Err(e) => return failure(e),
    };
    let view = crate::links::path(settings, &t.repo, &t.task_id);
    let (path, query) = view.split_once('?').unwrap_or((view.as_str(), ""));
    let stream = match query {
        "" => format!("{path}/events"),
        q => format!("{path}/events?{q}"),
    };
    let api = if t.repo == "local" {
        format!("/tasks/{}", t.task_id)
    } else {
        format!("/repos/{}/tasks/{}", t.repo, t.task_id)
    };
    let page = TaskPage {
        title: &t.title,
        task_id: &t.task_id,
        state: t.state.as_str(),
        live: !t.state.is_terminal(),
        dashboard: viewer.may_act(),
        may_act: viewer.may_act(),
        api,
        csrf_json: script_string(viewer.csrf()),
        stream,
        body,
    };
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => failure(e.into()),
    }
}

/// `s` as a JavaScript string literal that is safe inside a `<script>` element.
pub fn script_string(s: &str) -> String {
    serde_json::to_string(s)
        .expect("a string serialises")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The part of a task's page that changes while it runs, rendered. The agent's raw output
/// only for operators (`show_output`): a signed link is posted where the author reads
/// it, and an agent can be talked into printing its key in a form no blotting recognises.
async fn live_part(engine: &Engine, t: &TaskRow, show_output: bool) -> anyhow::Result<String> {
    let (events, gates, output) = tokio::try_join!(
        store::events(&engine.pool, t.pk),
        store::gate_results(&engine.pool, t.pk),
        store::output(&engine.pool, t.pk),
    )?;
    let settings = &engine.settings;
    let pr_url = t.pr_number.and_then(|n| pr_url(settings, t, n));
    let part = TaskLive {
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
        cost: t.cost_usd.map(money),
        head_sha: t.head_sha.as_deref(),
        created_at: stamp(t.created_at),
        finished_at: t.finished_at.map(stamp),
        duration: duration(t, Utc::now()),
        last_error: t.last_error.as_deref(),
        output_shown: show_output,
        output_run: output.as_ref().map(|o| o.run_seq),
        output: output.map(|o| o.text).filter(|t| !t.is_empty()),
        gates,
        events,
    };
    Ok(part.render()?)
}

/// The page's stream: an `update` event with the page's changing part whenever the task, its
/// timeline or its output changed in the database, and an `end` event once it has ended.
async fn stream(
    engine: Arc<Engine>,
    repo: RepoName,
    id: String,
    q: Signed,
    asker: Asker,
) -> Response {
    let viewer = asker.viewer(&engine);
    if !may_read(&engine.settings, &repo, &id, &q, &viewer) {
        return unsigned();
    }
    let Some(turn) = asker.turn() else {
        return too_many_streams();
    };
    let t = match store::find_task(&engine.pool, &repo, &id).await {
        Ok(Some(row)) => row,
        Ok(None) => return not_found(&id),
        Err(e) => return failure(e),
    };
    let key = t.pk;
    let show_output = viewer.may_act();
    let events = futures::stream::unfold(
        (engine.clone(), None, false),
        move |(engine, last, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let mark = store::task_mark(&engine.pool, key).await.ok();
                if mark.is_some() && mark != last {
                    // A read that fails is tried again at the next look, not taken for an end.
                    if let Ok(Some(row)) = store::get_task(&engine.pool, key).await
                        && let Ok(html) = live_part(&engine, &row, show_output).await
                    {
                        let done = row.state.is_terminal();
                        let event = Event::default().event("update").data(html);
                        return Some((Ok::<_, Infallible>(event), (engine, mark, done)));
                    }
                }
                tokio::time::sleep(STREAM_EVERY).await;
            }
        },
    );
    let ending = futures::stream::once(async {
        Ok::<_, Infallible>(Event::default().event("end").data("the task has ended"))
    });
    use futures::StreamExt;
    sse(&engine, turn, events.chain(ending))
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

pub fn failure(e: anyhow::Error) -> Response {
    tracing::error!("page: {e:#}");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}
