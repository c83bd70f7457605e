//! App mode told as user stories: `app.issue(1).labeled("autodev:backend").by(WRITER).await`,
//! `issue.task().ended().await.state`, `app.remote().file(branch, path)`; one waiting rule.

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;

use serde_json::{Value, json};

use crate::fake_github::{CheckRun, Comment, FakeGithub};
use crate::git_server::GitServer;
use crate::support::{CLAUDE_OK, Server, World, git};
use crate::webhooks::{app_world, deliver, fixture};

pub const REPO: &str = "Codertocat/Hello-World";
/// Someone with write permission on [`REPO`].
pub const WRITER: &str = "Codertocat";

pub use crate::support::{State, TaskView, eventually};

/// App mode against the fake GitHub, the repository served by the token-checking git server.
pub struct App {
    pub world: World,
    pub fake: FakeGithub,
    pub git: GitServer,
    pub server: Server,
}

/// A fake claude that writes `file` with `content` and succeeds.
pub fn writes(file: &str, content: &str) -> String {
    format!("cat >/dev/null\necho {content} > {file}\necho '{CLAUDE_OK}'")
}

impl App {
    /// An agent that writes `feature.txt` holding `x`.
    pub async fn start() -> App {
        Self::with(&writes("feature.txt", "x"), |_, _| {}).await
    }

    /// `agent` is the fake claude's script.
    pub async fn agent(agent: &str) -> App {
        Self::with(agent, |_, _| {}).await
    }

    /// `setup` runs on the world and the fake before the repository is published and the
    /// server starts.
    pub async fn with(agent: &str, setup: impl FnOnce(&mut World, &FakeGithub)) -> App {
        let mut world = app_world();
        world.agent("claude", agent);
        let key = world.root.path().join("app.pem");
        let fake = FakeGithub::start(4242, &key).await;
        fake.install(1, &[REPO]);
        fake.set_permission(REPO, WRITER, "write");
        setup(&mut world, &fake);
        let git = GitServer::start(&world.root.path().join("remote"), fake.state.clone()).await;
        git.publish(REPO, &world.repo);
        world
            .extra_env
            .push(("GITHUB_API_URL".into(), fake.url.clone()));
        let server = world.serve();
        App {
            world,
            fake,
            git,
            server,
        }
    }

    pub fn issue(&self, number: u64) -> Issue<'_> {
        let (app, pull) = (self, false);
        Issue { app, number, pull }
    }

    /// Pull request `number`, where commands are comments too.
    pub fn pull(&self, number: u64) -> Issue<'_> {
        let (app, pull) = (self, true);
        Issue { app, number, pull }
    }

    /// The repository as GitHub describes it in every delivery, cloned from the git server.
    fn repository(&self) -> Value {
        let mut r = fixture("issues.labeled")["repository"].clone();
        r["clone_url"] = json!(self.git.clone_url(REPO));
        r
    }

    /// A delivery of `event` built from the fixture `name`, about [`REPO`].
    fn delivery(&self, event: &'static str, name: &str, who: &'static str) -> Delivery<'_> {
        let mut payload = fixture(name);
        payload["repository"] = self.repository();
        payload["installation"] = json!({"id": 1});
        Delivery {
            app: self,
            event,
            payload,
            who,
        }
    }

    /// Someone presses `action` (`"rerequested"` for Re-run, else a button's identifier) on
    /// the check run of issue #1's task.
    pub fn check_run(&self, action: &str) -> Delivery<'_> {
        let fixture = match action {
            "rerequested" => "check_run.rerequested",
            _ => "check_run.requested_action",
        };
        self.delivery("check_run", fixture, "/sender/login")
            .with(|p| {
                p["check_run"]["name"] = json!("autodev/backend");
                p["check_run"]["external_id"] = json!("issue-1");
                if action != "rerequested" {
                    p["requested_action"]["identifier"] = json!(action);
                }
            })
    }

    /// Every task, as `GET /tasks` lists them.
    pub async fn tasks(&self) -> Vec<TaskView> {
        let (status, list) = self.server.get("/tasks").await;
        assert_eq!(status, 200, "{list}");
        serde_json::from_value(list).unwrap()
    }

    /// The repository on the git server, where autodev pushes.
    pub fn remote(&self) -> Repo {
        Repo(self.git.root.join("codertocat/hello-world.git"))
    }

    /// autodev's own mirror of the repository.
    pub fn mirror(&self) -> Repo {
        Repo(self.world.data.join("mirrors/codertocat__hello-world.git"))
    }

    /// The fake GitHub's check runs.
    pub fn check_runs(&self) -> Vec<CheckRun> {
        self.fake.state.lock().unwrap().check_runs.clone()
    }

    /// Waits until a check run is `what` (`check` holds for it); that check run.
    pub async fn check_run_until(&self, what: &str, check: impl Fn(&CheckRun) -> bool) -> CheckRun {
        let what = format!("a check run {what}");
        eventually(&what, async || {
            let runs = self.check_runs();
            runs.iter().find(|c| check(c)).cloned().ok_or(runs)
        })
        .await
    }

    /// Waits until every GitHub effect queued so far has run, its retries included.
    pub async fn outbox_idle(&self) {
        let pool = self.world.db().await;
        eventually("every outbox job run", async || {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM Jobs WHERE job_type = 'autodev.outbox'
                   AND status NOT IN ('Done', 'Killed', 'Failed')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if pending == 0 { Ok(()) } else { Err(pending) }
        })
        .await;
        pool.close().await;
    }

    /// The fake GitHub's pull requests.
    pub fn pulls(&self) -> Vec<crate::fake_github::Pull> {
        self.fake.state.lock().unwrap().pulls.clone()
    }

    /// How many requests to the fake GitHub start with `method` and end with `path_end`.
    pub fn requests(&self, method: &str, path_end: &str) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.starts_with(method) && r.ends_with(path_end))
            .count()
    }
}

/// An issue (or pull request) of [`REPO`].
pub struct Issue<'a> {
    app: &'a App,
    pub number: u64,
    pull: bool,
}

impl<'a> Issue<'a> {
    fn about(&self, mut d: Delivery<'a>) -> Delivery<'a> {
        d.payload["issue"]["number"] = json!(self.number);
        if self.pull {
            d.payload["issue"]["pull_request"] = json!({
                "url": format!("https://api.github.com/repos/{REPO}/pulls/{}", self.number)
            });
        }
        d
    }

    /// GitHub tells autodev that the label `label` was put on the issue.
    pub fn labeled(&self, label: &str) -> Delivery<'a> {
        let d = self
            .app
            .delivery("issues", "issues.labeled", "/sender/login");
        self.about(d.with(|p| p["label"]["name"] = json!(label)))
    }

    /// GitHub tells autodev that the issue was opened with `label` on it.
    pub fn opened_with(&self, label: &str) -> Delivery<'a> {
        let d = self
            .app
            .delivery("issues", "issues.opened", "/sender/login");
        self.about(d.with(|p| {
            p["issue"]["labels"] = json!([{"name": label, "id": 1, "node_id": "x", "url": "u",
                "color": "fff", "default": false, "description": null}])
        }))
    }

    /// GitHub tells autodev that `body` was commented on the issue.
    pub fn comment(&self, body: &str) -> Delivery<'a> {
        let d = self.app.delivery(
            "issue_comment",
            "issue_comment.created",
            "/comment/user/login",
        );
        self.about(d.with(|p| p["comment"]["body"] = json!(body)))
    }

    /// The issue's task (`issue-N`).
    pub fn task(&self) -> Task<'a> {
        Task {
            server: &self.app.server,
            path: format!("/repos/codertocat/hello-world/tasks/issue-{}", self.number),
            run: None,
        }
    }

    /// The comments on the issue, in order.
    pub fn comments(&self) -> Vec<Comment> {
        self.app.fake.comments(self.number)
    }

    /// The comments on the issue holding `text`.
    pub fn comments_with(&self, text: &str) -> Vec<Comment> {
        let mut c = self.comments();
        c.retain(|c| c.body.contains(text));
        c
    }

    /// Waits until a comment on the issue holds `text`; that comment.
    pub async fn reply_with(&self, text: &str) -> Comment {
        eventually(
            &format!("a comment on #{} holding {text:?}", self.number),
            async || {
                let found = self.comments_with(text).into_iter().next();
                found.ok_or_else(|| self.comments())
            },
        )
        .await
    }

    /// Waits until autodev's status comment on the issue holds `text`; that comment.
    pub async fn status_with(&self, text: &str) -> Comment {
        let marker = format!("<!-- autodev:status issue-{} -->", self.number);
        eventually(
            &format!("the status comment holding {text:?}"),
            async || {
                let found = self.comments().into_iter().find(|c| {
                    c.author == "autodev[bot]"
                        && c.body.starts_with(&marker)
                        && c.body.contains(text)
                });
                found.ok_or_else(|| self.comments())
            },
        )
        .await
    }

    /// Waits until autodev's status comment on the issue shows the state `t` ended in; that
    /// comment.
    pub async fn final_status(&self, t: &TaskView) -> Comment {
        let state = format!("{:?}", t.state).to_lowercase();
        self.status_with(&format!(" **{state}**")).await
    }
}

/// A webhook delivery on its way; `.by(login)` says who did it; awaiting it delivers it and
/// expects 202 with autodev's answer.
pub struct Delivery<'a> {
    app: &'a App,
    event: &'static str,
    payload: Value,
    /// Where the payload names who did it (a JSON pointer).
    who: &'static str,
}

impl<'a> Delivery<'a> {
    pub fn by(mut self, login: &str) -> Self {
        *self.payload.pointer_mut(self.who).unwrap() = json!(login);
        self.payload["sender"]["login"] = json!(login);
        self
    }

    /// The issue was written by `author` and says `body`.
    pub fn written(self, author: &str, body: &str) -> Self {
        self.with(|p| {
            p["issue"]["user"]["login"] = json!(author);
            p["issue"]["body"] = json!(body);
        })
    }

    /// Changes the payload as the story needs.
    pub fn with(mut self, change: impl FnOnce(&mut Value)) -> Self {
        change(&mut self.payload);
        self
    }

    /// Delivers it as delivery `id`, whatever the answer; the status and the body.
    pub async fn answer_as(self, id: &str) -> (u16, Value) {
        deliver(&self.app.server, self.event, id, &self.payload).await
    }

    /// Delivers it, whatever the answer; the status and the body.
    pub async fn answer(self) -> (u16, Value) {
        self.answer_as(&story_id()).await
    }

    /// Delivers it and expects 202; the body.
    pub async fn send(self) -> Value {
        let (status, body) = self.answer().await;
        assert_eq!(status, 202, "{body}");
        body
    }
}

impl<'a> IntoFuture for Delivery<'a> {
    type Output = Value;
    type IntoFuture = Pin<Box<dyn Future<Output = Value> + 'a>>;
    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A delivery id no other delivery of the test run has.
pub fn story_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    format!(
        "story-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// An issue's task, as the API shows it.
pub struct Task<'a> {
    server: &'a Server,
    path: String,
    run: Option<i64>,
}

impl<'a> Task<'a> {
    /// Task `id` of the server's own repository (local mode).
    pub fn local(server: &'a Server, id: &str) -> Self {
        let path = format!("/tasks/{id}");
        Task {
            server,
            path,
            run: None,
        }
    }

    /// Only run `n` counts: `.run(2).ended()` waits for the second run's end.
    pub fn run(mut self, n: i64) -> Self {
        self.run = Some(n);
        self
    }

    /// The task now, or the status the API answered instead.
    pub async fn try_get(&self) -> Result<TaskView, (u16, Value)> {
        let (status, body) = self.server.get(&self.path).await;
        if status != 200 {
            return Err((status, body));
        }
        Ok(serde_json::from_value(body).unwrap())
    }

    pub async fn get(&self) -> TaskView {
        self.try_get().await.unwrap()
    }

    /// Asserts there is no such task.
    pub async fn is_absent(&self) {
        let answer = self.try_get().await;
        assert!(matches!(answer, Err((404, _))), "{answer:#?}");
    }

    /// Waits until `check` holds for the task (for the run asked for, if any); the task.
    pub async fn until(&self, what: &str, check: impl Fn(&TaskView) -> bool) -> TaskView {
        eventually(what, async || match self.try_get().await {
            Ok(t) if self.run.is_none_or(|n| t.runs == n) && check(&t) => Ok(t),
            other => Err(other),
        })
        .await
    }

    /// Waits until the task (its run, if one was named) has ended; the task.
    pub async fn ended(&self) -> TaskView {
        self.until("the task's end", |t| t.state.ended()).await
    }

    /// Waits until the task (its run, if one was named) has ended, and expects it `state`.
    pub async fn ended_as(&self, state: State) -> TaskView {
        let t = self.ended().await;
        assert_eq!(t.state, state, "{t:#?}");
        t
    }
}

/// A bare repository: the remote autodev pushes to, or its mirror.
pub struct Repo(pub PathBuf);

impl Repo {
    /// git with `args` (split at spaces) in the repository; its output, if it succeeded.
    fn try_git(&self, args: &str) -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.0)
            .args(args.split(' '))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        out.status.success().then_some(text)
    }

    /// `path` on `branch`, which must be there.
    pub fn file(&self, branch: &str, path: &str) -> String {
        git(&self.0, &["show", &format!("{branch}:{path}")])
    }

    /// `path` on `branch`, if both are there.
    pub fn try_file(&self, branch: &str, path: &str) -> Option<String> {
        self.try_git(&format!("show {branch}:{path}"))
    }

    pub fn head(&self, branch: &str) -> String {
        git(&self.0, &["rev-parse", branch])
    }

    /// Where `branch` is, if it is there.
    pub fn branch(&self, branch: &str) -> Option<String> {
        self.try_git(&format!("rev-parse --verify --quiet refs/heads/{branch}"))
    }

    /// Whether `ancestor` is in `branch`'s history.
    pub fn contains(&self, branch: &str, ancestor: &str) -> bool {
        self.try_git(&format!("merge-base --is-ancestor {ancestor} {branch}"))
            .is_some()
    }

    /// The branches under `auto/`.
    pub fn auto_branches(&self) -> String {
        git(&self.0, &["branch", "--list", "auto/*"])
    }

    /// Whether `git fsck` finds the repository sound.
    pub fn is_sound(&self) -> bool {
        self.try_git("fsck --no-progress").is_some()
    }

    /// Someone else pushes a commit writing `file` to master.
    pub fn push_to_master(&self, file: &str, content: &str) {
        let dir = tempfile::tempdir().unwrap();
        let clone = Repo(dir.path().join("clone"));
        git(
            dir.path(),
            &["clone", "-q", self.0.to_str().unwrap(), "clone"],
        );
        std::fs::write(clone.0.join(file), content).unwrap();
        let commit = "-c user.name=Someone -c user.email=s@example.com commit -qam moved";
        for args in ["add .", commit, "push -q origin master"] {
            assert!(clone.try_git(args).is_some(), "git {args}");
        }
    }
}

/// What autodev posted, as a snapshot sees it: the values that change from run to run
/// (commit SHAs, durations, the pull request's number, [`story_id`]s) replaced by names.
pub fn redact(text: &str) -> String {
    let line = |line: &str| {
        if line.starts_with("- duration: ") {
            return "- duration: [duration]".to_owned();
        }
        if line.starts_with("- pull request: #") {
            return "- pull request: #[number]".to_owned();
        }
        let word = |word: &str| {
            let hex = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            let is_time = |n: &str| !n.is_empty() && n.parse::<f64>().is_ok();
            if let Some((before, after)) = word.split_once("story-") {
                let after = after.trim_start_matches(|c: char| c.is_ascii_digit());
                format!("{before}[delivery]{after}")
            } else if hex.len() == 40 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                word.replace(hex, "[sha]")
            } else if word.strip_suffix('s').is_some_and(is_time) {
                "[time]".to_owned()
            } else {
                word.to_owned()
            }
        };
        line.split(' ').map(word).collect::<Vec<_>>().join(" ")
    };
    text.lines().map(line).collect::<Vec<_>>().join("\n")
}

/// The comments on an issue as one text for a snapshot: who wrote each, how often it was
/// edited, and what it says ([`redact`]ed).
pub fn transcript(comments: &[Comment]) -> String {
    comments
        .iter()
        .map(|c| format!("--- {} (edits: {})\n{}", c.author, c.edits, redact(&c.body)))
        .collect::<Vec<_>>()
        .join("\n")
}
