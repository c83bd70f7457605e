//! The dashboard at `/`: tasks by state, repository, role and provider, with cost, rounds
//! and duration; filters and search; what runs now with its round and last event. Rendered
//! from the database and kept live by a stream of server-sent events that re-reads it, so it
//! shows the work of every process on the database. With `AUTODEV_API_TOKEN` set it needs a
//! signed-in session (`/login`); see `web::session`.

use std::convert::Infallible;
use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::Event;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::Utc;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use crate::engine::Engine;
use crate::store::{self, Count, TaskFilter, TaskState};
use crate::web::pages::{Asker, duration, failure, money, script_string};
use crate::web::session::{self, Viewer};

/// Tasks the dashboard lists at most (the totals count them all).
const LISTED: i64 = 200;

/// The dashboard's query string: its filters.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Filters {
    state: Option<String>,
    repo: Option<String>,
    role: Option<String>,
    provider: Option<String>,
    q: Option<String>,
}

impl Filters {
    fn to_filter(&self) -> TaskFilter {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        TaskFilter {
            state: given(&self.state).and_then(|s| TaskState::parse(&s)),
            repo: given(&self.repo),
            role: given(&self.role),
            provider: given(&self.provider),
            search: given(&self.q).map(|q| q.chars().take(100).collect()),
        }
    }
}

/// `filter` as a query string (`?state=...&repo=...`), empty when it lets everything through.
fn query(filter: &TaskFilter) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = filter.state {
        pairs.push(("state", s.as_str()));
    }
    for (name, value) in [
        ("repo", &filter.repo),
        ("role", &filter.role),
        ("provider", &filter.provider),
        ("q", &filter.search),
    ] {
        if let Some(v) = value {
            pairs.push((name, v));
        }
    }
    if pairs.is_empty() {
        return String::new();
    }
    let encoded: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("?{}", encoded.join("&"))
}

/// Percent-encodes everything but unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Choice {
    value: String,
    tasks: i64,
    selected: bool,
}

fn choices(counts: &[Count], chosen: Option<&str>) -> Vec<Choice> {
    counts
        .iter()
        .map(|c| Choice {
            value: c.value.clone(),
            tasks: c.tasks,
            selected: chosen == Some(c.value.as_str()),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "board.html")]
struct BoardPage {
    version: &'static str,
    signed_in: bool,
    state_options: Vec<Choice>,
    repo_options: Vec<Choice>,
    role_options: Vec<Choice>,
    provider_options: Vec<Choice>,
    search: String,
    filtered: bool,
    stream: String,
    body: String,
}

struct StateChip {
    value: &'static str,
    tasks: i64,
    selected: bool,
    href: String,
}

struct Running {
    task_id: String,
    href: String,
    repo: String,
    role: String,
    provider: String,
    rounds: i64,
    duration: String,
    last_kind: String,
    last_message: String,
}

struct Listed {
    task_id: String,
    href: String,
    state: &'static str,
    repo: String,
    role: String,
    provider: String,
    rounds: i64,
    cost: String,
    duration: String,
    created: String,
    title: String,
}

#[derive(Template)]
#[template(path = "board_live.html")]
struct BoardLive {
    states: Vec<StateChip>,
    total_cost: String,
    total_rounds: i64,
    running: Vec<Running>,
    tasks: Vec<Listed>,
    shown: usize,
    total: i64,
    filtered: bool,
}

/// The part of the dashboard that changes, rendered.
async fn live_part(engine: &Engine, filter: &TaskFilter) -> anyhow::Result<String> {
    let pool = &engine.pool;
    let (facets, totals, rows) = tokio::try_join!(
        store::facets(pool),
        store::totals(pool, filter),
        store::filtered_tasks(pool, filter, LISTED),
    )?;
    let running_filter = TaskFilter {
        state: Some(TaskState::Running),
        ..TaskFilter::default()
    };
    let running_rows = store::filtered_tasks(pool, &running_filter, LISTED).await?;
    let now = Utc::now();
    let settings = &engine.settings;
    let href = |repo: &str, id: &str| crate::links::path(settings, repo, id);
    let mut running = Vec::new();
    for t in running_rows {
        let last = store::last_event(pool, t.pk).await?;
        running.push(Running {
            href: href(&t.repo, &t.task_id),
            duration: duration(&t, now),
            provider: t.provider.clone().unwrap_or_default(),
            last_kind: last.as_ref().map(|e| e.kind.clone()).unwrap_or_default(),
            last_message: last
                .map(|e| crate::proc::exec::tail_chars(&e.message, 200))
                .unwrap_or_default(),
            task_id: t.task_id,
            repo: t.repo,
            role: t.role,
            rounds: t.rounds,
        });
    }
    let states = TaskState::ALL
        .into_iter()
        .map(|s| {
            let selected = filter.state == Some(s);
            let chip_filter = TaskFilter {
                state: (!selected).then_some(s),
                ..filter.clone()
            };
            StateChip {
                value: s.as_str(),
                tasks: facets
                    .states
                    .iter()
                    .find(|c| c.value == s.as_str())
                    .map_or(0, |c| c.tasks),
                selected,
                href: format!("/{}", query(&chip_filter)),
            }
        })
        .collect();
    let tasks: Vec<Listed> = rows
        .into_iter()
        .map(|t| Listed {
            href: href(&t.repo, &t.task_id),
            state: t.state.as_str(),
            provider: t.provider.clone().unwrap_or_default(),
            cost: t.cost_usd.map(money).unwrap_or_default(),
            duration: duration(&t, now),
            created: t.created_at.format("%Y-%m-%d %H:%M").to_string(),
            task_id: t.task_id,
            repo: t.repo,
            role: t.role,
            rounds: t.rounds,
            title: t.title,
        })
        .collect();
    let part = BoardLive {
        states,
        total_cost: format!("{:.2}", totals.cost_usd),
        total_rounds: totals.rounds,
        running,
        shown: tasks.len(),
        tasks,
        total: totals.tasks,
        filtered: *filter != TaskFilter::default(),
    };
    Ok(part.render()?)
}

/// `GET /`: the dashboard, or the way to sign in.
pub async fn page(
    State(engine): State<Arc<Engine>>,
    Query(filters): Query<Filters>,
    headers: HeaderMap,
) -> Response {
    let viewer = Viewer::of(&engine.settings, &headers);
    if !viewer.may_act() {
        return Redirect::to("/login").into_response();
    }
    let filter = filters.to_filter();
    let (facets, body) =
        match tokio::try_join!(store::facets(&engine.pool), live_part(&engine, &filter)) {
            Ok(parts) => parts,
            Err(e) => return failure(e),
        };
    let page = BoardPage {
        version: env!("CARGO_PKG_VERSION"),
        signed_in: matches!(viewer, Viewer::SignedIn { .. }),
        state_options: choices(&facets.states, filter.state.map(TaskState::as_str)),
        repo_options: choices(&facets.repos, filter.repo.as_deref()),
        role_options: choices(&facets.roles, filter.role.as_deref()),
        provider_options: choices(&facets.providers, filter.provider.as_deref()),
        search: filter.search.clone().unwrap_or_default(),
        filtered: filter != TaskFilter::default(),
        stream: format!("/events{}", query(&filter)),
        body,
    };
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => failure(e.into()),
    }
}

/// `GET /events`: the dashboard's stream, an `update` event with its changing part whenever
/// the database says something changed.
pub async fn stream(
    State(engine): State<Arc<Engine>>,
    Query(filters): Query<Filters>,
    asker: Asker,
) -> Response {
    if !asker.viewer(&engine).may_act() {
        return (StatusCode::UNAUTHORIZED, "sign in at /login").into_response();
    }
    let Some(turn) = asker.turn() else {
        return crate::web::pages::too_many_streams();
    };
    let filter = filters.to_filter();
    let events = futures::stream::unfold((engine.clone(), None), move |(engine, last)| {
        let filter = filter.clone();
        async move {
            loop {
                let mark = store::board_mark(&engine.pool).await.ok();
                if mark.is_some() && mark != last {
                    match live_part(&engine, &filter).await {
                        Ok(html) => {
                            let event = Event::default().event("update").data(html);
                            return Some((Ok::<_, Infallible>(event), (engine, mark)));
                        }
                        Err(e) => tracing::warn!("dashboard stream: {e:#}"),
                    }
                }
                tokio::time::sleep(crate::web::pages::STREAM_EVERY).await;
            }
        }
    });
    crate::web::pages::sse(&engine, turn, events)
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    next_json: String,
}

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// `GET /login`.
pub async fn login_page(State(engine): State<Arc<Engine>>, Query(next): Query<Next>) -> Response {
    if engine.settings.api_token.is_none() {
        return Redirect::to("/").into_response();
    }
    let next = next
        .next
        .filter(|n| local_path(n))
        .unwrap_or_else(|| "/".into());
    match (LoginPage {
        next_json: script_string(&next),
    })
    .render()
    {
        Ok(html) => Html(html).into_response(),
        Err(e) => failure(e.into()),
    }
}

/// Whether `next` is a path of this server and nothing else: it starts with one `/` and holds
/// only characters a path and query of autodev's pages use, so neither `//elsewhere` nor
/// what a browser drops from a URL (tabs, line breaks) nor a backslash can make it another
/// site.
fn local_path(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 2048
        && next
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~?=&%+".contains(&b))
        && !next[1..].starts_with('/')
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

/// `POST /login` with `{"token": "..."}`: sets the session cookie when the token is right.
pub async fn login(State(engine): State<Arc<Engine>>, body: Bytes) -> Response {
    let Some(token) = &engine.settings.api_token else {
        return (
            StatusCode::CONFLICT,
            Json(json!({ "error": "this server has no API token; nothing to sign in to" })),
        )
            .into_response();
    };
    let given = serde_json::from_slice::<Login>(&body)
        .map(|l| l.token)
        .unwrap_or_default();
    if !crate::web::api::constant_time_eq(given.as_bytes(), token.expose_secret().as_bytes()) {
        // Guessing is slowed down; the token itself should be long enough not to be guessed.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "that is not this server's API token" })),
        )
            .into_response();
    }
    let session = session::issue(token.expose_secret(), store::now_ms() / 1000);
    (
        StatusCode::OK,
        [(
            header::SET_COOKIE,
            session::set_cookie(&engine.settings, &session),
        )],
        Json(json!({ "ok": "signed in" })),
    )
        .into_response()
}

/// `POST /logout`: clears the session cookie.
pub async fn logout(State(engine): State<Arc<Engine>>) -> Response {
    (
        StatusCode::OK,
        [(header::SET_COOKIE, session::clear_cookie(&engine.settings))],
        Json(json!({ "ok": "signed out" })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_sends_people_back_only_to_this_servers_pages() {
        assert!(local_path("/"));
        assert!(local_path("/view/tasks/t-1?sig=ab12"));
        assert!(local_path("/?state=failed&repo=octo%2Fweb"));
        for elsewhere in [
            "//evil.example/x",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\\evil.example",
            "https://evil.example",
            "evil.example",
            "",
        ] {
            assert!(!local_path(elsewhere), "{elsewhere:?}");
        }
    }

    #[test]
    fn a_filter_is_its_own_query_string() {
        let filter = TaskFilter {
            state: Some(TaskState::Failed),
            repo: Some("octo/web".into()),
            search: Some("a b&c".into()),
            ..TaskFilter::default()
        };
        assert_eq!(query(&filter), "?state=failed&repo=octo%2Fweb&q=a%20b%26c");
        assert_eq!(query(&TaskFilter::default()), "");
        let back = Filters {
            state: Some("failed".into()),
            repo: Some("octo/web".into()),
            q: Some(" a b&c ".into()),
            ..Filters::default()
        }
        .to_filter();
        assert_eq!(back, filter);
        // An unknown state filters nothing rather than everything.
        let unknown = Filters {
            state: Some("bogus".into()),
            ..Filters::default()
        };
        assert_eq!(unknown.to_filter(), TaskFilter::default());
    }
}
