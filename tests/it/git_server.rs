//! A local smart-HTTP git server (`git http-backend` behind axum) that, like GitHub, demands an
//! installation token (Basic `x-access-token:<token>`) for fetch and push. Tokens are checked
//! against the fake GitHub's, so an expired one is refused here too.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;

use crate::fake_github::St;

pub struct GitServer {
    pub url: String,
    pub root: PathBuf,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    root: PathBuf,
    github: Arc<Mutex<St>>,
    /// Every `Authorization` value seen, to check what credentials git sent.
    seen: Arc<Mutex<Vec<String>>>,
}

impl GitServer {
    /// Serves the bare repositories under `root` (`<owner>/<name>.git`).
    pub async fn start(root: &Path, github: Arc<Mutex<St>>) -> Self {
        let shared = Shared {
            root: root.to_owned(),
            github,
            seen: Arc::default(),
        };
        let app = Router::new().fallback(backend).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            root: root.to_owned(),
            _server: server,
        }
    }

    /// Creates `<owner>/<name>.git` from `source` (a working repository), with all branches.
    pub fn publish(&self, full_name: &str, source: &Path) -> PathBuf {
        let bare = self.root.join(format!("{}.git", full_name.to_lowercase()));
        std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
        let out = std::process::Command::new("git")
            .args(["clone", "--quiet", "--bare"])
            .arg(source)
            .arg(&bare)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bare
    }

    pub fn clone_url(&self, full_name: &str) -> String {
        format!("{}/{}.git", self.url, full_name.to_lowercase())
    }
}

fn unauthorized() -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, "Authentication required").into_response();
    r.headers_mut().insert(
        "WWW-Authenticate",
        "Basic realm=\"GitHub\"".parse().unwrap(),
    );
    r
}

fn token_ok(shared: &Shared, headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    shared.seen.lock().unwrap().push(value.to_owned());
    let Some(b64) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    let Some(("x-access-token", token)) = decoded.split_once(':') else {
        return false;
    };
    shared.github.lock().unwrap().token_valid(token)
}

async fn backend(State(shared): State<Shared>, req: Request) -> Response {
    if !token_ok(&shared, req.headers()) {
        return unauthorized();
    }
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (content_type, encoding) = (header("content-type"), header("content-encoding"));
    let body: Bytes = axum::body::to_bytes(req.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "x-access-token")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", &query)
        .env("CONTENT_TYPE", &content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", &encoding)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    // A CGI answer: headers, a blank line, the body.
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let Some((at, skip)) = split else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
            .into_response();
    };
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let mut builder = Response::builder().status(200);
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("status") {
            let code: u16 = v
                .split_whitespace()
                .next()
                .unwrap_or("200")
                .parse()
                .unwrap_or(200);
            builder = builder.status(code);
        } else {
            builder = builder.header(k.trim(), v.trim());
        }
    }
    builder.body(Body::from(raw[at + skip..].to_vec())).unwrap()
}
