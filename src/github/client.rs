//! The GitHub API as autodev uses it: one octocrab client for the App (JWT) and one per
//! installation (its token cached and refreshed by octocrab), shared by `Arc`; in local mode
//! one for `GITHUB_TOKEN`. Every call goes
//! through [`GithubClient::call`], which turns GitHub's answers into one error type with one
//! retry policy. octocrab's own retries are not compiled in: retrying is done here, by the
//! caller's queue, so a POST is never repeated behind our back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use octocrab::Octocrab;
use octocrab::models::{AppId, InstallationId as OctoInstallationId};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::event::InstallationId;
use crate::config::GithubApp;

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// It will not get better (a 404, a 422, bad credentials): report it.
    Never,
    /// Try again after this long (`Retry-After`, or until `x-ratelimit-reset`).
    After(Duration),
    /// Try again with the caller's backoff (5xx, network).
    Backoff,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("GitHub answered {status} to {method} {path}: {message}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
        retry: Retry,
    },
    #[error("talking to GitHub ({method} {path}): {message}")]
    Transport {
        method: &'static str,
        path: String,
        message: String,
    },
}

impl ApiError {
    pub fn retry(&self) -> Retry {
        match self {
            ApiError::Status { retry, .. } => *retry,
            ApiError::Transport { .. } => Retry::Backoff,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            ApiError::Transport { .. } => None,
        }
    }
}

/// A collaborator's permission on a repository, as GitHub reports it (`maintain` shows as
/// `write`, `triage` as `read`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Admin,
    Write,
    Read,
    None,
}

impl Permission {
    /// Write, maintain and admin may steer autodev.
    pub fn may_command(self) -> bool {
        matches!(self, Permission::Admin | Permission::Write)
    }

    fn parse(s: &str) -> Self {
        match s {
            "admin" => Permission::Admin,
            "write" | "maintain" => Permission::Write,
            "read" | "triage" => Permission::Read,
            _ => Permission::None,
        }
    }
}

/// The HTTP methods autodev calls GitHub with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        }
    }
}

/// Whom a call is made as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An installation of the App (App mode).
    Installation(InstallationId),
    /// The person or bot whose `GITHUB_TOKEN` local mode was given.
    Token,
}

impl From<InstallationId> for Identity {
    fn from(id: InstallationId) -> Self {
        Identity::Installation(id)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Installation(id) => write!(f, "installation-{id}"),
            Identity::Token => f.write_str("token"),
        }
    }
}

pub struct GithubClient {
    /// The App (JWT), in App mode.
    app: Option<Octocrab>,
    /// `GITHUB_TOKEN`, in local mode.
    personal: Option<(Arc<Octocrab>, SecretString)>,
    /// Where the per-installation write locks live (`$AUTODEV_DATA_DIR/locks`).
    lock_dir: std::path::PathBuf,
    installations: Mutex<HashMap<InstallationId, Arc<Octocrab>>>,
    permissions: Mutex<HashMap<(String, String), (Permission, Instant)>>,
    permission_ttl: Duration,
    /// The App's bot login, once known.
    app_login: Mutex<Option<String>>,
    /// Where calls are counted, when they are.
    metrics: Option<crate::metrics::Metrics>,
}

impl GithubClient {
    /// A client for the App, for a personal token, or both; `None` when neither is configured.
    pub fn new(
        api_url: &str,
        app: Option<&GithubApp>,
        token: Option<&SecretString>,
        permission_ttl: Duration,
        timeout: Duration,
        lock_dir: &std::path::Path,
    ) -> anyhow::Result<Option<Self>> {
        if app.is_none() && token.is_none() {
            return Ok(None);
        }
        // A GitHub that stops answering fails the call (to be tried again) instead of holding
        // its job for ever. Installation clients are made from the App's and keep these.
        let builder = || {
            Octocrab::builder()
                .base_uri(api_url)
                .with_context(|| format!("GITHUB_API_URL `{api_url}`"))
                .map(|b| {
                    b.set_connect_timeout(Some(timeout))
                        .set_read_timeout(Some(timeout))
                        .set_write_timeout(Some(timeout))
                })
        };
        let app = match app {
            Some(app) => {
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(
                    app.private_key.expose_secret().as_bytes(),
                )
                .context("GITHUB_PRIVATE_KEY is not an RSA private key in PEM form")?;
                Some(
                    builder()?
                        .app(AppId(app.app_id), key)
                        .build()
                        .context("building the GitHub App client")?,
                )
            }
            None => None,
        };
        let personal = match token {
            Some(token) => Some((
                Arc::new(
                    builder()?
                        .personal_token(token.clone())
                        .build()
                        .context("building the GITHUB_TOKEN client")?,
                ),
                token.clone(),
            )),
            None => None,
        };
        Ok(Some(Self {
            app,
            personal,
            installations: Mutex::new(HashMap::new()),
            lock_dir: lock_dir.to_owned(),
            permissions: Mutex::new(HashMap::new()),
            permission_ttl,
            app_login: Mutex::new(None),
            metrics: None,
        }))
    }

    /// Counts every call in `metrics` (`autodev_github_requests_total`, the rate limit).
    pub fn counted(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// One call's outcome: a status code, or `transport`, with the rate limit it reported.
    fn count(&self, m: Method, path: &str, outcome: &str, headers: Option<&http::HeaderMap>) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics
            .github_requests_total
            .with_label_values(&[route_of(path), m.name(), outcome])
            .inc();
        let Some(headers) = headers else {
            return;
        };
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        let resource = headers
            .get("x-ratelimit-resource")
            .and_then(|v| v.to_str().ok())
            .map_or("core", crate::metrics::rate_limit_resource);
        if let Some(left) = number("x-ratelimit-remaining") {
            metrics
                .github_rate_limit_remaining
                .with_label_values(&[resource])
                .set(left);
        }
        if let Some(limit) = number("x-ratelimit-limit") {
            metrics
                .github_rate_limit
                .with_label_values(&[resource])
                .set(limit);
        }
    }

    /// App mode: webhooks and installations.
    pub fn is_app(&self) -> bool {
        self.app.is_some()
    }

    /// Local mode's `GITHUB_TOKEN`, for pushing over HTTPS.
    pub fn personal_token(&self) -> Option<&SecretString> {
        self.personal.as_ref().map(|(_, t)| t)
    }

    /// The client of an installation: one per installation, so its token cache is shared.
    pub fn installation(&self, id: InstallationId) -> anyhow::Result<Arc<Octocrab>> {
        let mut map = self.installations.lock().expect("lock");
        if let Some(c) = map.get(&id) {
            return Ok(c.clone());
        }
        let app = self
            .app
            .as_ref()
            .context("GitHub App mode is not configured (GITHUB_APP_ID and its key)")?;
        let client = Arc::new(
            app.installation(OctoInstallationId(id.0 as u64))
                .context("creating the installation client")?,
        );
        map.insert(id, client.clone());
        Ok(client)
    }

    /// Held around every mutating call, so one installation never has two at once, in this
    /// process or another on the same machine (GitHub's secondary rate limits punish
    /// concurrent writes).
    pub async fn write_lock(
        &self,
        who: impl Into<Identity>,
    ) -> Result<crate::proc::lock::FileLock, ApiError> {
        let path = self.lock_dir.join(format!("github-{}.lock", who.into()));
        crate::proc::lock::FileLock::acquire(path)
            .await
            .map_err(|e| ApiError::Transport {
                method: "LOCK",
                path: String::new(),
                message: format!("{e:#}"),
            })
    }

    /// A valid installation token (for git over HTTPS), refreshed when it has under a minute
    /// left.
    ///
    /// Asking for a token again is harmless, so a failure that may pass (GitHub's 5xx, a rate
    /// limit, the network) is tried again here, a few times within about eight seconds,
    /// rather than failing the run that needs it.
    pub async fn installation_token(&self, id: InstallationId) -> anyhow::Result<SecretString> {
        let client = self.installation(id)?;
        let mut wait = Duration::from_millis(500);
        loop {
            match client
                .installation_token_with_buffer(chrono::Duration::seconds(60))
                .await
            {
                Ok(token) => return Ok(token),
                Err(e) if may_pass(&e) && wait <= Duration::from_secs(4) => {
                    tracing::warn!(
                        "getting an installation token for {id}, again in {wait:?}: {e}"
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "getting an installation token for {id}: {e}"
                    ));
                }
            }
        }
    }

    fn client_for(&self, who: Identity) -> anyhow::Result<Arc<Octocrab>> {
        match who {
            Identity::Installation(id) => self.installation(id),
            Identity::Token => self
                .personal
                .as_ref()
                .map(|(c, _)| c.clone())
                .context("GITHUB_TOKEN is not set"),
        }
    }

    /// One API call as the installation, or with the token. Non-2xx answers become
    /// [`ApiError::Status`] with the retry advice their status and headers give. Only
    /// `github::api` calls it: the typed methods there are the API.
    pub(super) async fn call(
        &self,
        who: impl Into<Identity>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let client = self
            .client_for(who.into())
            .map_err(|e| ApiError::Transport {
                method: method.name(),
                path: path.to_owned(),
                message: format!("{e:#}"),
            })?;
        self.send(&client, method, path, body).await
    }

    /// One API call with the App's own token (JWT).
    pub(super) async fn call_as_app(&self, method: Method, path: &str) -> Result<Value, ApiError> {
        let app = self.app.as_ref().ok_or_else(|| ApiError::Transport {
            method: method.name(),
            path: path.to_owned(),
            message: "GitHub App mode is not configured".into(),
        })?;
        self.send(app, method, path, None).await
    }

    /// The login the App's comments carry (`<slug>[bot]`), asked of GitHub once with the App's
    /// own token.
    pub async fn app_login(&self) -> Result<String, ApiError> {
        if let Some(login) = self.app_login.lock().expect("lock").clone() {
            return Ok(login);
        }
        let login = format!("{}[bot]", self.app_slug().await?);
        *self.app_login.lock().expect("lock") = Some(login.clone());
        Ok(login)
    }

    async fn send(
        &self,
        client: &Octocrab,
        m: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let transport = |e: octocrab::Error| {
            self.count(m, path, "transport", None);
            ApiError::Transport {
                method: m.name(),
                path: path.to_owned(),
                message: e.to_string(),
            }
        };
        let response = match m {
            Method::Get => client._get(path).await,
            Method::Post => client._post(path, body).await,
            Method::Patch => client._patch(path, body).await,
        }
        .map_err(transport)?;
        let status = response.status().as_u16();
        self.count(m, path, status_label(status), Some(response.headers()));
        let mut retry = retry_advice(status, response.headers());
        let text = client.body_to_string(response).await.map_err(transport)?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| ApiError::Transport {
                method: m.name(),
                path: path.to_owned(),
                message: format!("unreadable answer: {e}"),
            });
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| crate::proc::exec::tail_chars(&text, 300));
        // GitHub sends rate-limit headers on every answer: a 403 that is not about limits
        // (missing permission) will not get better by waiting.
        if status == 403
            && retry == Retry::After(Duration::from_secs(60))
            && !message.to_lowercase().contains("rate limit")
        {
            retry = Retry::Never;
        }
        Err(ApiError::Status {
            method: m.name(),
            path: path.to_owned(),
            status,
            message,
            retry,
        })
    }

    /// The permission `login` has on `owner/repo`, cached for `github.permission_cache_seconds`.
    pub async fn permission(
        &self,
        inst: InstallationId,
        owner: &str,
        repo: &str,
        login: &str,
    ) -> Result<Permission, ApiError> {
        let key = (
            format!("{owner}/{repo}").to_lowercase(),
            login.to_lowercase(),
        );
        if let Some((p, at)) = self.permissions.lock().expect("lock").get(&key)
            && at.elapsed() < self.permission_ttl
        {
            return Ok(*p);
        }
        let permission = match self
            .collaborator_permission(inst, super::api::RepoPath { owner, name: repo }, login)
            .await?
        {
            Some(p) => Permission::parse(&p),
            // Not a collaborator at all.
            None => Permission::None,
        };
        self.permissions
            .lock()
            .expect("lock")
            .insert(key, (permission, Instant::now()));
        Ok(permission)
    }
}

/// The route of an API path, its variable parts named (`/repos/{owner}/{repo}/pulls/{n}`):
/// one of the routes autodev calls, else `other`, so the metric's labels stay few.
pub fn route_of(path: &str) -> &'static str {
    const ROUTES: &[&str] = &[
        "/app",
        "/installation/repositories",
        "/repos/{owner}/{repo}/collaborators/{login}/permission",
        "/repos/{owner}/{repo}/issues/{n}/reactions",
        "/repos/{owner}/{repo}/issues/{n}/comments",
        "/repos/{owner}/{repo}/issues/comments/{n}",
        "/repos/{owner}/{repo}/commits/{sha}/check-runs",
        "/repos/{owner}/{repo}/check-runs",
        "/repos/{owner}/{repo}/check-runs/{n}",
        "/repos/{owner}/{repo}/pulls",
        "/repos/{owner}/{repo}/pulls/{n}",
        "/repos/{owner}/{repo}/pulls/{n}/requested_reviewers",
        "/repos/{owner}/{repo}/pulls/{n}/comments",
    ];
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    ROUTES
        .iter()
        .find(|route| {
            let parts: Vec<&str> = route.trim_matches('/').split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(p, s)| match *p {
                    "{n}" => !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
                    "{owner}" | "{repo}" | "{login}" | "{sha}" => !s.is_empty(),
                    literal => literal == *s,
                })
        })
        .copied()
        .unwrap_or("other")
}

/// A status code as a label: the codes GitHub's API answers with, else its class.
fn status_label(status: u16) -> &'static str {
    const CODES: &[&str] = &[
        "200", "201", "204", "304", "400", "401", "403", "404", "409", "410", "422", "429", "500",
        "502", "503", "504",
    ];
    let code = status.to_string();
    if let Some(known) = CODES.iter().find(|c| **c == code) {
        return known;
    }
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// GitHub's rate-limit rules: `Retry-After` first; else, with no requests left, wait for
/// `x-ratelimit-reset`; a 403/429 without either is a secondary limit (wait at least a minute);
/// 5xx back off; other 4xx will not get better.
/// Whether an error of octocrab's own calls (the installation token) may pass if tried again.
fn may_pass(e: &octocrab::Error) -> bool {
    match e {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code.as_u16();
            let message = source.message.to_lowercase();
            status >= 500
                || status == 429
                || (status == 403 && (message.contains("rate limit") || message.contains("abuse")))
        }
        // The network, a timeout, an answer cut off.
        _ => true,
    }
}

fn retry_advice(status: u16, headers: &http::HeaderMap) -> Retry {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if (200..300).contains(&status) {
        return Retry::Never;
    }
    if let Some(secs) = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()) {
        return Retry::After(Duration::from_secs(secs));
    }
    if status == 403 || status == 429 {
        if header("x-ratelimit-remaining") == Some("0")
            && let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<i64>().ok())
        {
            let wait = (reset - chrono::Utc::now().timestamp()).max(1) as u64;
            return Retry::After(Duration::from_secs(wait));
        }
        if status == 429 || header("x-ratelimit-remaining").is_some() {
            return Retry::After(Duration::from_secs(60));
        }
        return Retry::Never;
    }
    if status >= 500 || status == 401 {
        return Retry::Backoff;
    }
    Retry::Never
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn routes_name_their_variable_parts_and_nothing_else() {
        assert_eq!(
            route_of("/repos/o/r/issues/12/comments?per_page=100&page=2"),
            "/repos/{owner}/{repo}/issues/{n}/comments"
        );
        assert_eq!(
            route_of("/repos/o/r/issues/comments/991"),
            "/repos/{owner}/{repo}/issues/comments/{n}"
        );
        assert_eq!(
            route_of("/repos/o/r/commits/abc123/check-runs?check_name=autodev"),
            "/repos/{owner}/{repo}/commits/{sha}/check-runs"
        );
        assert_eq!(route_of("/app"), "/app");
        // A path autodev never calls, or a number where a word belongs, is `other`.
        assert_eq!(route_of("/repos/o/r/issues/x/comments"), "other");
        assert_eq!(route_of("/users/someone"), "other");
        assert_eq!(status_label(201), "201");
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(599), "5xx");
    }

    #[test]
    fn retry_advice_follows_githubs_rules() {
        assert_eq!(retry_advice(500, &headers(&[])), Retry::Backoff);
        assert_eq!(retry_advice(422, &headers(&[])), Retry::Never);
        assert_eq!(retry_advice(404, &headers(&[])), Retry::Never);
        assert_eq!(
            retry_advice(403, &headers(&[("retry-after", "7")])),
            Retry::After(Duration::from_secs(7))
        );
        let reset = (chrono::Utc::now().timestamp() + 30).to_string();
        match retry_advice(
            403,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ]),
        ) {
            Retry::After(d) => assert!((28..=31).contains(&d.as_secs()), "{d:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            retry_advice(429, &headers(&[])),
            Retry::After(Duration::from_secs(60))
        );
        assert_eq!(
            retry_advice(403, &headers(&[("x-ratelimit-remaining", "12")])),
            Retry::After(Duration::from_secs(60))
        );
        assert_eq!(
            retry_advice(403, &headers(&[])),
            Retry::Never,
            "a plain 403 is a permission problem"
        );
    }
}
