//! Local mode's pull requests: a task on the local repository whose `origin` is a GitHub
//! repository (the fake GitHub, with the token-checking git server as its git host) has its
//! branch pushed there and a pull request opened with `GITHUB_TOKEN`. Without a token, or with
//! an `origin` elsewhere, the prizer says there is nowhere to open one.

use crate::fake_github::FakeGithub;
use crate::git_server::GitServer;
use crate::story::{Repo, State, Task, TaskView, eventually, redact};
use crate::support::{CLAUDE_OK, Server, World, git, spec};

const REPO: &str = "octo-org/hello";
const TOKEN: &str = "ghp_localModeToken0123456789";
/// The token's owner, who opens the pull requests and so is never asked to review them.
const ME: &str = "octo-me";

struct Local {
    world: World,
    fake: FakeGithub,
    git: GitServer,
}

/// A local repository with CODEOWNERS on `master`, published on the git server and set as
/// `origin`; the token belongs to `ME`; `hygiene` is the config's hygiene section.
async fn local(hygiene: &str) -> Local {
    let mut world = World::new();
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\nenv > \"$FAKE_AGENT_DIR/env-$$.txt\"\necho x > notes.txt\necho 'fn main() {{}}' > main.rs\necho '{CLAUDE_OK}'"
        ),
    );
    world.write_config(&format!(
        "providers:\n  order: [claude_cli]\nhygiene: {hygiene}\n"
    ));
    std::fs::create_dir_all(world.repo.join(".github")).unwrap();
    std::fs::write(
        world.repo.join(".github/CODEOWNERS"),
        format!("* @octo-lead\n*.txt @alice @octo-org/docs\n*.rs @bob @{ME}\n"),
    )
    .unwrap();
    git(&world.repo, &["add", "."]);
    git(&world.repo, &["commit", "-q", "-m", "codeowners"]);
    let key = world.root.path().join("unused-app.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-out", key.to_str().unwrap(), "2048"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let fake = FakeGithub::start(1, &key).await;
    fake.add_personal_token(TOKEN, ME);
    for user in ["alice", "bob", "octo-lead", ME] {
        fake.set_permission(REPO, user, "write");
    }
    let server = GitServer::start(&world.root.path().join("remote"), fake.state.clone()).await;
    server.publish(REPO, &world.repo);
    git(
        &world.repo,
        &["remote", "add", "origin", &server.clone_url(REPO)],
    );
    world.extra_env.extend([
        ("GITHUB_API_URL".to_owned(), fake.url.clone()),
        ("GITHUB_TOKEN".to_owned(), TOKEN.to_owned()),
    ]);
    Local {
        world,
        fake,
        git: server,
    }
}

impl Local {
    /// The git server's repository `full_name`.
    fn remote(&self, full_name: &str) -> Repo {
        Repo(self.git.root.join(format!("{full_name}.git")))
    }

    /// Where `branch` is on `origin`, if it is there.
    fn on_origin(&self, branch: &str) -> Option<String> {
        self.remote(REPO).branch(branch)
    }

    fn pr_posts(&self) -> usize {
        self.fake
            .requests()
            .iter()
            .filter(|r| *r == &format!("POST /repos/{REPO}/pulls"))
            .count()
    }

    /// `autodev <args>`: exit code, stdout, stderr. Awaited, so the fakes on this runtime
    /// keep answering it.
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::from(self.world.command(args))
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Waits until the pull request is open and done with (recorded, reviewers asked).
async fn wait_for_pr_number(server: &Server, id: &str) -> TaskView {
    let recorded = |t: &TaskView| t.pr_number.is_some() && t.events_of("pull_request") > 0;
    let task = Task::local(server, id);
    task.until("a pull request recorded", recorded).await
}

#[tokio::test]
async fn a_passed_local_task_is_pushed_to_its_github_origin_and_gets_one_pull_request() {
    let l = local("{}").await;
    let server = l.world.serve();
    server
        .post_spec("application/yaml", &spec("LPR-1", ""))
        .await;
    Task::local(&server, "LPR-1").ended_as(State::Passed).await;
    let task = wait_for_pr_number(&server, "LPR-1").await;

    let branch = "auto/backend/LPR-1";
    let local_head = git(&l.world.repo, &["rev-parse", branch]);
    assert_eq!(l.on_origin(branch).as_deref(), Some(local_head.as_str()));
    assert_eq!(task.pushed_sha, Some(local_head));

    let pulls = l.fake.state.lock().unwrap().pulls.clone();
    assert_eq!(pulls.len(), 1, "{pulls:#?}");
    let pr = &pulls[0];
    assert_eq!(task.pr_number, Some(pr.number));
    assert_eq!(pr.head_ref, branch);
    assert_eq!(pr.base, "master");
    assert_eq!(pr.author, ME, "opened with the token");
    assert_eq!(pr.title, "feat(backend): Add a feature");
    // No issue, so nothing to close.
    insta::assert_snapshot!("local_pull_request_body", redact(&pr.body));
    let mut users = pr.reviewers.clone();
    users.sort();
    assert_eq!(
        users,
        ["alice", "bob"],
        "owners of the changed files, never the token's owner"
    );
    assert_eq!(pr.team_reviewers, ["docs"]);
    assert_eq!(l.pr_posts(), 1);
    let told = task.events_of("push") > 0 && task.events_of("pull_request") > 0;
    assert!(told, "{:#?}", task.events);

    // The token went to git and the API, and nowhere else.
    let mut dumps = 0;
    for entry in std::fs::read_dir(&l.world.agent_dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("env-")
        {
            dumps += 1;
            let env = std::fs::read_to_string(&path).unwrap();
            assert!(!env.contains(TOKEN), "the agent saw the token");
        }
    }
    assert!(dumps > 0, "the agent ran");
    let config = std::fs::read_to_string(l.world.repo.join(".git/config")).unwrap();
    assert!(!config.contains(TOKEN), "{config}");
    assert_eq!(
        git(&l.world.repo, &["remote", "get-url", "origin"]),
        l.git.clone_url(REPO),
        "origin is left as it was"
    );
}

#[tokio::test]
async fn prize_by_hand_pushes_and_opens_it_once_and_a_refusal_is_reported_then_asked_again() {
    let l = local("{pr_on_pass: false}").await;
    let spec_path = l.world.write_spec("task.yaml", &spec("LPR-2", ""));
    let (code, out, err) = l.cli(&["run", spec_path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!out.contains("pull request #"), "pr_on_pass is off: {out}");
    let branch = "auto/backend/LPR-2";
    assert_eq!(l.on_origin(branch), None, "nothing pushed yet");
    assert_eq!(l.pr_posts(), 0);
    // As if an earlier attempt pushed the branch and died before recording it: the push
    // (leasing on "not there yet") is refused, and the branch found there already.
    let head = git(&l.world.repo, &["rev-parse", branch]);
    let origin = l.remote(REPO).0;
    git(
        &l.world.repo,
        &["push", "-q", origin.to_str().unwrap(), branch],
    );

    l.fake.fail_on(&format!("POST /repos/{REPO}/pulls"), 422);
    let (code, out, err) = l.cli(&["open-prs"]).await;
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        out.contains("LPR-2: could not open a pull request"),
        "{out}\n{err}"
    );
    assert_eq!(l.on_origin(branch).as_deref(), Some(head.as_str()));

    let (code, out, err) = l.cli(&["open-prs"]).await;
    assert_eq!(code, 0, "asked again by hand: {out}\n{err}");
    assert!(out.contains("LPR-2: pull request #"), "{out}");
    let (code, out, _) = l.cli(&["prize"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("no passed task is waiting"), "{out}");
    assert_eq!(l.fake.state.lock().unwrap().pulls.len(), 1);
    assert_eq!(l.pr_posts(), 2, "one refused, one made");
    let pool = l.world.db().await;
    let state: Option<String> =
        sqlx::query_scalar("SELECT pr_state FROM tasks WHERE task_id = 'LPR-2'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state.as_deref(), Some("open"), "no longer refused");
}

#[tokio::test]
async fn autodev_run_opens_the_pull_request_and_the_queued_trigger_finds_it_open() {
    let l = local("{}").await;
    let spec_path = l.world.write_spec("task.yaml", &spec("LPR-3", ""));
    let (code, out, err) = l.cli(&["run", spec_path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("pull request #"), "{out}\n{err}");
    let branch = "auto/backend/LPR-3";
    let head = git(&l.world.repo, &["rev-parse", branch]);
    assert_eq!(l.on_origin(branch).as_deref(), Some(head.as_str()));
    assert_eq!(l.fake.state.lock().unwrap().pulls.len(), 1);
    // The on-pass job the run queued is done by the next server, and finds it recorded.
    let pool = l.world.db().await;
    let outbox = "SELECT COUNT(*) FROM Jobs WHERE job_type = 'autodev.outbox' AND status = 'Done'";
    let done: i64 = sqlx::query_scalar(outbox).fetch_one(&pool).await.unwrap();
    assert_eq!(done, 0, "queued, not yet done");
    let server = l.world.serve();
    let done = async || match sqlx::query_scalar::<_, i64>(outbox).fetch_one(&pool).await {
        Ok(done) if done > 0 => Ok(()),
        other => Err(other.map_err(|e| e.to_string())),
    };
    eventually("the queued job done", done).await;
    let t = Task::local(&server, "LPR-3").get().await;
    assert_eq!(t.pushed_sha, Some(head.clone()));
    assert_eq!(l.pr_posts(), 1);
    assert_eq!(l.fake.state.lock().unwrap().pulls.len(), 1);
    drop(server);

    // Run again: the new work goes to the same pull request.
    l.world.agent(
        "claude",
        &format!("cat >/dev/null\necho more > more.txt\necho '{CLAUDE_OK}'"),
    );
    let (code, out, err) = l
        .cli(&["run", "--rerun", spec_path.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("pull request #"), "{out}");
    let again = git(&l.world.repo, &["rev-parse", branch]);
    assert_ne!(again, head);
    assert_eq!(l.on_origin(branch).as_deref(), Some(again.as_str()));
    assert_eq!(l.fake.state.lock().unwrap().pulls.len(), 1);
    assert_eq!(l.pr_posts(), 1);
}

#[tokio::test]
async fn without_a_token_or_a_github_origin_there_is_nowhere_to_open_one_and_it_says_why() {
    let mut world = World::new();
    let prize = |world: &World| {
        let out = world.command(&["prize"]).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = prize(&world);
    assert_eq!(code, 1);
    assert!(err.contains("set GITHUB_TOKEN"), "{err}");

    world
        .extra_env
        .push(("GITHUB_TOKEN".to_owned(), TOKEN.to_owned()));
    let (code, err) = prize(&world);
    assert_eq!(code, 1);
    assert!(err.contains("has no `origin` remote"), "{err}");

    let bare = world.root.path().join("origin.git");
    git(
        world.root.path(),
        &[
            "clone",
            "-q",
            "--bare",
            world.repo.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    git(
        &world.repo,
        &["remote", "add", "origin", bare.to_str().unwrap()],
    );
    let (code, err) = prize(&world);
    assert_eq!(code, 1);
    assert!(err.contains("a path on this machine"), "{err}");

    git(
        &world.repo,
        &["remote", "set-url", "origin", "git@gitlab.com:team/app.git"],
    );
    let (code, err) = prize(&world);
    assert_eq!(code, 1);
    assert!(err.contains("is on gitlab.com, not on github.com"), "{err}");
}

#[tokio::test]
async fn a_rebased_local_branch_follows_on_origin_until_its_pull_request_is_closed() {
    let l = local("{rebase_minutes: \"1s\", cleanup_minutes: \"1s\"}").await;
    let server = l.world.serve();
    server
        .post_spec("application/yaml", &spec("LPR-4", ""))
        .await;
    let task = wait_for_pr_number(&server, "LPR-4").await;
    let branch = "auto/backend/LPR-4";
    let first = task.pushed_sha.unwrap();

    std::fs::write(l.world.repo.join("base.txt"), "moved on\n").unwrap();
    git(&l.world.repo, &["add", "base.txt"]);
    git(&l.world.repo, &["commit", "-q", "-m", "master moves on"]);
    let master = git(&l.world.repo, &["rev-parse", "master"]);
    let rebased = async || {
        l.on_origin(branch)
            .filter(|there| *there != first)
            .ok_or(())
    };
    let moved = eventually("the rebased branch on origin", rebased).await;
    assert_eq!(git(&l.world.repo, &["rev-parse", branch]), moved);
    assert_eq!(
        git(&l.world.repo, &["merge-base", &master, &moved]),
        master,
        "on top of the new master"
    );

    l.fake.state.lock().unwrap().pulls[0].closed = true;
    let closed = |t: &TaskView| t.pr_state.as_deref() == Some("closed");
    Task::local(&server, "LPR-4")
        .until("the pull request closed", closed)
        .await;
    assert_eq!(
        git(&l.world.repo, &["rev-parse", branch]),
        moved,
        "the branch stays in the repository"
    );
}

#[tokio::test]
async fn an_agent_that_rewrites_origin_does_not_redirect_its_push_or_pull_request() {
    let mut l = local("{}").await;
    // Unconfined, the agent can rewrite the user's repository's config (the sandbox keeps it
    // out of reach): autodev must not follow it even then.
    l.world.sandbox = "off";
    l.world
        .write_config("providers:\n  order: [claude_cli]\nhygiene: {}\n");
    let evil = "octo-org/elsewhere";
    l.git.publish(evil, &l.world.repo);
    l.world.agent(
        "claude",
        &format!(
            "cat >/dev/null\ngit -C {} remote set-url origin {}\necho x > notes.txt\necho '{CLAUDE_OK}'",
            l.world.repo.display(),
            l.git.clone_url(evil)
        ),
    );
    let server = l.world.serve();
    server
        .post_spec("application/yaml", &spec("LPR-5", ""))
        .await;
    wait_for_pr_number(&server, "LPR-5").await;
    assert_eq!(
        git(&l.world.repo, &["remote", "get-url", "origin"]),
        l.git.clone_url(evil),
        "the agent did rewrite it"
    );
    let branch = "auto/backend/LPR-5";
    assert!(l.on_origin(branch).is_some(), "pushed where origin was");
    assert_eq!(
        l.remote(evil).branch(branch),
        None,
        "nothing pushed to {evil}"
    );
    assert!(
        l.fake.requests().iter().all(|r| !r.contains(evil)),
        "{:#?}",
        l.fake.requests()
    );
}

#[tokio::test]
async fn tasks_from_before_the_token_are_left_to_prize_by_hand_not_to_the_schedule() {
    let mut l = local("{pr_on_pass: false, pr_minutes: \"1s\"}").await;
    let with_token = l.world.extra_env.clone();
    l.world.extra_env.retain(|(k, _)| k != "GITHUB_TOKEN");
    let spec_path = l.world.write_spec("task.yaml", &spec("LPR-6", ""));
    let (code, out, err) = l.cli(&["run", spec_path.to_str().unwrap()]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    l.world.extra_env = with_token;

    let server = l.world.serve();
    let pool = l.world.db().await;
    let ticks = "SELECT COUNT(*) FROM Jobs WHERE job_type = 'autodev.hygiene'
                   AND idempotency_key LIKE 'open-prs:%' AND status = 'Done'";
    let ran = async || match sqlx::query_scalar::<_, i64>(ticks).fetch_one(&pool).await {
        Ok(n) if n >= 2 => Ok(()),
        other => Err(other.map_err(|e| e.to_string())),
    };
    eventually("the prizer run twice", ran).await;
    assert_eq!(l.pr_posts(), 0, "the schedule leaves it");
    assert_eq!(l.on_origin("auto/backend/LPR-6"), None);
    drop(server);

    let (code, out, err) = l.cli(&["open-prs"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("LPR-6: pull request #"), "{out}");
    assert_eq!(l.pr_posts(), 1);
}
