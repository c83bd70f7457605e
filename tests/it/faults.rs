//! Faults: the process dies at a boundary between a side effect and its record (a crash point
//! of a `--features failpoints` build), restarts, and the work ends once, as recorded.

use crate::story::{App, REPO, State, WRITER};
use crate::support::{CLAUDE_OK, eventually, git};

const BRANCH: &str = "auto/backend/issue-1";

/// Whether this build has crash points; if not, the test says it was skipped.
fn crash_points() -> bool {
    if !cfg!(feature = "failpoints") {
        eprintln!("skipped: needs a build with `--features failpoints` (.ci/run has it)");
    }
    cfg!(feature = "failpoints")
}

/// An agent whose every run changes the file, so that a run after a restart has work to do.
fn changing_agent() -> String {
    format!("cat >/dev/null\ndate +%s%N > feature.txt\necho '{CLAUDE_OK}'")
}

/// App mode with `FAILPOINTS` set to `scenario` for the first server only.
async fn app_crashing_at(scenario: &str) -> App {
    let scenario = scenario.to_owned();
    App::with(&changing_agent(), move |world, _| {
        world.extra_env.push(("FAILPOINTS".into(), scenario));
    })
    .await
}

#[tokio::test]
async fn a_crash_between_a_push_and_its_record_is_reconciled_from_github() {
    if !crash_points() {
        return;
    }
    let app = app_crashing_at("push-done=return").await;
    app.issue(1).labeled("autodev:backend").by(WRITER).await;
    let remote = app.remote();
    let App {
        mut world,
        fake,
        server,
        ..
    } = app;
    server.crashed().await;
    let pushed_before = remote.head(BRANCH);

    // Restarted without the crash point: the task's lease runs out, a second run starts on
    // the branch, and its push replaces the one the first run never recorded.
    world.extra_env.retain(|(k, _)| k != "FAILPOINTS");
    let server = world.serve();
    let t = server.ended("issue-1").await;
    assert_eq!(t.state, State::Passed, "{t}");
    assert_eq!(t.runs, 2, "{t}");
    let head = remote.head(BRANCH);
    assert_eq!(t.pushed_sha.as_deref(), Some(head.as_str()), "{t}");
    assert_eq!(t.head_sha.as_deref(), Some(head.as_str()), "{t}");
    let found = format!("found {} on {BRANCH}", &pushed_before[..10]);
    assert!(t.told(&found), "{t}");
    // The second run built on the first: the crashed run's push is in the branch's history.
    assert!(remote.contains(BRANCH, &pushed_before), "{t}");
    // One check run, on the pushed head, concluded.
    fake.wait_until("the check run of the final head, concluded", |st| {
        st.check_runs
            .iter()
            .any(|c| c.head_sha == head && c.conclusion.as_deref() == Some("success"))
    })
    .await;
    let runs = fake.state.lock().unwrap().check_runs.clone();
    assert_eq!(runs.len(), 1, "{runs:#?}");
}

/// The agent of the walk: it leaves a process behind in its group (which autodev stops when
/// the agent ends, or, after a crash, when the next run starts), notes its pids, and changes
/// the file on every run.
fn lingering_agent() -> String {
    format!(
        "cat >/dev/null\nsleep 600 >/dev/null 2>&1 &\necho $! >> \"$FAKE_AGENT_DIR/pids\"\n\
         echo $$ >> \"$FAKE_AGENT_DIR/pids\"\ndate +%s%N > feature.txt\necho '{CLAUDE_OK}'"
    )
}

/// Crashes at `point` once, restarts, and checks what a user would see: one terminal state per
/// run and the last one passed, the branch on GitHub at the commit recorded, one pull request
/// with its reviewers, one check run per pushed commit and every one concluded, one status
/// comment showing the end, and no agent process left.
async fn crash_once_at(point: &str) {
    if !crash_points() {
        return;
    }
    let scenario = format!("{point}=return");
    let app = App::with(&lingering_agent(), move |world, fake| {
        world.unconfine();
        world.extra_env.push(("FAILPOINTS".into(), scenario));
        std::fs::create_dir_all(world.repo.join(".github")).unwrap();
        std::fs::write(world.repo.join(".github/CODEOWNERS"), "* @alice\n").unwrap();
        git(&world.repo, &["add", "."]);
        git(&world.repo, &["commit", "-q", "-m", "codeowners"]);
        fake.set_permission(REPO, "alice", "write");
    })
    .await;
    app.issue(1).labeled("autodev:backend").by(WRITER).await;
    let remote = app.remote();
    let App {
        mut world,
        fake,
        server,
        ..
    } = app;
    server.crashed().await;
    world.extra_env.retain(|(k, _)| k != "FAILPOINTS");
    let server = world.serve();
    let t = server.ended("issue-1").await;
    assert_eq!(t.state, State::Passed, "crashed at {point}: {t}");

    // One terminal state per run, and the last run has its own.
    let terminal = ["passed", "failed", "error", "cancelled"];
    let runs = t.runs;
    for run in 1..=runs {
        let ends = t
            .events
            .iter()
            .filter(|e| e.run_seq == run && terminal.contains(&e.kind.as_str()))
            .count();
        assert!(
            ends <= 1,
            "crashed at {point}: run {run} ended {ends} times: {t:#}"
        );
        if run == runs {
            assert_eq!(ends, 1, "crashed at {point}: {t:#}");
        }
    }

    // The branch on GitHub is the commit recorded.
    let head = remote.head(BRANCH);
    assert_eq!(
        t.pushed_sha.as_deref(),
        Some(head.as_str()),
        "crashed at {point}: {t}"
    );
    assert_eq!(
        t.head_sha.as_deref(),
        Some(head.as_str()),
        "crashed at {point}: {t}"
    );

    // What GitHub shows once the outbox has caught up.
    fake.wait_until("one pull request, with its reviewer", |st| {
        st.pulls.len() == 1 && st.pulls[0].reviewers == ["alice"]
    })
    .await;
    fake.wait_until("the check run of the head, concluded", |st| {
        st.check_runs
            .iter()
            .any(|c| c.head_sha == head && c.conclusion.as_deref() == Some("success"))
    })
    .await;
    fake.wait_until("the status comment showing the end", |st| {
        st.comments
            .iter()
            .any(|c| c.body.contains("autodev:status issue-1") && c.body.contains("passed"))
    })
    .await;
    let st = fake.state.lock().unwrap();
    let mut heads: Vec<&str> = st.check_runs.iter().map(|c| c.head_sha.as_str()).collect();
    heads.sort();
    let before = heads.len();
    heads.dedup();
    assert_eq!(
        before,
        heads.len(),
        "crashed at {point}: one check run per commit: {:#?}",
        st.check_runs
    );
    assert!(
        st.check_runs.iter().all(|c| c.status == "completed"),
        "crashed at {point}: every check run concluded: {:#?}",
        st.check_runs
    );
    let status_comments = st
        .comments
        .iter()
        .filter(|c| c.body.contains("autodev:status issue-1"))
        .count();
    assert_eq!(status_comments, 1, "crashed at {point}: {:#?}", st.comments);

    // No agent, and nothing an agent started, outlives its run.
    let pids = std::fs::read_to_string(world.agent_dir.join("pids")).unwrap_or_default();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        assert!(
            !crate::support::alive(pid),
            "crashed at {point}: process {pid} left running"
        );
    }
}

macro_rules! crash_walk {
    ($($name:ident: $point:literal,)*) => {$(
        #[tokio::test]
        async fn $name() {
            crash_once_at($point).await;
        }
    )*};
}

crash_walk! {
    crash_when_the_worktree_is_created: "worktree-created",
    crash_when_the_agent_has_started: "agent-started",
    crash_when_the_commit_is_made: "commit-made",
    crash_when_the_push_is_done: "push-done",
    crash_when_the_final_state_is_written: "final-state-written",
    crash_when_the_check_run_is_created: "check-run-created",
    crash_when_the_pull_request_is_created: "pr-created",
    crash_when_the_reviewers_are_requested: "reviewers-requested",
    crash_when_a_comment_is_posted: "comment-posted",
}

/// Two processes on one database, with GitHub slow to create: every job that may create the
/// task's check run runs at once, in either process, and GitHub still gets one create.
#[tokio::test]
async fn two_processes_racing_to_create_one_check_run_make_one() {
    let app = App::with(&changing_agent(), |_, fake| {
        fake.slow_on(
            "POST /repos/codertocat/hello-world/check-runs",
            std::time::Duration::from_millis(1500),
        );
    })
    .await;
    let _second = app.world.worker();
    let issue = app.issue(1);
    issue.labeled("autodev:backend").by(WRITER).await;
    issue.task().ended_as(State::Passed).await;
    // The end queued one check-run job; four more race it.
    let pool = app.world.db().await;
    let pk: i64 = sqlx::query_scalar("SELECT pk FROM tasks WHERE task_id = 'issue-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    for _ in 0..4 {
        let job = autodev::jobs::OutboxJob::new(autodev::jobs::Effect::CheckRun {
            task: autodev::core::ids::TaskKey(pk),
        });
        autodev::jobs::push_now(&pool, &job).await.unwrap();
    }
    app.fake
        .wait_until("the check run, concluded", |st| {
            st.check_runs
                .iter()
                .any(|c| c.conclusion.as_deref() == Some("success"))
        })
        .await;
    // Every job has run, its retries included: none is waiting in the queue.
    eventually("every outbox job run", async || {
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM Jobs WHERE job_type = 'autodev.outbox' AND status NOT IN ('Done', 'Killed', 'Failed')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if pending == 0 { Ok(()) } else { Err(pending) }
    })
    .await;
    let creates = app
        .fake
        .requests()
        .iter()
        .filter(|r| r.starts_with(&format!("POST /repos/{}/check-runs", REPO.to_lowercase())))
        .count();
    let runs = app.fake.state.lock().unwrap().check_runs.clone();
    assert_eq!((creates, runs.len()), (1, 1), "{runs:#?}");
}

/// The seed of a random fault schedule: `CHAOS_SEED` to play one again, else the clock's.
fn chaos_seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// How long effects may take to land while GitHub fails a fifth of calls: the outbox waits
/// 1 s after an effect's first failure and twice as long after each next one, so an effect
/// unlucky six times in a row (several calls make one try) waits 63 s before its seventh.
const BACKOFF_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

#[tokio::test]
async fn with_github_failing_a_fifth_of_calls_every_effect_is_applied_exactly_once() {
    let seed = chaos_seed();
    let app = App::with(&changing_agent(), move |world, fake| {
        world.write_config("providers:\n  order: [claude_cli]\ngithub: {timeout: \"1s\"}\n");
        std::fs::create_dir_all(world.repo.join(".github")).unwrap();
        std::fs::write(world.repo.join(".github/CODEOWNERS"), "* @alice\n").unwrap();
        git(&world.repo, &["add", "."]);
        git(&world.repo, &["commit", "-q", "-m", "codeowners"]);
        fake.set_permission(REPO, "alice", "write");
        // Every fault, a fifth of the time; "timeouts" held past the client's second.
        fake.chaos(20, seed, std::time::Duration::from_secs(2));
    })
    .await;
    let issues = [1, 2, 3, 4];
    for n in issues {
        app.issue(n).labeled("autodev:backend").by(WRITER).await;
    }
    let mut heads = Vec::new();
    for n in issues {
        let t = app.issue(n).task().ended().await;
        assert_eq!(t.state, State::Passed, "seed {seed}: {t}");
        heads.push(t.pushed_sha.clone().expect("pushed"));
    }
    // What GitHub shows once the outbox has caught up, still failing.
    app.fake
        .wait_until_for(
            "a pull request per task, each with its reviewer",
            BACKOFF_PATIENCE,
            |st| {
                st.pulls.len() >= issues.len()
                    && st
                        .pulls
                        .iter()
                        .all(|p| p.reviewers.contains(&"alice".to_owned()))
            },
        )
        .await;
    app.fake
        .wait_until_for("every head's check run concluded", BACKOFF_PATIENCE, |st| {
            heads.iter().all(|h| {
                st.check_runs
                    .iter()
                    .any(|c| &c.head_sha == h && c.conclusion.as_deref() == Some("success"))
            })
        })
        .await;
    app.fake
        .wait_until_for(
            "every status comment showing the end",
            BACKOFF_PATIENCE,
            |st| {
                issues.iter().all(|n| {
                    st.comments.iter().any(|c| {
                        c.body.contains(&format!("autodev:status issue-{n}"))
                            && c.body.contains("passed")
                    })
                })
            },
        )
        .await;
    let played = app.fake.calm();
    eprintln!("faults played: {played:?}");
    // (How many depends on how many calls the run made; a fifth of some sixty.)
    assert!(
        played.values().sum::<u32>() >= 3,
        "seed {seed}: GitHub failed often enough to mean something: {played:?}"
    );
    // Quiet for a moment: nothing late doubles anything.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let st = app.fake.state.lock().unwrap();
    let mut branches: Vec<&str> = st.pulls.iter().map(|p| p.head_ref.as_str()).collect();
    branches.sort();
    branches.dedup();
    assert_eq!(
        (st.pulls.len(), branches.len()),
        (issues.len(), issues.len()),
        "seed {seed}: one pull request per task: {:#?}",
        st.pulls
    );
    for p in &st.pulls {
        assert_eq!(p.reviewers, ["alice"], "seed {seed}: asked once: {p:#?}");
    }
    let mut check_heads: Vec<&str> = st.check_runs.iter().map(|c| c.head_sha.as_str()).collect();
    check_heads.sort();
    let all = check_heads.len();
    check_heads.dedup();
    assert_eq!(
        all,
        check_heads.len(),
        "seed {seed}: one check run per commit: {:#?}",
        st.check_runs
    );
    assert!(
        st.check_runs.iter().all(|c| c.status == "completed"),
        "seed {seed}: every check run concluded: {:#?}",
        st.check_runs
    );
    for n in issues {
        let status = st
            .comments
            .iter()
            .filter(|c| c.body.contains(&format!("autodev:status issue-{n}")))
            .count();
        assert_eq!(
            status, 1,
            "seed {seed}: one status comment on #{n}: {:#?}",
            st.comments
        );
    }
    let mut reactions = st.reactions.clone();
    let before = reactions.len();
    reactions.sort();
    reactions.dedup();
    assert_eq!(before, reactions.len(), "seed {seed}: {:#?}", st.reactions);
}

#[tokio::test]
async fn an_effect_github_refused_past_every_retry_is_finished_by_the_reconciler() {
    let app = App::with(&changing_agent(), |world, fake| {
        world.write_config(
            "providers:\n  order: [claude_cli]\nhygiene: {reconcile_minutes: \"1s\"}\n",
        );
        fake.down_on("POST /repos/codertocat/hello-world/check-runs");
    })
    .await;
    app.issue(1).labeled("autodev:backend").by(WRITER).await;
    let t = app.issue(1).task().ended().await;
    assert_eq!(t.state, State::Passed, "{t}");
    // The outbox tries each check run MAX_ATTEMPTS times, then leaves it to the reconciler,
    // which queues it again while GitHub stays down.
    let pool = app.world.db().await;
    eventually(
        "a check run left to the reconciler, and queued again",
        async || {
            let rounds: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(rounds) FROM stalled_effects WHERE effect LIKE '%check_run%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            rounds.filter(|r| *r >= 1).ok_or(rounds)
        },
    )
    .await;
    assert!(app.check_runs().is_empty());
    app.fake.up();
    let head = t.pushed_sha.clone().expect("pushed");
    app.check_run_until("on the head, concluded", |c| {
        c.head_sha == head && c.conclusion.as_deref() == Some("success")
    })
    .await;
    eventually("nothing stalled", async || {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stalled_effects")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n == 0).then_some(()).ok_or(n)
    })
    .await;
    assert_eq!(app.check_runs().len(), 1, "{:#?}", app.check_runs());
}

#[tokio::test]
async fn a_push_whose_record_a_stop_cut_off_is_recorded_by_the_reconciler() {
    let app = App::with(&changing_agent(), |world, _| {
        world.write_config(
            "providers:\n  order: [claude_cli]\nhygiene: {reconcile_minutes: \"1s\"}\n",
        );
    })
    .await;
    app.issue(1).labeled("autodev:backend").by(WRITER).await;
    let t = app.issue(1).task().ended().await;
    assert_eq!(t.state, State::Passed, "{t}");
    let pushed = t.pushed_sha.clone().expect("pushed");
    app.check_run_until("on the head, concluded", |c| {
        c.head_sha == pushed && c.status == "completed"
    })
    .await;
    let pool = app.world.db().await;
    let set_intent = async |sha: &str| {
        sqlx::query("UPDATE tasks SET push_intent = ?")
            .bind(sha)
            .execute(&pool)
            .await
            .unwrap();
    };
    let intent = async || -> Option<String> {
        sqlx::query_scalar("SELECT push_intent FROM tasks")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // A push that never reached GitHub: the intent is forgotten, nothing else changes.
    set_intent("0123456789abcdef0123456789abcdef01234567").await;
    eventually("the intent forgotten", async || {
        let i = intent().await;
        i.is_none().then_some(()).ok_or(i)
    })
    .await;
    assert_eq!(
        app.issue(1).task().ended().await.pushed_sha,
        Some(pushed.clone())
    );

    // A push GitHub has (a rebase's, say) whose record was cut off: recorded, with its check run.
    let remote = app.remote();
    let tree = git(&remote.0, &["rev-parse", &format!("{pushed}^{{tree}}")]);
    let newer = git(
        &remote.0,
        &["commit-tree", &tree, "-p", &pushed, "-m", "rebased"],
    );
    git(
        &remote.0,
        &["update-ref", &format!("refs/heads/{BRANCH}"), &newer],
    );
    set_intent(&newer).await;
    let t = app
        .issue(1)
        .task()
        .until("the push recorded", |t| {
            t.pushed_sha.as_deref() == Some(newer.as_str())
        })
        .await;
    assert!(t.told("pushed before autodev stopped"), "{t}");
    app.check_run_until("on the recorded push, concluded", |c| {
        c.head_sha == newer && c.conclusion.as_deref() == Some("success")
    })
    .await;
}

/// A tmpfs of `mb` megabytes on `dir` until dropped: a disk that can be filled.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None`, and the test says it was skipped, where this process may not mount one.
    pub fn mount(dir: &std::path::Path, mb: u32) -> Option<Self> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "skipped: mounting a small disk needs root (.ci/run has it): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Self(dir.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_write_failing_for_want_of_space_ends_the_task_naming_the_cause_and_work_goes_on() {
    if !crash_points() {
        return;
    }
    let mut world = crate::support::World::new();
    // The first worktree write finds the disk full.
    world
        .extra_env
        .push(("FAILPOINTS".into(), "worktree-disk-full=1*return".into()));
    world.agent("claude", &changing_agent());
    let server = world.serve();
    let spec = crate::support::spec;
    let (status, body) = server
        .post_spec("application/yaml", &spec("FULL-1", ""))
        .await;
    assert_eq!(status, 201, "{body}");
    let full = crate::story::Task::local(&server, "FULL-1");
    let t = full.ended_as(State::Error).await;
    let why = t.last_error.clone().unwrap_or_default();
    assert!(why.contains("No space left on device"), "{t}");
    // There is room in fact: autodev does not take the words for a full disk, and work goes on.
    assert!(!why.contains("data directory is full"), "{t}");
    taken_once_there_is_room(&server, "FULL-2").await;
    let (status, body) = server.post("/tasks/FULL-1/retry").await;
    assert!(status < 300, "{body}");
    full.run(2).ended_as(State::Passed).await;
}

#[tokio::test]
async fn a_disk_that_fills_up_under_a_running_task_refuses_new_work_until_there_is_room() {
    let world = crate::support::World::new();
    let Some(_disk) = SmallDisk::mount(&world.data, 64) else {
        return;
    };
    // The agent waits for `go`, then writes its change.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\nwhile [ ! -e \"$FAKE_AGENT_DIR/go\" ]; do sleep 0.05; done\n\
             date +%s%N > feature.txt\necho '{CLAUDE_OK}'"
        ),
    );
    let go = world.agent_dir.join("go");
    let server = world.serve();
    let spec = crate::support::spec;
    std::fs::write(&go, "").unwrap();
    let (status, body) = server
        .post_spec("application/yaml", &spec("DISK-1", ""))
        .await;
    assert_eq!(status, 201, "{body}");
    crate::story::Task::local(&server, "DISK-1")
        .ended_as(State::Passed)
        .await;

    // The disk fills up while a task runs.
    std::fs::remove_file(&go).unwrap();
    let (status, body) = server
        .post_spec("application/yaml", &spec("DISK-2", ""))
        .await;
    assert_eq!(status, 201, "{body}");
    let running = crate::story::Task::local(&server, "DISK-2");
    running
        .until("running", |t| t.state == State::Running)
        .await;
    let ballast = fill(&world.data);
    // New work is refused, and the answer says why.
    let (status, body) = server
        .post_spec("application/yaml", &spec("DISK-3", ""))
        .await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("data directory is full"),
        "{body}"
    );
    // The running task ends, recorded, with the room the reserve gave back.
    std::fs::write(&go, "").unwrap();
    let t = running.ended().await;
    assert!(!matches!(t.state, State::Queued | State::Running), "{t}");
    let (status, body) = server
        .post_spec("application/yaml", &spec("DISK-3", ""))
        .await;
    assert_eq!(status, 507, "still full: {body}");
    let pool = world.db().await;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(check, "ok");

    // Room again: work resumes without a restart.
    std::fs::remove_file(&ballast).unwrap();
    taken_once_there_is_room(&server, "DISK-3").await;
}

/// Sends task `id` until the server takes it (it refuses while its disk is full), and waits
/// for it to pass.
async fn taken_once_there_is_room(server: &crate::support::Server, id: &str) {
    let spec = crate::support::spec(id, "");
    eventually("new tasks taken again", async || {
        let (status, body) = server.post_spec("application/yaml", &spec).await;
        if status == 201 {
            Ok(())
        } else {
            Err((status, body))
        }
    })
    .await;
    crate::story::Task::local(server, id)
        .ended_as(State::Passed)
        .await;
}

/// Writes a file in `dir` until its disk is full; the file.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("ballast");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.flush();
    path
}

#[tokio::test]
async fn two_processes_writing_at_once_never_fail_a_request_with_a_busy_database() {
    let world = crate::support::World::new();
    world.agent("claude", &changing_agent());
    // One process takes requests, another runs every task: both write the one database.
    let server = world.serve_with(&["--workers", "0"]);
    let _worker = world.worker();
    let spec = crate::support::spec;
    let posts = (0..60).map(|i| {
        let server = &server;
        async move {
            server
                .post_spec("application/yaml", &spec(&format!("BUSY-{i}"), ""))
                .await
        }
    });
    let answers = futures::future::join_all(posts).await;
    for (status, body) in &answers {
        assert_eq!(*status, 201, "{body}");
    }
    for i in (0..60).step_by(13) {
        let t = crate::story::Task::local(&server, &format!("BUSY-{i}"));
        t.ended_as(State::Passed).await;
    }
}

#[tokio::test]
async fn a_run_cut_off_after_its_work_is_finished_by_the_next_even_if_its_agent_adds_nothing() {
    if !crash_points() {
        return;
    }
    // The agent writes the same file every run: the second run finds it already there.
    let app = App::with(&crate::story::writes("feature.txt", "x"), |world, _| {
        world
            .extra_env
            .push(("FAILPOINTS".into(), "commit-made=return".into()));
    })
    .await;
    app.issue(1).labeled("autodev:backend").by(WRITER).await;
    let App {
        mut world, server, ..
    } = app;
    server.crashed().await;
    world.extra_env.retain(|(k, _)| k != "FAILPOINTS");
    let server = world.serve();
    let t = server.ended("issue-1").await;
    assert_eq!(t.state, State::Passed, "{t}");
    assert_eq!(t.runs, 2, "{t}");
    assert!(t.told("work the branch holds from an earlier run"), "{t}");
}
