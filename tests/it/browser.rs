//! The dashboard in a real browser: Debian's headless Chromium, driven through ChromeDriver's
//! WebDriver protocol (plain HTTP, spoken here with reqwest). A screenshot of each page is
//! kept in `target/screenshots/`. Without Chromium and ChromeDriver the test says it was
//! skipped; CI installs both and must not skip it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::*;

/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session on it; both end on drop.
struct Browser {
    driver: Child,
    url: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // A group of its own: Chromium, which it starts, goes with it.
        let driver =
            std::os::unix::process::CommandExt::process_group(&mut Command::new(chromedriver), 0)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        eventually("chromedriver to answer", async || {
            match client.get(format!("{url}/status")).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        // As root Chromium needs --no-sandbox; the network flags keep it from calling out of
        // this machine.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let answer: Value = client
            .post(format!("{url}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {answer}"))
            .to_owned();
        Self {
            driver,
            url,
            session,
            client,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let mut rb = self.client.request(method, url);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let answer: Value = rb.send().await.unwrap().json().await.unwrap();
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element `{css}`: {found}"))
            .to_owned()
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Waits until `js` (an expression) is true in the page; what the page showed if never.
    async fn until(&self, what: &str, js: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = self
                .call(
                    reqwest::Method::POST,
                    "/execute/sync",
                    Some(json!({ "script": format!("try {{ return !!({js}); }} catch (e) {{ return false; }}"), "args": [] })),
                )
                .await;
            if answer == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.script("return document.body.innerText").await;
                panic!("waited {PATIENCE:?} for {what}; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Keeps a screenshot of the page as `target/screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.driver.id()) {
            // SAFETY: killpg only sends a signal, to the group this test started.
            unsafe { libc::killpg(group, libc::SIGKILL) };
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Chromium and ChromeDriver, or why the test is skipped (never in CI).
fn chromium() -> Option<(PathBuf, PathBuf)> {
    match (which("chromium"), which("chromedriver")) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI installs chromium and chromium-driver"
            );
            eprintln!(
                "skipped: needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// Sign in, watch a task go from queued to passed without reloading (it runs in a worker
/// process, the page is served by another), then cancel a running task from its page.
#[tokio::test]
async fn in_a_browser_the_dashboard_follows_tasks_and_a_task_is_cancelled_from_its_page() {
    let Some((chromium, chromedriver)) = chromium() else {
        return;
    };
    let token = "browser-test-token-0123456789";
    let mut world = World::new();
    world
        .extra_env
        .push(("AUTODEV_API_TOKEN".into(), token.into()));
    crate::dashboard::waiting_claude(&world);
    let server = world.serve_with(&["--workers", "0"]);
    let (status, body) = server.post_spec("application/yaml", &spec("b-1", "")).await;
    assert_eq!(status, 201, "{body}");

    let browser = Browser::start(&chromium, &chromedriver).await;
    browser.go(&format!("{}/", server.url)).await;
    browser
        .until("the sign-in page", "document.getElementById('token')")
        .await;
    browser.screenshot("login").await;
    browser.type_into("#token", token).await;
    browser.click("button[type=submit]").await;
    let queued = r#"document.querySelector('tr[data-task="b-1"] .state').textContent === 'queued'"#;
    browser.until("b-1 listed as queued", queued).await;
    browser
        .until(
            "the stream connected",
            "document.getElementById('connection').textContent === 'live'",
        )
        .await;
    browser.screenshot("dashboard-queued").await;
    // A mark the page keeps only as long as it is not reloaded.
    browser.script("window.stayed = 42; return null").await;

    // A worker in another process takes the task; the agent finishes when told to.
    let _worker = world.worker();
    let running = r#"document.querySelector('tr[data-task="b-1"] .state').textContent === 'running'
        && document.querySelector('#running') !== null"#;
    browser.until("b-1 running", running).await;
    browser.screenshot("dashboard-running").await;
    std::fs::write(world.agent_dir.join("go"), "").unwrap();
    let passed = r#"document.querySelector('tr[data-task="b-1"] .state').textContent === 'passed'"#;
    browser.until("b-1 passed", passed).await;
    assert_eq!(
        browser.script("return window.stayed").await,
        json!(42),
        "the page moved without a reload"
    );
    browser.screenshot("dashboard-passed").await;

    // A second task whose agent waits for ever: cancelled from its own page.
    std::fs::remove_file(world.agent_dir.join("go")).unwrap();
    let (status, body) = server.post_spec("application/yaml", &spec("b-2", "")).await;
    assert_eq!(status, 201, "{body}");
    browser
        .until(
            "b-2 listed",
            r#"document.querySelector('tr[data-task="b-2"] a') !== null"#,
        )
        .await;
    browser.click(r#"tr[data-task="b-2"] a"#).await;
    browser
        .until(
            "b-2's page with its agent's output",
            "document.getElementById('state').textContent === 'running'
             && document.getElementById('tail').textContent.includes('waiting for go')",
        )
        .await;
    browser.screenshot("task-running").await;
    browser.click(r#"button[data-action$="/cancel"]"#).await;
    browser
        .until(
            "b-2 cancelled on its page",
            "document.getElementById('state').textContent === 'cancelled'",
        )
        .await;
    browser.screenshot("task-cancelled").await;
    let (_, task) = server.get("/tasks/b-2").await;
    assert_eq!(task["state"], "cancelled", "{task}");
}
