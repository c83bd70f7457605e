//! The setup pages that create the GitHub App from its manifest: `GET /setup` (opened by the
//! one-time code autodev logs at start, or the API token) sends the manifest to GitHub's
//! new-App page, for the user's account or an organisation; `GET /setup/callback` takes
//! GitHub's code back with the page's `state`, has it converted into the App's credentials,
//! stores them and takes the App up without a restart. Imports the engine and `github`.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::engine::Engine;
use crate::github::manifest;

#[derive(Deserialize)]
pub struct Opened {
    code: Option<String>,
    org: Option<String>,
}

#[derive(Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
}

/// Text safe in HTML, attributes included.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body style=\"font-family: sans-serif; max-width: 44em; margin: 2em auto\">\
         <h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, "no-store".parse().expect("header"));
    // The page's address holds its code: no other site is told it.
    headers.insert(
        header::REFERRER_POLICY,
        "no-referrer".parse().expect("header"),
    );
    response
}

/// Why the page cannot be used now, if it cannot.
fn unavailable(engine: &Engine) -> Option<Response> {
    if engine.app().is_some() {
        return Some(page(
            StatusCode::CONFLICT,
            "autodev has a GitHub App",
            "<p>An App is configured already (the <code>GITHUB_*</code> variables, or one made here before). \
             To make another, remove it first.</p>",
        ));
    }
    // App mode runs agents on outsiders' words: it needs the sandbox, as at start.
    if engine.sandbox.is_none()
        && engine.settings.file.agent.sandbox != crate::config::SandboxMode::Off
    {
        return Some(page(
            StatusCode::SERVICE_UNAVAILABLE,
            "autodev needs its sandbox first",
            "<p>A GitHub App runs agents on outsiders' words, and the sandbox (bubblewrap) cannot run here.              Install bubblewrap and start autodev again, or set <code>agent: {sandbox: off}</code> to run agents unconfined.</p>",
        ));
    }
    if engine.settings.public_url.is_none() {
        return Some(page(
            StatusCode::SERVICE_UNAVAILABLE,
            "autodev needs its public address",
            "<p>Set <code>AUTODEV_PUBLIC_URL</code> to the address GitHub reaches this server at, and start autodev again.</p>",
        ));
    }
    None
}

/// The page opens with the one-time code, or the API token.
fn allowed(engine: &Engine, q: &Opened, headers: &HeaderMap) -> bool {
    if q.code.as_deref().is_some_and(|c| engine.setup.opens(c)) {
        return true;
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match (&engine.settings.api_token, bearer) {
        (Some(token), Some(given)) => {
            crate::web::api::constant_time_eq(given.as_bytes(), token.expose_secret().as_bytes())
        }
        _ => false,
    }
}

/// A form that posts the manifest to GitHub's new-App page (`org`'s, or the user's own).
fn to_github(engine: &Engine, org: Option<&str>, label: &str) -> String {
    let public = engine.settings.public_url.as_deref().unwrap_or_default();
    let state = engine.setup.new_state();
    let action = manifest::new_app_url(&engine.settings.github_api_url, org, &state);
    let manifest = manifest::manifest(public).to_string();
    format!(
        "<form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"manifest\" value=\"{}\">\
         <button type=\"submit\">{}</button></form>",
        escape(&action),
        escape(&manifest),
        escape(label)
    )
}

/// `GET /setup`: where the App is made. With `org`, the form for that organisation.
pub async fn start(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<Opened>,
    headers: HeaderMap,
) -> Response {
    if !allowed(&engine, &q, &headers) {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            "<p>This page opens with the link autodev wrote to its log when it started.</p>",
        );
    }
    if let Some(refusal) = unavailable(&engine) {
        return refusal;
    }
    if let Some(org) = q.org.as_deref() {
        if !manifest::is_login(org) {
            return page(
                StatusCode::BAD_REQUEST,
                "Not an organisation",
                "<p>An organisation's login has letters, digits and dashes only.</p>",
            );
        }
        let form = to_github(&engine, Some(org), &format!("Create the App in {org}"));
        return page(
            StatusCode::OK,
            "Create autodev's GitHub App",
            &format!(
                "<p>GitHub will ask you to confirm, in the organisation {}.</p>{form}",
                escape(org)
            ),
        );
    }
    let mine = to_github(&engine, None, "Create the App on my account");
    let code = escape(q.code.as_deref().unwrap_or_default());
    page(
        StatusCode::OK,
        "Create autodev's GitHub App",
        &format!(
            "<p>autodev makes the App from its manifest: the permissions and events it needs, and \
             this server's address for webhooks. GitHub asks you to confirm, then sends you back here.</p>\
             {mine}\
             <form method=\"get\" action=\"/setup\"><input type=\"hidden\" name=\"code\" value=\"{code}\">\
             <label>Or in an organisation: <input name=\"org\" placeholder=\"organisation\"></label> \
             <button type=\"submit\">Next</button></form>"
        ),
    )
}

/// `GET /setup/callback`: GitHub sends the person back with a code for the App it made.
pub async fn callback(State(engine): State<Arc<Engine>>, Query(q): Query<Callback>) -> Response {
    // The state first: only a page this server handed out, once, within the hour.
    if !q
        .state
        .as_deref()
        .is_some_and(|s| engine.setup.take_state(s))
    {
        return page(
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            "<p>It did not come from a setup page of this server, or it was used already. Start again from the setup page.</p>",
        );
    }
    if let Some(refusal) = unavailable(&engine) {
        return refusal;
    }
    let code = q.code.unwrap_or_default();
    let made = async {
        let app = manifest::convert(
            &engine.settings.github_api_url,
            &code,
            engine.settings.file.github.timeout,
        )
        .await?;
        manifest::store(&engine.settings.data_dir, &app)?;
        engine.install_app(app.credentials())?;
        anyhow::Ok(app)
    };
    match made.await {
        Ok(app) => {
            engine.setup.close();
            tracing::info!(
                app = app.app_id,
                "the GitHub App {} is made and in use",
                app.slug
            );
            let install = format!("{}/installations/new", app.html_url.trim_end_matches('/'));
            page(
                StatusCode::OK,
                "autodev's GitHub App is made",
                &format!(
                    "<p>The App <strong>{}</strong> is in use: no restart needed. \
                     Now install it on the repositories autodev should work on:</p>\
                     <p><a href=\"{}\">Install the App</a></p>",
                    escape(&app.slug),
                    escape(&install)
                ),
            )
        }
        Err(e) => {
            tracing::error!("making the GitHub App: {e:#}");
            page(
                StatusCode::BAD_GATEWAY,
                "The App could not be made",
                &format!(
                    "<p>{}</p><p>GitHub takes its code back within the hour; start again from the setup page.</p>",
                    escape(&format!("{e:#}"))
                ),
            )
        }
    }
}
