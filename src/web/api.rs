//! The HTTP API (the contract's routes). Handlers only validate, store and enqueue; work
//! happens in the workers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::core::ids::RepoName;
use crate::core::spec::{self, SpecFormat};
use crate::engine::{CancelOutcome, Engine, SubmitError};
use crate::store::{self, TaskRow, TaskState};

/// GitHub sends payloads up to 25 MiB.
pub const BODY_LIMIT: usize = 25 * 1024 * 1024;

/// An error answer: a status and `{"error": ...}` plus any extra fields.
pub struct ApiError(StatusCode, Value);

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, json!({ "error": message.into() }))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        if store::is_disk_full(&e) {
            tracing::error!("request refused, the data directory is full: {e:#}");
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "autodev's data directory is full, so nothing of this request was recorded; free some space and send it again ({e:#})"
                ),
            );
        }
        tracing::error!("request failed: {e:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e:#}"),
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A task spec is small: this is plenty.
const SPEC_LIMIT: usize = 1024 * 1024;

/// The routes, for a server bound to `bound`.
pub fn router(engine: Arc<Engine>, bound: std::net::SocketAddr) -> Router {
    let hosts = Arc::new(crate::web::guard::AllowedHosts::new(
        &engine.settings,
        bound,
    ));
    let bodies = crate::web::guard::Bodies::new();
    let tasks = Router::new()
        .route("/tasks", post(create_task).get(list_tasks))
        .route("/tasks/{id}", get(get_task))
        .route("/tasks/{id}/cancel", post(cancel_task))
        .route("/tasks/{id}/retry", post(retry_task))
        .route("/repos/{owner}/{repo}/tasks/{id}", get(get_repo_task))
        .route(
            "/repos/{owner}/{repo}/tasks/{id}/cancel",
            post(cancel_repo_task),
        )
        .route(
            "/repos/{owner}/{repo}/tasks/{id}/retry",
            post(retry_repo_task),
        )
        .route_layer(middleware::from_fn_with_state(
            engine.clone(),
            require_token,
        ));
    Router::new()
        .merge(tasks)
        .route("/", get(crate::web::board::page))
        .route("/events", get(crate::web::board::stream))
        .route(
            "/login",
            get(crate::web::board::login_page).post(crate::web::board::login),
        )
        .route("/logout", post(crate::web::board::logout))
        .route("/view/tasks/{id}", get(crate::web::pages::local_page))
        .route(
            "/view/tasks/{id}/events",
            get(crate::web::pages::local_stream),
        )
        .route(
            "/view/repos/{owner}/{repo}/tasks/{id}",
            get(crate::web::pages::repo_page),
        )
        .route(
            "/view/repos/{owner}/{repo}/tasks/{id}/events",
            get(crate::web::pages::repo_stream),
        )
        .route(
            "/webhooks/github",
            post(github_webhook).layer(axum::Extension(bodies)),
        )
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(
                engine.clone(),
                require_token,
            )),
        )
        .route("/setup", get(crate::web::setup::start))
        .route("/setup/callback", get(crate::web::setup::callback))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::Extension(crate::web::guard::Streams::new()))
        .layer(middleware::from_fn(move |request, next| {
            crate::web::guard::refuse_browsers(hosts.clone(), request, next)
        }))
        .layer(middleware::map_response(crate::web::guard::page_headers))
        .with_state(engine)
}

/// What an `autodev worker` serves on its own address (`--metrics-bind`): its metrics and
/// its probes, nothing else. `/metrics` needs the token when one is set, as on `serve`.
pub fn worker_router(engine: Arc<Engine>, bound: std::net::SocketAddr) -> Router {
    let hosts = Arc::new(crate::web::guard::AllowedHosts::new(
        &engine.settings,
        bound,
    ));
    Router::new()
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(
                engine.clone(),
                require_token,
            )),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "a worker serves only /metrics, /healthz and /readyz",
            )
        })
        .layer(middleware::from_fn(move |request, next| {
            crate::web::guard::refuse_browsers(hosts.clone(), request, next)
        }))
        .with_state(engine)
}

/// With `AUTODEV_API_TOKEN` set, every task route needs `Authorization: Bearer <token>`, or
/// a signed-in dashboard page's session cookie with its CSRF token (see `web::session`).
async fn require_token(
    State(engine): State<Arc<Engine>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &engine.settings.api_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let bearer = constant_time_eq(given.as_bytes(), token.expose_secret().as_bytes());
        // A page's session presses its buttons, and nothing else: a stolen cookie submits no
        // task and reads no metrics.
        let button = request.method() == axum::http::Method::POST
            && (request.uri().path().ends_with("/cancel")
                || request.uri().path().ends_with("/retry"));
        let session =
            button && crate::web::session::authorises(&engine.settings, request.headers());
        if !(bearer || session) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong `Authorization: Bearer <token>` (AUTODEV_API_TOKEN)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn create_task(State(engine): State<Arc<Engine>>, request: Request) -> ApiResult<Response> {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    if let Err(refused) = crate::web::guard::check_length(&headers, SPEC_LIMIT) {
        return Ok(refused.into_response());
    }
    let body = match crate::web::guard::read_body(body, SPEC_LIMIT).await {
        Ok(body) => body,
        Err(refused) => return Ok(refused.into_response()),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(format) = SpecFormat::from_content_type(content_type) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type `{content_type}` is not supported; send application/json or application/yaml"
            ),
        ));
    };
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the body is not UTF-8"))?;
    let spec = spec::parse(text, format, &engine.roles, &engine.settings.file.limits)
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.to_json()))?;
    if engine.disk.is_released() {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "autodev's data directory is full: new tasks wait until there is room again; free some space and send it again",
        ));
    }
    match engine.submit(&spec, &RepoName::local()).await {
        Ok(submitted) => Ok((StatusCode::CREATED, Json(submitted)).into_response()),
        Err(SubmitError::Duplicate { repo, task_id }) => Err(ApiError(
            StatusCode::CONFLICT,
            json!({ "error": format!("task `{task_id}` already exists in {repo}; use another id, or POST /tasks/{task_id}/retry"), "task_id": task_id }),
        )),
        Err(SubmitError::Other(e)) => {
            engine.note_disk_full(&e);
            Err(e.into())
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    /// `owner/name`, or `local`.
    repo: Option<String>,
    limit: Option<i64>,
}

async fn list_tasks(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown state `{s}`; use queued, running, passed, failed, error or cancelled"
                ),
            )
        })?),
    };
    let rows = store::list_tasks(
        &engine.pool,
        state,
        q.repo.as_deref(),
        q.limit.unwrap_or(100).clamp(1, 1000),
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(task_json(&engine, row, false).await?);
    }
    Ok(Json(out))
}

/// The one task with this id, across repositories.
async fn lookup(engine: &Engine, id: &str) -> ApiResult<TaskRow> {
    let mut rows = store::find_tasks(&engine.pool, id).await?;
    match rows.len() {
        0 => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no task `{id}`"),
        )),
        1 => Ok(rows.remove(0)),
        _ => Err(ApiError(
            StatusCode::CONFLICT,
            json!({
                "error": format!("task id `{id}` exists in several repositories; use /repos/{{owner}}/{{repo}}/tasks/{id}"),
                "repos": rows.iter().map(|r| r.repo.clone()).collect::<Vec<_>>(),
            }),
        )),
    }
}

async fn lookup_in_repo(engine: &Engine, owner: &str, repo: &str, id: &str) -> ApiResult<TaskRow> {
    let name = RepoName::github(owner, repo);
    store::find_task(&engine.pool, &name, id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no task `{id}` in {name}")))
}

async fn get_task(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let row = lookup(&engine, &id).await?;
    Ok(Json(task_json(&engine, &row, true).await?))
}

async fn get_repo_task(
    State(engine): State<Arc<Engine>>,
    Path((owner, repo, id)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let row = lookup_in_repo(&engine, &owner, &repo, &id).await?;
    Ok(Json(task_json(&engine, &row, true).await?))
}

async fn cancel_task(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let row = lookup(&engine, &id).await?;
    cancel(&engine, row).await
}

async fn cancel_repo_task(
    State(engine): State<Arc<Engine>>,
    Path((owner, repo, id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let row = lookup_in_repo(&engine, &owner, &repo, &id).await?;
    cancel(&engine, row).await
}

async fn cancel(engine: &Engine, row: TaskRow) -> ApiResult<Response> {
    let outcome = engine.cancel(row.pk).await?;
    let status = match outcome {
        CancelOutcome::Cancelled => StatusCode::OK,
        CancelOutcome::Stopping => StatusCode::ACCEPTED,
        CancelOutcome::AlreadyEnded(state) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("task `{}` already ended ({state})", row.task_id),
            ));
        }
        CancelOutcome::Missing => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no task `{}`", row.task_id),
            ));
        }
    };
    let row = store::get_task(&engine.pool, row.pk).await?.unwrap_or(row);
    Ok((status, Json(task_json(engine, &row, false).await?)).into_response())
}

async fn retry_task(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let row = lookup(&engine, &id).await?;
    retry(&engine, row).await
}

async fn retry_repo_task(
    State(engine): State<Arc<Engine>>,
    Path((owner, repo, id)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    let row = lookup_in_repo(&engine, &owner, &repo, &id).await?;
    retry(&engine, row).await
}

async fn retry(engine: &Engine, row: TaskRow) -> ApiResult<Response> {
    match engine.retry(row.pk).await? {
        Some(job_id) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "job_id": job_id, "task_id": row.task_id })),
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "task `{}` is {}; retry it once it has ended",
                row.task_id, row.state
            ),
        )),
    }
}

/// `POST /webhooks/github`: verify, dedup, store, answer; the work happens in a worker. The
/// body must arrive within `guard::BODY_TIMEOUT`, and only a few unauthenticated bodies are
/// read at once, so slow or stalled uploads cannot hold the server's memory.
async fn github_webhook(
    State(engine): State<Arc<Engine>>,
    axum::Extension(bodies): axum::Extension<Arc<crate::web::guard::Bodies>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let headers = parts.headers;
    let unread = |outcome: &str, response: Response| {
        engine
            .metrics
            .webhook_deliveries_total
            .with_label_values(&["unverified", outcome])
            .inc();
        response
    };
    if let Err(refused) = crate::web::guard::check_length(&headers, BODY_LIMIT) {
        return unread("too_large", refused.into_response());
    }
    // One deadline for waiting a turn and reading: GitHub gives up after ten seconds anyway.
    let deadline = tokio::time::Instant::now() + crate::web::guard::BODY_TIMEOUT;
    let Some(turn) = bodies.turn(peer, deadline).await else {
        let busy = (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "10")],
            Json(json!({ "error": "too many deliveries are being received; try again" })),
        );
        return unread("busy", busy.into_response());
    };
    let body: Bytes = match crate::web::guard::read_body_by(body, BODY_LIMIT, deadline).await {
        Ok(body) => body,
        Err(refused) => {
            let outcome = match refused.0 {
                StatusCode::REQUEST_TIMEOUT => "timeout",
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                _ => "unreadable",
            };
            return unread(outcome, refused.into_response());
        }
    };
    use crate::bot::intake::{self, DeliveryHeaders, Intake, IntakeError};
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // A label only from a fixed list of event names, so a forged request cannot grow the
    // metric.
    let event = crate::metrics::event_label(header("x-github-event").unwrap_or(""));
    let result = intake::receive(
        &engine,
        DeliveryHeaders {
            event: header("x-github-event"),
            delivery: header("x-github-delivery"),
            signature: header("x-hub-signature-256"),
        },
        &body,
        turn,
    )
    .await;
    let (status, outcome, body) = match result {
        Ok(Intake::Pong) => (StatusCode::OK, "pong", json!({ "ok": "pong" })),
        Ok(Intake::Duplicate) => (
            StatusCode::OK,
            "duplicate",
            json!({ "ok": "already received" }),
        ),
        Ok(Intake::Recorded) => (
            StatusCode::ACCEPTED,
            "recorded",
            json!({ "ok": "recorded" }),
        ),
        Ok(Intake::Queued) => (StatusCode::ACCEPTED, "queued", json!({ "ok": "queued" })),
        Ok(Intake::Ignored(why)) => (StatusCode::ACCEPTED, "ignored", json!({ "ignored": why })),
        Err(e) => {
            let status = match &e {
                IntakeError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
                IntakeError::Signature(_) => StatusCode::UNAUTHORIZED,
                IntakeError::MissingHeader(_) | IntakeError::Malformed(_) => {
                    StatusCode::BAD_REQUEST
                }
                IntakeError::Internal(err) if engine.note_disk_full(err) => {
                    tracing::error!(
                        "webhook delivery refused, the data directory is full: {err:#}"
                    );
                    StatusCode::INSUFFICIENT_STORAGE
                }
                IntakeError::Internal(err) => {
                    tracing::error!("webhook delivery failed: {err:#}");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            };
            let outcome = match status {
                StatusCode::UNAUTHORIZED => "unauthorized",
                StatusCode::BAD_REQUEST => "malformed",
                _ => "error",
            };
            (status, outcome, json!({ "error": e.to_string() }))
        }
    };
    let event = if outcome == "unauthorized" {
        "unverified"
    } else {
        event
    };
    engine
        .metrics
        .webhook_deliveries_total
        .with_label_values(&[event, outcome])
        .inc();
    (status, Json(body)).into_response()
}

async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    engine.refresh_gauges().await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        engine.metrics.render(),
    )
        .into_response()
}

/// Ready to work: the database answers and every queue this process serves has a live worker.
async fn readyz(State(engine): State<Arc<Engine>>) -> ApiResult<Json<Value>> {
    store::ping(&engine.pool)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e:#}")))?;
    let dead = engine.workers.dead();
    if !dead.is_empty() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({
                "error": format!("no live worker for {}", dead.join(", ")),
                "dead_queues": dead,
            }),
        ));
    }
    let mut ready = json!({ "status": "ready" });
    if engine.app_mode() && engine.sandbox.is_none() {
        ready["warnings"] = json!([crate::proc::sandbox::UNCONFINED_WARNING]);
    }
    Ok(Json(ready))
}

async fn healthz(State(engine): State<Arc<Engine>>) -> ApiResult<Json<Value>> {
    store::ping(&engine.pool)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e:#}")))?;
    Ok(Json(json!({ "status": "ok" })))
}

/// The JSON view of a task for the API and `autodev status`.
pub async fn task_json(
    engine: &Engine,
    row: &TaskRow,
    detail: bool,
) -> anyhow::Result<serde_json::Value> {
    let spec: serde_json::Value = serde_json::from_str(&row.spec).unwrap_or_default();
    let mut v = serde_json::json!({
        "id": row.task_id,
        "repo": row.repo,
        "role": row.role,
        "title": row.title,
        "branch": row.branch,
        "base_branch": row.base_branch,
        "state": row.state,
        "last_error": row.last_error,
        "rounds": row.rounds,
        "provider": row.provider,
        "head_sha": row.head_sha,
        "cost_usd": row.cost_usd,
        "runs": row.run_seq,
        "job_id": row.job_id,
        "worktree": row.worktree,
        "cancel_requested": row.cancel_requested,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "pushed_sha": row.pushed_sha,
        "pr_number": row.pr_number,
        "pr_state": row.pr_state,
        "page": crate::links::link(&engine.settings, row),
    });
    if detail {
        v["spec"] = spec;
        v["events"] = serde_json::to_value(crate::store::events(&engine.pool, row.pk).await?)?;
        v["gates"] = serde_json::to_value(crate::store::gate_results(&engine.pool, row.pk).await?)?;
    }
    Ok(v)
}
