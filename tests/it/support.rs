//! Test harness: temporary repositories, fake agents, and an `autodev serve` process.

use std::fmt::Debug;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_autodev");

/// What a fake claude prints on success.
pub const CLAUDE_OK: &str = r#"{"type":"result","subtype":"success","is_error":false,"result":"done","num_turns":1,"total_cost_usd":0.01}"#;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A temporary world: a git repository (first branch `master`), a data directory outside it,
/// a directory of fake agents, a fake HOME, and a config file.
pub struct World {
    pub root: tempfile::TempDir,
    pub repo: PathBuf,
    pub data: PathBuf,
    pub bin: PathBuf,
    pub home: PathBuf,
    pub agent_dir: PathBuf,
    pub config: PathBuf,
    pub extra_env: Vec<(String, String)>,
    /// `agent.sandbox` in the config `write_config` writes: the default `auto`, or `off`.
    pub sandbox: &'static str,
}

impl World {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let repo = root.path().join("repo");
        let data = root.path().join("data");
        let bin = root.path().join("bin");
        let home = root.path().join("home");
        let agent_dir = root.path().join("agent-out");
        for d in [&repo, &data, &bin, &home, &agent_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        git(&repo, &["init", "-q", "-b", "master"]);
        git(&repo, &["config", "user.name", "Test"]);
        git(&repo, &["config", "user.email", "test@example.com"]);
        std::fs::write(repo.join("README.md"), "# demo\n").unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "initial"]);
        let config = root.path().join("config.yaml");
        let world = Self {
            root,
            repo,
            data,
            bin,
            home,
            agent_dir,
            config,
            extra_env: Vec::new(),
            sandbox: default_sandbox(),
        };
        world.write_config("providers:\n  order: [claude_cli]\n");
        world
    }

    /// A world whose agents run without the sandbox (`agent.sandbox: off`), for tests that
    /// watch an agent's processes from outside: inside the sandbox's PID namespace an agent's
    /// pid means nothing out here.
    pub fn unconfined() -> Self {
        let mut world = Self::new();
        world.unconfine();
        world
    }

    /// Switches this world's agents to `agent.sandbox: off` (see [`World::unconfined`]).
    pub fn unconfine(&mut self) {
        self.sandbox = "off";
        self.write_config("providers:\n  order: [claude_cli]\n");
    }

    /// Writes the config: `providers_yaml` plus fast heartbeats and the fake agents' variable.
    /// The sandbox is the default (`auto`); the fake agents' own directory, where they leave
    /// what they saw, is writable in it.
    pub fn write_config(&self, providers_yaml: &str) {
        let text = format!(
            "{providers_yaml}\nworkers: {{concurrency: 2, heartbeat_seconds: 1, missed_heartbeats: 2}}\nagent: {{env: [FAKE_AGENT_DIR], sandbox: {}, sandbox_writable: [{}]}}\n",
            self.sandbox,
            self.agent_dir.display()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Installs an executable script named `name` in the fake agents' directory.
    pub fn agent(&self, name: &str, body: &str) -> PathBuf {
        let path = self.bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A fake claude that writes `file` with `content` in its working directory and succeeds.
    pub fn simple_claude(&self, file: &str, content: &str) {
        self.agent(
            "claude",
            &format!(
                "cat > \"$FAKE_AGENT_DIR/prompt-$$.txt\"\nprintf '%s\\n' '{content}' > '{file}'\necho '{CLAUDE_OK}'"
            ),
        );
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "PATH".to_owned(),
                format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin.display()),
            ),
            ("HOME".to_owned(), self.home.display().to_string()),
            (
                "AUTODEV_DATA_DIR".to_owned(),
                self.data.display().to_string(),
            ),
            ("REPO_PATH".to_owned(), self.repo.display().to_string()),
            (
                "AUTODEV_CONFIG".to_owned(),
                self.config.display().to_string(),
            ),
            (
                "AUTODEV_LOG".to_owned(),
                "info,sqlx=warn,apalis=warn".to_owned(),
            ),
            (
                "FAKE_AGENT_DIR".to_owned(),
                self.agent_dir.display().to_string(),
            ),
        ];
        env.extend(self.extra_env.iter().cloned());
        env
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(self.root.path())
            .env_clear()
            .envs(self.env());
        cmd
    }

    pub fn serve(&self) -> Server {
        Server::start(self, &[])
    }

    /// `autodev serve` with extra arguments, e.g. `--workers 0`.
    pub fn serve_with(&self, args: &[&str]) -> Server {
        Server::start(self, args)
    }

    /// An `autodev worker` process on the same database; killed (whole group) on drop.
    pub fn worker(&self) -> Proc {
        use std::os::unix::process::CommandExt;
        let child = self
            .command(&["worker"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("autodev worker starts");
        Proc(child)
    }

    /// The world's database, opened beside the running processes.
    pub async fn db(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            self.data.join("autodev.db").display()
        ))
        .await
        .unwrap()
    }

    /// Runs one statement on the world's database (to set up a state a crash leaves);
    /// how many rows it changed.
    pub async fn execute(&self, sql: &'static str) -> u64 {
        let pool = self.db().await;
        let changed = sqlx::query(sql)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
        pool.close().await;
        changed
    }

    pub fn write_spec(&self, name: &str, text: &str) -> PathBuf {
        let path = self.root.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// `auto` where bubblewrap can make a sandbox (CI installs it), else `off`: App mode refuses
/// to start without the sandbox unless told `off`, and a machine without user namespaces
/// should still run the suite, unconfined, saying so.
fn default_sandbox() -> &'static str {
    static MODE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    MODE.get_or_init(|| {
        let works = Command::new("bwrap")
            .args(["--ro-bind", "/", "/", "--unshare-pid", "--", "true"])
            .output()
            .is_ok_and(|o| o.status.success());
        if works {
            "auto"
        } else {
            eprintln!("bubblewrap cannot make a sandbox here: the suite's agents run unconfined");
            "off"
        }
    })
}

/// A running `autodev serve` on a free port; killed (whole process group) on drop.
pub struct Server {
    child: Child,
    pub url: String,
    pub log: Arc<Mutex<String>>,
    pub client: reqwest::Client,
    token: Option<String>,
}

impl Server {
    fn start(world: &World, extra: &[&str]) -> Self {
        use std::os::unix::process::CommandExt;
        let mut args = vec!["serve", "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut child = world
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("autodev starts");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start:\n{}", log.lock().unwrap());
            }
        };
        let token = world
            .extra_env
            .iter()
            .find(|(k, _)| k == "AUTODEV_API_TOKEN")
            .map(|(_, v)| v.clone());
        Self {
            child,
            url: format!("http://{addr}"),
            log,
            client: reqwest::Client::new(),
            token,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL, as a crash would.
    pub fn kill_hard(mut self) {
        unsafe {
            libc::kill(self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// SIGTERM, as a service manager stops it; waits for the exit (at most `within`) and says
    /// how it ended and how long that took.
    pub async fn terminate(mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let asked = Instant::now();
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, asked.elapsed());
            }
            assert!(
                asked.elapsed() < within,
                "still running {}s after SIGTERM:\n{}",
                within.as_secs(),
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the process dies of a crash point (`SIGABRT`), as a test build does where
    /// `FAILPOINTS` says; its log says where.
    pub async fn crashed(mut self) -> String {
        use std::os::unix::process::ExitStatusExt;
        let status = eventually("the server to reach its crash point", async || {
            let log = || Shown(self.log.lock().unwrap().clone());
            self.child.try_wait().unwrap().ok_or_else(log)
        })
        .await;
        let log = self.log.lock().unwrap().clone();
        assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}:\n{log}");
        log
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    pub async fn post_spec(&self, content_type: &str, body: &str) -> (u16, Value) {
        let resp = self
            .auth(self.client.post(format!("{}/tasks", self.url)))
            .header("Content-Type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .auth(self.client.get(format!("{}{path}", self.url)))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let resp = self
            .auth(self.client.post(format!("{}{path}", self.url)))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        self.auth(self.client.get(format!("{}/metrics", self.url)))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the task's state is one of `states`; the task.
    pub async fn wait_for(&self, id: &str, states: &[State]) -> TaskView {
        eventually(&format!("task {id} to be {states:?}"), async || {
            let (status, task) = self.get(&format!("/tasks/{id}")).await;
            match serde_json::from_value::<TaskView>(task.clone()) {
                Ok(t) if status == 200 && states.contains(&t.state) => Ok(t),
                _ => Err(Shown(format!(
                    "{task:#}\nserver log:\n{}",
                    self.log.lock().unwrap()
                ))),
            }
        })
        .await
    }
}

/// Text shown as it is in a failure message.
pub struct Shown(pub String);

impl std::fmt::Debug for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        unsafe {
            libc::killpg(self.pid(), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A child process killed with its whole group on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        unsafe {
            libc::killpg(self.0.id() as i32, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

pub fn spec(id: &str, extra: &str) -> String {
    format!(
        "id: {id}\ntitle: Add a feature\ndescription: Write the feature file.\nrole: backend\n{extra}"
    )
}

/// Whether any process is still alive with `pid`.
pub fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until `path` exists and holds something.
pub async fn wait_for_file(path: &Path, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where `program` is on this machine's PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Asserts that `text` holds `needle`, showing `text` when it does not.
#[track_caller]
pub fn assert_holds(text: &str, needle: &str) {
    assert!(text.contains(needle), "`{needle}` is missing from:\n{text}");
}

/// Asserts that `text` does not hold `needle`, showing `text` when it does.
#[track_caller]
pub fn assert_lacks(text: &str, needle: &str) {
    assert!(!text.contains(needle), "`{needle}` is in:\n{text}");
}

impl World {
    /// What the fake agents and gates left in `name` in their directory (empty if nothing).
    pub fn left(&self, name: &str) -> String {
        std::fs::read_to_string(self.agent_dir.join(name)).unwrap_or_default()
    }
}

impl Server {
    /// Waits until task `id` has ended; the task.
    pub async fn ended(&self, id: &str) -> TaskView {
        use State::*;
        self.wait_for(id, &[Passed, Failed, Error, Cancelled]).await
    }

    /// Submits `spec(id, extra)` and waits until the task has ended; the task.
    pub async fn run_to_end(&self, id: &str, extra: &str) -> TaskView {
        let (status, body) = self.post_spec("application/yaml", &spec(id, extra)).await;
        assert_eq!(status, 201, "{body}");
        self.ended(id).await
    }
}

/// How long any wait of a test lasts before it fails.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// The one waiting rule: asks `probe` until it answers `Ok`, for at most [`PATIENCE`]; then
/// fails, saying what was awaited and what was last seen.
pub async fn eventually<T, E: Debug>(what: &str, probe: impl AsyncFnMut() -> Result<T, E>) -> T {
    eventually_for(what, PATIENCE, probe).await
}

/// [`eventually`], for a wait that follows a backoff on purpose: at most `patience`.
pub async fn eventually_for<T, E: Debug>(
    what: &str,
    patience: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(seen) if Instant::now() > deadline => {
                panic!("waited {patience:?} for {what}; last seen: {seen:#?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A task as the API shows it (`GET /tasks/{id}`, `GET /repos/{owner}/{repo}/tasks/{id}`).
#[derive(Debug, Clone, Deserialize)]
pub struct TaskView {
    pub id: String,
    pub job_id: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub rounds: i64,
    pub provider: Option<String>,
    pub cost_usd: Option<f64>,
    pub page: Option<String>,
    pub repo: String,
    pub branch: String,
    pub base_branch: Option<String>,
    pub state: State,
    pub last_error: Option<String>,
    pub head_sha: Option<String>,
    pub pushed_sha: Option<String>,
    pub runs: i64,
    pub worktree: Option<String>,
    pub pr_number: Option<u64>,
    pub pr_state: Option<String>,
    #[serde(default)]
    pub spec: Value,
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(default)]
    pub gates: Vec<Gate>,
}

/// Shown whole when an assertion about the task fails.
impl std::fmt::Display for TaskView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:#?}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Queued,
    Running,
    Passed,
    Failed,
    Error,
    Cancelled,
}

impl State {
    pub fn ended(self) -> bool {
        !matches!(self, State::Queued | State::Running)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Gate {
    pub round: i64,
    pub gate: String,
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub run_seq: i64,
    pub kind: String,
    pub message: String,
}

impl TaskView {
    /// How many events of `kind` the timeline has.
    pub fn events_of(&self, kind: &str) -> usize {
        self.events.iter().filter(|e| e.kind == kind).count()
    }

    /// The timeline as text, an event a line (`kind: message`).
    pub fn timeline(&self) -> String {
        let line = |e: &Event| format!("{}: {}\n", e.kind, e.message);
        self.events.iter().map(line).collect()
    }

    /// Whether an event's message holds `text`.
    pub fn told(&self, text: &str) -> bool {
        self.events.iter().any(|e| e.message.contains(text))
    }
}
