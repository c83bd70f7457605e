//! A stateful fake GitHub on 127.0.0.1 that the real octocrab client talks to. As strict as
//! GitHub where autodev depends on it: it verifies the App JWT (RS256, issuer, a lifetime of at
//! most ten minutes), hands out installation tokens that expire, refuses unknown or expired
//! tokens, and answers with GitHub's own response examples (`@octokit/openapi`).

// Handlers short-circuit with ready-made responses; their size does not matter in a test fake.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};

pub fn example(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/openapi/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[derive(Debug, Clone)]
pub struct Comment {
    pub id: u64,
    pub issue: u64,
    pub body: String,
    pub author: String,
    pub edits: u32,
}

#[derive(Debug, Clone)]
pub struct CheckRun {
    pub id: u64,
    pub name: String,
    pub head_sha: String,
    pub status: String,
    pub conclusion: Option<String>,
    pub external_id: Option<String>,
    pub summary: String,
    pub updates: u32,
    /// Identifiers of the buttons offered.
    pub actions: Vec<String>,
    pub details_url: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Pull {
    pub number: u64,
    pub head_ref: String,
    /// (path, line, body, author) of each review comment.
    pub review_comments: Vec<(String, u64, String, String)>,
    pub title: String,
    pub body: String,
    pub base: String,
    pub draft: bool,
    pub reviewers: Vec<String>,
    pub team_reviewers: Vec<String>,
    pub closed: bool,
    /// Who opened it: the App's bot, or the owner of the personal token used.
    pub author: String,
}

#[derive(Default)]
pub struct St {
    pub pulls: Vec<Pull>,
    pub check_runs: Vec<CheckRun>,
    app_id: u64,
    public_key: String,
    pub token_ttl: Duration,
    tokens: HashMap<String, (u64, Instant)>,
    /// Personal access tokens and the login each belongs to.
    personal: HashMap<String, String>,
    pub tokens_issued: u32,
    pub permissions: HashMap<(String, String), String>,
    pub comments: Vec<Comment>,
    pub reactions: Vec<(u64, String)>,
    /// Repositories (`owner/name`) of each installation.
    pub installations: HashMap<u64, Vec<String>>,
    /// Answers to give before handling the next requests: (status, headers).
    pub failures: VecDeque<(u16, Vec<(String, String)>)>,
    /// Answers to give to the next request that starts with the text: (text, status).
    pub failures_on: Vec<(String, u16)>,
    /// Requests answered late (see `FakeGithub::slow_on`).
    pub slow_on: Vec<(String, Duration)>,
    /// `METHOD path` of every request, in order.
    pub requests: Vec<String>,
    next_id: u64,
    /// Random failures of any request (see [`FakeGithub::chaos`]).
    pub chaos: Option<Chaos>,
    /// Requests answered 503 (`Retry-After: 0`) while GitHub is down for them.
    pub down_on: Vec<String>,
    /// Codes of the manifest flow GitHub handed out, each good for one conversion.
    pub manifest_codes: Vec<String>,
    /// The App's private key, which a conversion hands over.
    private_pem: String,
    /// Requests counted against the rate limit (`x-ratelimit-used`), as GitHub counts them.
    pub rate_used: u64,
}

/// The size of the fake's rate-limit window, as GitHub's for an installation.
pub const RATE_LIMIT: u64 = 5000;

/// GitHub failing at random: `percent` of requests fail in one of [`FAULTS`]' ways, chosen by
/// a generator seeded with `seed` (printed, so a failing run can be played again).
#[derive(Debug, Clone)]
pub struct Chaos {
    pub percent: u64,
    state: u64,
    /// How many times each fault was played.
    pub played: std::collections::BTreeMap<&'static str, u32>,
    /// How long a request that "times out" is held: longer than the client waits.
    pub hang: Duration,
}

/// How GitHub fails: before it does anything, or after it applied the request.
pub const FAULTS: [&str; 7] = [
    "500",
    "502",
    "secondary rate limit",
    "abuse",
    "timeout",
    "applied, then 502",
    "applied, then timeout",
];

impl Chaos {
    /// xorshift64*: enough randomness for a fault schedule, and reproducible from the seed.
    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The fault to play on this request, if any.
    fn pick(&mut self) -> Option<&'static str> {
        if self.next() % 100 >= self.percent {
            return None;
        }
        let fault = FAULTS[(self.next() % FAULTS.len() as u64) as usize];
        *self.played.entry(fault).or_default() += 1;
        Some(fault)
    }
}

pub struct FakeGithub {
    pub url: String,
    pub state: Arc<Mutex<St>>,
    _server: tokio::task::JoinHandle<()>,
}

type Shared = Arc<Mutex<St>>;

impl FakeGithub {
    /// Starts the fake for App `app_id` whose private key is at `key_pem`.
    pub async fn start(app_id: u64, key_pem: &std::path::Path) -> Self {
        let out = std::process::Command::new("openssl")
            .args(["rsa", "-in", key_pem.to_str().unwrap(), "-pubout"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let state = Arc::new(Mutex::new(St {
            app_id,
            public_key: String::from_utf8(out.stdout).unwrap(),
            token_ttl: Duration::from_secs(3600),
            next_id: 1000,
            private_pem: std::fs::read_to_string(key_pem).unwrap(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/app/installations/{id}/access_tokens", post(access_token))
            .route("/installation/repositories", get(installation_repos))
            .route("/app", get(get_app))
            .route("/app-manifests/{code}/conversions", post(convert_manifest))
            .route(
                "/repos/{owner}/{repo}/pulls",
                get(list_pulls).post(create_pull),
            )
            .route(
                "/repos/{owner}/{repo}/pulls/{n}/requested_reviewers",
                post(request_reviewers),
            )
            .route("/repos/{owner}/{repo}/pulls/{n}", get(get_pull))
            .route(
                "/repos/{owner}/{repo}/pulls/{n}/comments",
                get(list_review_comments),
            )
            .route("/repos/{owner}/{repo}/check-runs", post(create_check_run))
            .route(
                "/repos/{owner}/{repo}/check-runs/{id}",
                patch(update_check_run),
            )
            .route(
                "/repos/{owner}/{repo}/commits/{sha}/check-runs",
                get(list_check_runs),
            )
            .route(
                "/repos/{owner}/{repo}/collaborators/{user}/permission",
                get(permission),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{n}/comments",
                get(list_comments).post(create_comment),
            )
            .route(
                "/repos/{owner}/{repo}/issues/comments/{id}",
                patch(update_comment),
            )
            .route(
                "/repos/{owner}/{repo}/issues/{n}/reactions",
                post(create_reaction),
            )
            .fallback(|| async {
                (
                    StatusCode::NOT_FOUND,
                    axum::Json(json!({"message": "Not Found"})),
                )
            })
            .layer(axum::middleware::from_fn_with_state(state.clone(), chaos))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                rate_limit_headers,
            ))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            state,
            _server: server,
        }
    }

    pub fn set_permission(&self, repo: &str, login: &str, permission: &str) {
        self.state.lock().unwrap().permissions.insert(
            (repo.to_lowercase(), login.to_lowercase()),
            permission.into(),
        );
    }

    /// A personal access token of `login`, accepted by the API and the git server.
    pub fn add_personal_token(&self, token: &str, login: &str) {
        self.state
            .lock()
            .unwrap()
            .personal
            .insert(token.into(), login.into());
    }

    pub fn install(&self, installation: u64, repos: &[&str]) {
        self.state.lock().unwrap().installations.insert(
            installation,
            repos.iter().map(|r| (*r).to_owned()).collect(),
        );
    }

    /// A pull request with review comments `(path, line, body, author)`.
    pub fn add_pull(
        &self,
        number: u64,
        head_ref: &str,
        review_comments: &[(&str, u64, &str, &str)],
    ) {
        self.state.lock().unwrap().pulls.push(Pull {
            number,
            head_ref: head_ref.into(),
            review_comments: review_comments
                .iter()
                .map(|(p, l, b, a)| ((*p).into(), *l, (*b).into(), (*a).into()))
                .collect(),
            ..Default::default()
        });
    }

    /// Waits until `check` holds for the state (by the one waiting rule,
    /// [`crate::story::eventually`]).
    pub async fn wait_until(&self, what: &str, check: impl Fn(&St) -> bool) {
        self.wait_until_for(what, crate::support::PATIENCE, check)
            .await
    }

    /// [`FakeGithub::wait_until`], for at most `patience`.
    pub async fn wait_until_for(
        &self,
        what: &str,
        patience: Duration,
        check: impl Fn(&St) -> bool,
    ) {
        let what = format!("the fake GitHub to see {what} (the requests it saw are shown)");
        crate::support::eventually_for(&what, patience, async || {
            let seen = check(&self.state.lock().unwrap());
            if seen { Ok(()) } else { Err(self.requests()) }
        })
        .await
    }

    /// The next request(s) get this answer instead of being handled.
    pub fn fail_next(&self, status: u16, headers: &[(&str, &str)]) {
        self.state.lock().unwrap().failures.push_back((
            status,
            headers
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        ));
    }

    /// Every request starting with `request` (`METHOD /path`) is answered only after `wait`,
    /// as GitHub under load: what it does is done at the end of the wait.
    pub fn slow_on(&self, request: &str, wait: Duration) {
        self.state
            .lock()
            .unwrap()
            .slow_on
            .push((request.into(), wait));
    }

    /// The next request starting with `request` (`METHOD /path`) gets `status`.
    pub fn fail_on(&self, request: &str, status: u16) {
        self.state
            .lock()
            .unwrap()
            .failures_on
            .push((request.into(), status));
    }

    /// GitHub sends a person back from its new-App page with `code`.
    pub fn hand_out_manifest_code(&self, code: &str) {
        self.state.lock().unwrap().manifest_codes.push(code.into());
    }

    /// Requests starting with `request` are answered 503 with `Retry-After: 0` until
    /// [`FakeGithub::up`].
    pub fn down_on(&self, request: &str) {
        self.state.lock().unwrap().down_on.push(request.into());
    }

    /// Every request is served again.
    pub fn up(&self) {
        self.state.lock().unwrap().down_on.clear();
    }

    /// Every installation token stops working, as after an hour.
    /// From now on `percent` of requests fail at random (see [`Chaos`]), held for `hang` when
    /// they time out.
    pub fn chaos(&self, percent: u64, seed: u64, hang: Duration) {
        eprintln!("fake GitHub: {percent}% of requests fail, seed {seed}");
        self.state.lock().unwrap().chaos = Some(Chaos {
            percent,
            state: seed.max(1),
            played: Default::default(),
            hang,
        });
    }

    /// Stops the random failures; how many of each fault were played.
    pub fn calm(&self) -> std::collections::BTreeMap<&'static str, u32> {
        self.state
            .lock()
            .unwrap()
            .chaos
            .take()
            .map(|c| c.played)
            .unwrap_or_default()
    }

    pub fn expire_tokens(&self) {
        for (_, (_, exp)) in self.state.lock().unwrap().tokens.iter_mut() {
            *exp = Instant::now() - Duration::from_secs(1);
        }
    }

    /// A comment written by `author` (someone other than the App), as on GitHub.
    pub fn add_comment(&self, issue: u64, author: &str, body: &str) -> u64 {
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        let id = st.next_id;
        st.comments.push(Comment {
            id,
            issue,
            body: body.into(),
            author: author.into(),
            edits: 0,
        });
        id
    }

    pub fn tokens_issued(&self) -> u32 {
        self.state.lock().unwrap().tokens_issued
    }

    pub fn comments(&self, issue: u64) -> Vec<Comment> {
        self.state
            .lock()
            .unwrap()
            .comments
            .iter()
            .filter(|c| c.issue == issue)
            .cloned()
            .collect()
    }

    pub fn reactions(&self, issue: u64) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .reactions
            .iter()
            .filter(|r| r.0 == issue)
            .map(|r| r.1.clone())
            .collect()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

impl St {
    pub fn token_valid(&self, token: &str) -> bool {
        self.personal.contains_key(token)
            || self
                .tokens
                .get(token)
                .is_some_and(|(_, exp)| *exp > Instant::now())
    }

    /// Who a request acts as: a personal token's owner, else the App's bot.
    fn login_of(&self, headers: &HeaderMap) -> String {
        bearer(headers)
            .and_then(|t| self.personal.get(&t).cloned())
            .unwrap_or_else(|| "autodev[bot]".into())
    }

    /// Every installation token handed out (to look for them where they must not be).
    pub fn all_tokens(&self) -> Vec<String> {
        self.tokens.keys().cloned().collect()
    }
}

fn err(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({ "message": message, "documentation_url": "https://docs.github.com/rest" }),
        ),
    )
        .into_response()
}

/// Records the request and plays a scripted failure, if one is queued.
fn intercept(st: &mut St, what: String) -> Option<Response> {
    if st.down_on.iter().any(|p| what.starts_with(p.as_str())) {
        st.requests.push(what);
        let mut r = err(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("0"));
        return Some(r);
    }
    if let Some(i) = st.failures_on.iter().position(|(p, _)| what.starts_with(p)) {
        let (_, status) = st.failures_on.remove(i);
        st.requests.push(what);
        return Some(err(
            StatusCode::from_u16(status).unwrap(),
            "Validation Failed: scripted failure",
        ));
    }
    st.requests.push(what);
    let (status, headers) = st.failures.pop_front()?;
    let mut resp = err(StatusCode::from_u16(status).unwrap(), "scripted failure");
    for (k, v) in headers {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Some(resp)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

/// The App JWT, checked as GitHub does.
fn check_jwt(st: &St, headers: &HeaderMap) -> Result<(), Response> {
    let token = bearer(headers).ok_or_else(|| {
        err(
            StatusCode::UNAUTHORIZED,
            "A JSON web token could not be decoded",
        )
    })?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(st.public_key.as_bytes()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iat"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).map_err(|e| {
        err(
            StatusCode::UNAUTHORIZED,
            &format!(
                "'Expiration time' claim ('exp') is too far in the future or invalid JWT: {e}"
            ),
        )
    })?;
    // GitHub takes the issuer as a number or a string.
    let iss = &data.claims["iss"];
    if iss.as_u64() != Some(st.app_id) && iss.as_str() != Some(st.app_id.to_string().as_str()) {
        return Err(err(StatusCode::UNAUTHORIZED, "Integration not found"));
    }
    let (iat, exp) = (
        data.claims["iat"].as_i64().unwrap_or(0),
        data.claims["exp"].as_i64().unwrap_or(0),
    );
    let now = chrono::Utc::now().timestamp();
    if iat > now + 1 || exp - iat > 660 || exp <= now {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "'Issued at' or 'Expiration time' claim is invalid",
        ));
    }
    Ok(())
}

/// An installation token, checked for existence and expiry, or a personal token (which acts
/// as installation 0: no installation).
fn check_token(st: &St, headers: &HeaderMap) -> Result<u64, Response> {
    let token =
        bearer(headers).ok_or_else(|| err(StatusCode::UNAUTHORIZED, "Requires authentication"))?;
    if st.personal.contains_key(&token) {
        return Ok(0);
    }
    match st.tokens.get(&token) {
        Some((inst, exp)) if *exp > Instant::now() => Ok(*inst),
        _ => Err(err(StatusCode::UNAUTHORIZED, "Bad credentials")),
    }
}

/// Records the request, plays a scripted failure if one is queued, and checks the
/// installation token; returns the locked state, or answers for the handler.
/// Waits as [`FakeGithub::slow_on`] asks for `request`.
async fn slow(s: &Shared, request: &str) {
    let wait = s
        .lock()
        .unwrap()
        .slow_on
        .iter()
        .find(|(prefix, _)| request.starts_with(prefix.as_str()))
        .map(|(_, wait)| *wait);
    if let Some(wait) = wait {
        tokio::time::sleep(wait).await;
    }
}

macro_rules! enter {
    ($s:expr, $headers:expr, $what:expr) => {{
        let mut st = $s.lock().unwrap();
        if let Some(r) = intercept(&mut st, $what) {
            return r;
        }
        if let Err(r) = check_token(&st, &$headers) {
            return r;
        }
        st
    }};
}

async fn access_token(
    State(s): State<Shared>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Response {
    let mut st = s.lock().unwrap();
    if let Some(r) = intercept(
        &mut st,
        format!("POST /app/installations/{id}/access_tokens"),
    ) {
        return r;
    }
    if let Err(r) = check_jwt(&st, &headers) {
        return r;
    }
    st.tokens_issued += 1;
    let token = format!("ghs_fake{}x{}", id, st.tokens_issued);
    let expires = chrono::Utc::now() + chrono::Duration::from_std(st.token_ttl).unwrap();
    let ttl = st.token_ttl;
    st.tokens.insert(token.clone(), (id, Instant::now() + ttl));
    let mut body = example("apps.create-installation-access-token");
    body["token"] = json!(token);
    body["expires_at"] = json!(expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// The App itself, as its JWT sees it: slug `autodev`, so its comments are `autodev[bot]`'s.
async fn get_app(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    if let Some(r) = intercept(&mut st, "GET /app".into()) {
        return r;
    }
    if let Err(r) = check_jwt(&st, &headers) {
        return r;
    }
    let mut body = example("apps.get-authenticated");
    body["id"] = json!(st.app_id);
    body["slug"] = json!("autodev");
    body["name"] = json!("autodev");
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn installation_repos(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let mut st = s.lock().unwrap();
    if let Some(r) = intercept(&mut st, "GET /installation/repositories".into()) {
        return r;
    }
    let inst = match check_token(&st, &headers) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let template = example("apps.list-repos-accessible-to-installation");
    let repos: Vec<Value> = st
        .installations
        .get(&inst)
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|full| {
            let mut r = template["repositories"][0].clone();
            let (owner, name) = full.split_once('/').unwrap();
            r["full_name"] = json!(full);
            r["name"] = json!(name);
            r["owner"]["login"] = json!(owner);
            r
        })
        .collect();
    let mut body = template;
    body["total_count"] = json!(repos.len());
    body["repositories"] = Value::Array(repos);
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn permission(
    State(s): State<Shared>,
    Path((owner, repo, user)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let st = enter!(
        s,
        headers,
        format!("GET /repos/{owner}/{repo}/collaborators/{user}/permission")
    );
    let key = (
        format!("{owner}/{repo}").to_lowercase(),
        user.to_lowercase(),
    );
    let Some(p) = st.permissions.get(&key).cloned() else {
        return err(StatusCode::NOT_FOUND, "Not Found");
    };
    let mut body = example("repos.get-collaborator-permission-level");
    body["permission"] = json!(p);
    body["role_name"] = json!(p);
    body["user"]["login"] = json!(user);
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn comment_json(c: &Comment) -> Value {
    let mut v = example("issues.create-comment");
    v["id"] = json!(c.id);
    v["body"] = json!(c.body);
    v["user"]["login"] = json!(c.author);
    v["user"]["type"] = json!(if c.author.ends_with("[bot]") {
        "Bot"
    } else {
        "User"
    });
    v
}

async fn list_comments(
    State(s): State<Shared>,
    Path((owner, repo, n)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let st = enter!(
        s,
        headers,
        format!("GET /repos/{owner}/{repo}/issues/{n}/comments")
    );
    let list: Vec<Value> = st
        .comments
        .iter()
        .filter(|c| c.issue == n)
        .map(comment_json)
        .collect();
    (StatusCode::OK, axum::Json(Value::Array(list))).into_response()
}

async fn create_comment(
    State(s): State<Shared>,
    Path((owner, repo, n)): Path<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = enter!(
        s,
        headers,
        format!("POST /repos/{owner}/{repo}/issues/{n}/comments")
    );
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return err(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    let Some(text) = req["body"].as_str() else {
        return err(StatusCode::UNPROCESSABLE_ENTITY, "body is missing");
    };
    st.next_id += 1;
    let c = Comment {
        id: st.next_id,
        issue: n,
        body: text.into(),
        author: "autodev[bot]".into(),
        edits: 0,
    };
    st.comments.push(c.clone());
    (StatusCode::CREATED, axum::Json(comment_json(&c))).into_response()
}

async fn update_comment(
    State(s): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = enter!(
        s,
        headers,
        format!("PATCH /repos/{owner}/{repo}/issues/comments/{id}")
    );
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return err(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    let Some(c) = st.comments.iter_mut().find(|c| c.id == id) else {
        return err(StatusCode::NOT_FOUND, "Not Found");
    };
    c.body = req["body"].as_str().unwrap_or_default().into();
    c.edits += 1;
    let v = comment_json(c);
    (StatusCode::OK, axum::Json(v)).into_response()
}

async fn create_reaction(
    State(s): State<Shared>,
    Path((owner, repo, n)): Path<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = enter!(
        s,
        headers,
        format!("POST /repos/{owner}/{repo}/issues/{n}/reactions")
    );
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let content = req["content"].as_str().unwrap_or_default().to_owned();
    // GitHub answers 200 with the existing reaction when it is already there.
    let existed = st.reactions.iter().any(|r| r.0 == n && r.1 == content);
    if !existed {
        st.reactions.push((n, content.clone()));
    }
    let mut v = example("reactions.create-for-issue");
    v["content"] = json!(content);
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (status, axum::Json(v)).into_response()
}

fn check_json(c: &CheckRun) -> Value {
    let mut v = example("checks.create");
    v["id"] = json!(c.id);
    v["name"] = json!(c.name);
    v["head_sha"] = json!(c.head_sha);
    v["status"] = json!(c.status);
    v["conclusion"] = json!(c.conclusion);
    v["external_id"] = json!(c.external_id);
    v["output"]["summary"] = json!(c.summary);
    v
}

fn apply_check(c: &mut CheckRun, req: &Value) -> Result<(), Response> {
    for (field, limit) in [("summary", 65_535), ("text", 65_535)] {
        if req["output"][field]
            .as_str()
            .is_some_and(|s| s.chars().count() > limit)
        {
            return Err(err(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("output.{field} is too long (maximum is 65535 characters)"),
            ));
        }
    }
    if let Some(s) = req["status"].as_str() {
        c.status = s.into();
    }
    if let Some(s) = req["conclusion"].as_str() {
        c.conclusion = Some(s.into());
        c.status = "completed".into();
    }
    if let Some(s) = req["external_id"].as_str() {
        c.external_id = Some(s.into());
    }
    if let Some(s) = req["output"]["summary"].as_str() {
        c.summary = s.into();
    }
    if let Some(url) = req["details_url"].as_str() {
        if !url.starts_with("https://") && !url.starts_with("http://") {
            return Err(err(StatusCode::UNPROCESSABLE_ENTITY, "Invalid details_url"));
        }
        c.details_url = Some(url.into());
    }
    if let Some(actions) = req["actions"].as_array() {
        if actions.len() > 3
            || actions.iter().any(|a| {
                a["label"].as_str().is_none_or(|l| l.len() > 20)
                    || a["identifier"].as_str().is_none_or(|i| i.len() > 20)
                    || a["description"].as_str().is_none_or(|d| d.len() > 40)
            })
        {
            return Err(err(StatusCode::UNPROCESSABLE_ENTITY, "Invalid actions"));
        }
        c.actions = actions
            .iter()
            .filter_map(|a| a["identifier"].as_str().map(str::to_owned))
            .collect();
    }
    Ok(())
}

async fn create_check_run(
    State(s): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    slow(&s, &format!("POST /repos/{owner}/{repo}/check-runs")).await;
    let mut st = enter!(s, headers, format!("POST /repos/{owner}/{repo}/check-runs"));
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let (Some(name), Some(sha)) = (req["name"].as_str(), req["head_sha"].as_str()) else {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name and head_sha are required",
        );
    };
    st.next_id += 1;
    let mut c = CheckRun {
        id: st.next_id,
        name: name.into(),
        head_sha: sha.into(),
        status: "queued".into(),
        conclusion: None,
        external_id: None,
        summary: String::new(),
        updates: 0,
        actions: Vec::new(),
        details_url: None,
    };
    if let Err(r) = apply_check(&mut c, &req) {
        return r;
    }
    let v = check_json(&c);
    st.check_runs.push(c);
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

async fn update_check_run(
    State(s): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = enter!(
        s,
        headers,
        format!("PATCH /repos/{owner}/{repo}/check-runs/{id}")
    );
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(c) = st.check_runs.iter_mut().find(|c| c.id == id) else {
        return err(StatusCode::NOT_FOUND, "Not Found");
    };
    if let Err(r) = apply_check(c, &req) {
        return r;
    }
    c.updates += 1;
    let v = check_json(c);
    (StatusCode::OK, axum::Json(v)).into_response()
}

async fn list_check_runs(
    State(s): State<Shared>,
    Path((owner, repo, sha)): Path<(String, String, String)>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let st = enter!(
        s,
        headers,
        format!("GET /repos/{owner}/{repo}/commits/{sha}/check-runs")
    );
    let runs: Vec<Value> = st
        .check_runs
        .iter()
        .filter(|c| c.head_sha == sha && q.get("check_name").is_none_or(|n| *n == c.name))
        .map(check_json)
        .collect();
    let mut body = example("checks.list-for-ref");
    body["total_count"] = json!(runs.len());
    body["check_runs"] = Value::Array(runs);
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn get_pull(
    State(s): State<Shared>,
    Path((owner, repo, n)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let st = enter!(s, headers, format!("GET /repos/{owner}/{repo}/pulls/{n}"));
    let Some(p) = st.pulls.iter().find(|p| p.number == n) else {
        return err(StatusCode::NOT_FOUND, "Not Found");
    };
    let v = pull_json(p);
    (StatusCode::OK, axum::Json(v)).into_response()
}

async fn list_review_comments(
    State(s): State<Shared>,
    Path((owner, repo, n)): Path<(String, String, u64)>,
    headers: HeaderMap,
) -> Response {
    let st = enter!(
        s,
        headers,
        format!("GET /repos/{owner}/{repo}/pulls/{n}/comments")
    );
    let template = example("pulls.list-review-comments")[0].clone();
    let list: Vec<Value> = st
        .pulls
        .iter()
        .filter(|p| p.number == n)
        .flat_map(|p| p.review_comments.clone())
        .map(|(path, line, body, author)| {
            let mut c = template.clone();
            c["path"] = json!(path);
            c["line"] = json!(line);
            c["body"] = json!(body);
            c["user"]["login"] = json!(author);
            c
        })
        .collect();
    (StatusCode::OK, axum::Json(Value::Array(list))).into_response()
}

fn pull_json(p: &Pull) -> Value {
    let mut v = example("pulls.get");
    v["number"] = json!(p.number);
    v["head"]["ref"] = json!(p.head_ref);
    v["base"]["ref"] = json!(p.base);
    v["title"] = json!(p.title);
    v["body"] = json!(p.body);
    v["draft"] = json!(p.draft);
    v["state"] = json!(if p.closed { "closed" } else { "open" });
    v["user"]["login"] = json!(if p.author.is_empty() {
        "autodev[bot]"
    } else {
        &p.author
    });
    v
}

async fn list_pulls(
    State(s): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let st = enter!(s, headers, format!("GET /repos/{owner}/{repo}/pulls"));
    // `head` is `owner:branch`, as GitHub takes it.
    let head = q
        .get("head")
        .map(|h| h.split_once(':').map_or(h.as_str(), |(_, b)| b).to_owned());
    let list: Vec<Value> = st
        .pulls
        .iter()
        .filter(|p| head.as_ref().is_none_or(|h| *h == p.head_ref))
        .map(pull_json)
        .collect();
    (StatusCode::OK, axum::Json(Value::Array(list))).into_response()
}

async fn create_pull(
    State(s): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = enter!(s, headers, format!("POST /repos/{owner}/{repo}/pulls"));
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let (Some(head), Some(base), Some(title)) = (
        req["head"].as_str(),
        req["base"].as_str(),
        req["title"].as_str(),
    ) else {
        return err(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    if st.pulls.iter().any(|p| p.head_ref == head) {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("A pull request already exists for {owner}:{head}."),
        );
    }
    st.next_id += 1;
    let p = Pull {
        number: st.next_id,
        head_ref: head.into(),
        base: base.into(),
        title: title.into(),
        body: req["body"].as_str().unwrap_or_default().into(),
        draft: req["draft"].as_bool().unwrap_or(false),
        author: st.login_of(&headers),
        ..Default::default()
    };
    let v = pull_json(&p);
    st.pulls.push(p);
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

async fn request_reviewers(
    State(s): State<Shared>,
    Path((owner, repo, n)): Path<(String, String, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = enter!(
        s,
        headers,
        format!("POST /repos/{owner}/{repo}/pulls/{n}/requested_reviewers")
    );
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let users: Vec<String> = req["reviewers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let teams: Vec<String> = req["team_reviewers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let full = format!("{owner}/{repo}").to_lowercase();
    if users.iter().any(|u| {
        !st.permissions
            .contains_key(&(full.clone(), u.to_lowercase()))
    }) {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Reviews may only be requested from collaborators. One or more of the users or teams you specified is not a collaborator of the repository.",
        );
    }
    let Some(p) = st.pulls.iter_mut().find(|p| p.number == n) else {
        return err(StatusCode::NOT_FOUND, "Not Found");
    };
    if users.iter().any(|u| u.eq_ignore_ascii_case(&p.author)) {
        return err(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Review cannot be requested from pull request author.",
        );
    }
    // GitHub keeps a set: asking again for someone already asked changes nothing.
    for u in users {
        if !p.reviewers.contains(&u) {
            p.reviewers.push(u);
        }
    }
    for t in teams {
        if !p.team_reviewers.contains(&t) {
            p.team_reviewers.push(t);
        }
    }
    let v = pull_json(p);
    (StatusCode::CREATED, axum::Json(v)).into_response()
}

/// GitHub's rate-limit headers, on every answer: each request uses one of [`RATE_LIMIT`].
async fn rate_limit_headers(
    State(s): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let used = {
        let mut st = s.lock().unwrap();
        st.rate_used += 1;
        st.rate_used
    };
    let mut response = next.run(request).await;
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    for (name, value) in [
        ("x-ratelimit-limit", RATE_LIMIT.to_string()),
        (
            "x-ratelimit-remaining",
            RATE_LIMIT.saturating_sub(used).to_string(),
        ),
        ("x-ratelimit-used", used.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
        ("x-ratelimit-resource", "core".to_owned()),
    ] {
        // A test's own limit headers (an exhausted window) stand.
        response
            .headers_mut()
            .entry(name)
            .or_insert(axum::http::HeaderValue::from_str(&value).unwrap());
    }
    response
}

/// Plays [`Chaos`]: fails a request before it reaches its handler, or after.
async fn chaos(
    State(s): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let picked = {
        let mut st = s.lock().unwrap();
        st.chaos
            .as_mut()
            .and_then(|c| c.pick().map(|f| (f, c.hang)))
    };
    let Some((fault, hang)) = picked else {
        return next.run(request).await;
    };
    let limited = |message: &str| {
        let mut r = err(StatusCode::FORBIDDEN, message);
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        r
    };
    match fault {
        "500" => err(StatusCode::INTERNAL_SERVER_ERROR, "Server Error"),
        "502" => err(StatusCode::BAD_GATEWAY, "Bad Gateway"),
        "secondary rate limit" => limited(
            "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        ),
        "abuse" => limited(
            "You have triggered an abuse detection mechanism. Please wait a few minutes before you try again.",
        ),
        "timeout" => {
            tokio::time::sleep(hang).await;
            err(StatusCode::GATEWAY_TIMEOUT, "too late")
        }
        "applied, then 502" => {
            let _applied = next.run(request).await;
            err(StatusCode::BAD_GATEWAY, "Bad Gateway")
        }
        _ => {
            let applied = next.run(request).await;
            tokio::time::sleep(hang).await;
            applied
        }
    }
}

/// `POST /app-manifests/{code}/conversions`: the App made from a manifest, once per code (no
/// authentication, as on GitHub).
async fn convert_manifest(State(s): State<Shared>, Path(code): Path<String>) -> Response {
    let mut st = s.lock().unwrap();
    st.requests
        .push(format!("POST /app-manifests/{code}/conversions"));
    let Some(i) = st.manifest_codes.iter().position(|c| *c == code) else {
        return err(StatusCode::NOT_FOUND, "Not Found");
    };
    st.manifest_codes.remove(i);
    let body = json!({
        "id": st.app_id,
        "slug": "autodev-test",
        "node_id": "MDM6QXBwNTk=",
        "name": "autodev",
        "html_url": "https://github.com/apps/autodev-test",
        "client_id": "Iv1.8a61f9b3a7aba766",
        "client_secret": "1726be1638095a19edd134c77bde3aa2ece1e5d8",
        "webhook_secret": "secret-made-by-the-manifest-flow",
        "pem": st.private_pem,
    });
    (StatusCode::CREATED, axum::Json(body)).into_response()
}
