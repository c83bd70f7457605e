//! Attacks on the fault-handling changes (retention, the reconciler, the disk reserve, the
//! "continued branch" rule of a round): each test is an attack that worked against an earlier
//! version, and keeps autodev defending against it.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use crate::faults::SmallDisk;
use crate::story::{App, State, Task, WRITER, writes};
use crate::support::{CLAUDE_OK, World, assert_lacks, eventually, git};

/// Asks `probe` until it answers `Ok`, for at most `limit` (shorter than the suite's patience:
/// what these tests wait for happens within seconds when autodev is right).
async fn within<T, E: Debug>(
    limit: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(seen) if Instant::now() > deadline => {
                panic!("waited {limit:?} for {what}; last seen: {seen:#?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// An agent whose every run changes the file.
fn changing_agent() -> String {
    format!("cat >/dev/null\ndate +%s%N > feature.txt\necho '{CLAUDE_OK}'")
}

// ---------------------------------------------------------------------------------------
// The disk reserve
// ---------------------------------------------------------------------------------------

/// The agent writes a test that prints the words of a full disk. autodev decides that a disk
/// is full by looking for "No space left on device" in the *text* of a run's outcome, and the
/// outcome of a failed gate carries the tail of the gate's output, which is the agent's. So
/// an agent (or the code it wrote, run by the gates) makes autodev free its disk reserve,
/// refuse new tasks with 507 until the next sweep, and record against the task that
/// "autodev's data directory is full" when the disk has all the room it needs.
#[tokio::test]
async fn an_agents_words_about_a_full_disk_neither_free_the_reserve_nor_blame_autodevs_disk() {
    let world = World::new();
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\ncat > check.sh <<'EOF'\necho 'write error: No space left on device'\nexit 1\nEOF\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    let t = server
        .run_to_end(
            "NOSPACE-1",
            "max_rounds: 1\nacceptance:\n  tests: [\"sh check.sh\"]\n",
        )
        .await;
    assert_eq!(t.state, State::Failed, "{t}");
    let why = t.last_error.clone().unwrap_or_default();
    let log = server.log.lock().unwrap().clone();
    let freed = log
        .lines()
        .find(|l| l.contains("reserve of"))
        .unwrap_or_default();
    assert!(
        !why.contains("data directory is full") && freed.is_empty(),
        "the agent's words made autodev record that its own disk is full ({why}) and free its reserve ({freed})"
    );
    assert_lacks(&log, "disk is full");
}

/// The agent fills the data directory's disk with a file its own `.gitignore` hides, in its
/// worktree (which lives in the data directory and is writable in the sandbox). The run ends,
/// but an ended task keeps its worktree for `cleanup_after_hours` (72 h), ignored files
/// included, and nothing frees it when the disk is full: the reserve cannot be made again, so
/// every `POST /tasks` is refused with 507 (and webhooks fail) for three days, from one task.
/// Worse, the reserve is freed at the first write that fails, while the agent is still
/// writing, so the agent's file takes the reserve's room as well: most runs the task is then
/// never ended (it stays `running`, its end unwritable), which the reserve exists to prevent.
#[tokio::test]
async fn an_agent_that_fills_the_disk_from_its_worktree_does_not_keep_new_work_out_after_its_run() {
    let world = World::new();
    let Some(_disk) = SmallDisk::mount(&world.data, 64) else {
        return;
    };
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\necho ballast > .gitignore\necho x > feature.txt\n\
             head -c 200000000 /dev/zero > ballast 2>/dev/null\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    let (status, body) = server
        .post_spec("application/yaml", &crate::support::spec("FILL-1", ""))
        .await;
    assert_eq!(status, 201, "{body}");
    // The reserve is freed at the first failed write, while the agent is still writing: the
    // agent takes the reserve's room too, and the end of the run cannot be written.
    let filling = Task::local(&server, "FILL-1");
    let t = within(
        Duration::from_secs(60),
        "the filling task to end (the reserve is there so that it can)",
        async || match filling.try_get().await {
            Ok(t) if t.state.ended() => Ok(t),
            other => Err(other.map(|t| (t.state, t.last_error))),
        },
    )
    .await;
    eprintln!("the filling task ended {:?}: {:?}", t.state, t.last_error);
    // Its run is over: new work should be taken again soon (the sweep runs every second here).
    let spec = crate::support::spec("FILL-2", "");
    within(
        Duration::from_secs(30),
        "new tasks taken once the filling task's run is over",
        async || {
            let (status, body) = server.post_spec("application/yaml", &spec).await;
            if status == 201 {
                Ok(())
            } else {
                Err((status, body, t.worktree.clone()))
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// A round where the agent changes nothing on a continued branch
// ---------------------------------------------------------------------------------------

/// "A continued branch may already hold the work" is decided by comparing the branch's tree
/// with the *current* base's tree. A branch that holds no work at all, only an older base
/// (its first run's agent did nothing), differs from a base that moved on. So an agent that
/// does nothing (an issue can ask it to: "nothing to change here") gets its task passed on
/// the retry: the gates run on the old, untouched base, pass, and the task is `passed` with a
/// branch that has not one commit of work.
#[tokio::test]
async fn a_retried_task_whose_agent_does_nothing_does_not_pass_on_a_branch_only_behind_its_base() {
    let world = World::new();
    world.agent("claude", &format!("cat >/dev/null\necho '{CLAUDE_OK}'"));
    let server = world.serve();
    let extra = "max_rounds: 1\nacceptance:\n  tests: [\"test -f README.md\"]\n";
    let t = server.run_to_end("IDLE-1", extra).await;
    assert_eq!(t.state, State::Failed, "the agent changed nothing: {t}");

    // Someone else's work lands on the base branch.
    std::fs::write(world.repo.join("other.txt"), "someone else's work\n").unwrap();
    git(&world.repo, &["add", "other.txt"]);
    git(&world.repo, &["commit", "-q", "-m", "unrelated work"]);

    let (status, body) = server.post("/tasks/IDLE-1/retry").await;
    assert!(status < 300, "{body}");
    let t = Task::local(&server, "IDLE-1").run(2).ended().await;
    let ahead = git(
        &world.repo,
        &["rev-list", "--count", "master..auto/backend/IDLE-1"],
    );
    assert!(
        t.state != State::Passed || ahead != "0",
        "passed without a single commit of work ({ahead} commits ahead of master): {t}"
    );
}

/// `/autodev fix <instructions>` asks for a change to a passed task's branch. The agent makes
/// none (talked out of it, or lazy); before the change this ended `failed` ("changed
/// nothing"), now the gates pass on the branch the reviewer rejected and the task is reported
/// `passed`, with a green check run, for a fix that was never made.
#[tokio::test]
async fn a_fix_request_the_agent_ignores_is_not_reported_passed() {
    let a = App::start().await;
    let issue = a.issue(1);
    issue.labeled("autodev:backend").by(WRITER).await;
    issue.task().ended_as(State::Passed).await;
    let no_reviews: &[(&str, u64, &str, &str)] = &[];
    a.fake.add_pull(2, "auto/backend/issue-1", no_reviews);
    a.pull(2)
        .comment("/autodev fix rename feature.txt to feature.md")
        .by(WRITER)
        .await;
    let t = issue.task().run(2).ended().await;
    assert_ne!(
        t.state,
        State::Passed,
        "a fix the agent never made is reported passed: {t}"
    );
}

// ---------------------------------------------------------------------------------------
// The reconciler
// ---------------------------------------------------------------------------------------

/// The reconciler settles cut-off pushes task by task, and any error (a token GitHub will not
/// give for an installation that is gone, a repository deleted or transferred) ends the whole
/// pass with `?`. One such task, the lowest in the list, is there on every pass: every other
/// task's cut-off push, in every repository, is never settled again.
#[tokio::test]
async fn one_unreachable_repository_does_not_stop_the_reconciler_for_every_other_task() {
    let app = App::with(&changing_agent(), |world, _| {
        world.write_config(
            "providers:\n  order: [claude_cli]\nhygiene: {reconcile_minutes: \"1s\"}\n",
        );
    })
    .await;
    app.issue(1).labeled("autodev:backend").by(WRITER).await;
    app.issue(1).task().ended_as(State::Passed).await;
    app.issue(2).labeled("autodev:backend").by(WRITER).await;
    let t2 = app.issue(2).task().ended_as(State::Passed).await;
    let pushed = t2.pushed_sha.clone().expect("pushed");

    let pool = app.world.db().await;
    // Issue 1: a push whose record was cut off, in a repository GitHub no longer has (deleted,
    // or transferred and renamed).
    sqlx::query(
        "UPDATE tasks SET clone_url = ?, push_intent = '0123456789abcdef0123456789abcdef01234567'
         WHERE task_id = 'issue-1'",
    )
    .bind(app.git.clone_url("codertocat/gone"))
    .execute(&pool)
    .await
    .unwrap();
    // Issue 2: a push GitHub has, whose record a stop cut off (as the reconciler's own test).
    let remote = app.remote();
    let branch = "auto/backend/issue-2";
    let tree = git(&remote.0, &["rev-parse", &format!("{pushed}^{{tree}}")]);
    let newer = git(
        &remote.0,
        &["commit-tree", &tree, "-p", &pushed, "-m", "rebased"],
    );
    git(
        &remote.0,
        &["update-ref", &format!("refs/heads/{branch}"), &newer],
    );
    sqlx::query("UPDATE tasks SET push_intent = ? WHERE task_id = 'issue-2'")
        .bind(&newer)
        .execute(&pool)
        .await
        .unwrap();

    within(
        Duration::from_secs(30),
        "issue 2's push recorded by the reconciler",
        async || {
            let t = app.issue(2).task().get().await;
            if t.pushed_sha.as_deref() == Some(newer.as_str()) {
                Ok(())
            } else {
                Err(t.pushed_sha)
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------

/// The `X-GitHub-Delivery` record is the only thing that stops a delivery from being acted
/// on twice (GitHub's signature has no timestamp), and retention deletes it after
/// `keep_history_days`, which may be 1, while GitHub lets a delivery be redelivered for 3
/// days (and anyone holding a signed body can send it at any time). A delivery already acted
/// on is then acted on again: here the task runs a second time, its agent paid for again and
/// its branch pushed again, for a label put on once.
#[tokio::test]
async fn a_delivery_acted_on_is_not_acted_on_again_once_its_record_is_pruned() {
    let app = App::with(&writes("feature.txt", "x"), |world, _| {
        world.write_config(
            "providers:\n  order: [claude_cli]\nhygiene: {cleanup_minutes: \"1s\", keep_history_days: 1}\n",
        )
    })
    .await;
    let labeled = || app.issue(1).labeled("autodev:backend").by(WRITER);
    let (status, body) = labeled().answer_as("label-once").await;
    assert_eq!(status, 202, "{body}");
    app.issue(1).task().ended_as(State::Passed).await;

    // Two days pass (inside GitHub's redelivery window); the delivery's record is pruned.
    let two_days_ago = chrono::Utc::now() - chrono::Duration::days(2);
    let pool = app.world.db().await;
    for sql in [
        "UPDATE deliveries SET received_at = ?",
        "UPDATE tasks SET created_at = ?",
    ] {
        sqlx::query(sql)
            .bind(two_days_ago)
            .execute(&pool)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE Jobs SET done_at = ? WHERE status = 'Done'")
        .bind(two_days_ago.timestamp())
        .execute(&pool)
        .await
        .unwrap();
    eventually("the delivery's payload pruned", async || {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE payload IS NOT NULL")
                .fetch_one(&pool)
                .await
                .unwrap();
        (n == 0).then_some(()).ok_or(n)
    })
    .await;

    // The very same delivery again (GitHub's "Redeliver", or a replay of the signed body).
    let (status, body) = labeled().answer_as("label-once").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let t = app.issue(1).task().ended().await;
    assert_eq!(
        (status, t.runs),
        (200, 1),
        "a delivery already acted on was acted on again ({body}): {t}"
    );
}

// ---------------------------------------------------------------------------------------
// The rebase chore (not among the recent changes, found on the way)
// ---------------------------------------------------------------------------------------

/// A second repository of the installation, published from the same history.
const OTHER: &str = "Codertocat/Other";

/// The rebase chore lists the passed tasks with an open pull request once, then works through
/// them one by one, each under its repository's lock, using the row as it was listed: it never
/// reads the task again. The agent of the first task in the list makes its own rebase slow (the
/// gates run its tests again: they sleep), and meanwhile another task of the list, in another
/// repository, is retried and running. When the chore reaches it, it removes the running
/// task's worktree under its agent, rebases and pushes its branch, and writes a head and a
/// "brought up to date" event into the running task.
#[tokio::test]
async fn the_rebase_chore_never_touches_a_task_that_was_retried_after_it_was_listed() {
    let agent = format!(
        "cat >/dev/null\nname=$(basename \"$(pwd -P)\")\n\
         if [ -e \"$FAKE_AGENT_DIR/hold-$name\" ]; then touch \"$FAKE_AGENT_DIR/started-$name\"; \
         while [ ! -e \"$FAKE_AGENT_DIR/go\" ]; do sleep 0.05; done; fi\n\
         date +%s%N > feature.txt\n\
         printf 'if [ -e \"$FAKE_AGENT_DIR/slow-%s\" ]; then touch \"$FAKE_AGENT_DIR/rebasing-%s\"; sleep 10; fi\\n' \"$name\" \"$name\" > check.sh\n\
         echo '{CLAUDE_OK}'"
    );
    let app = App::with(&agent, |world, fake| {
        world
            .write_config("providers:\n  order: [claude_cli]\nhygiene: {rebase_minutes: \"1s\"}\n");
        std::fs::create_dir_all(world.repo.join(".github")).unwrap();
        std::fs::write(
            world.repo.join(".github/autodev.yml"),
            "acceptance:\n  tests: [\"sh check.sh\"]\n",
        )
        .unwrap();
        git(&world.repo, &["add", "."]);
        git(&world.repo, &["commit", "-q", "-m", "gates"]);
        fake.install(1, &[crate::story::REPO, OTHER]);
        fake.set_permission(OTHER, WRITER, "write");
    })
    .await;
    app.git.publish(OTHER, &app.world.repo);
    let other_url = app.git.clone_url(OTHER);
    let in_other = |p: &mut serde_json::Value| {
        p["repository"]["id"] = serde_json::json!(4242);
        p["repository"]["name"] = serde_json::json!("Other");
        p["repository"]["full_name"] = serde_json::json!(OTHER);
        p["repository"]["clone_url"] = serde_json::json!(other_url.clone());
    };
    let other_task = "/repos/codertocat/other/tasks/issue-2";
    let get = async |path: &str| -> crate::support::TaskView {
        let (status, body) = app.server.get(path).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    };

    // Issue 1 of the first repository and issue 2 of the other pass, with pull requests.
    app.issue(1).labeled("autodev:backend").by(WRITER).await;
    app.issue(2)
        .labeled("autodev:backend")
        .by(WRITER)
        .with(in_other)
        .await;
    app.issue(1).task().ended_as(State::Passed).await;
    eventually("issue 2's task passed", async || {
        let t = get(other_task).await;
        (t.state == State::Passed).then_some(()).ok_or(t.state)
    })
    .await;
    eventually("two pull requests", async || {
        let n = app.pulls().len();
        (n == 2).then_some(()).ok_or(n)
    })
    .await;

    // Task 1's rebase is slow (its agent's tests sleep); it starts.
    let dir = &app.world.agent_dir;
    std::fs::write(dir.join("slow-issue-1"), "").unwrap();
    app.remote().push_to_master("moved.txt", "the base moved");
    within(
        Duration::from_secs(30),
        "task 1's rebase gates",
        async || {
            if dir.join("rebasing-issue-1").exists() {
                return Ok(());
            }
            let t = app.issue(1).task().get().await;
            Err((
                app.remote().try_file("auto/backend/issue-1", "check.sh"),
                t.timeline(),
            ))
        },
    )
    .await;
    // Meanwhile the other repository's base moves too, and issue 2's task is retried: it runs.
    crate::story::Repo(app.git.root.join("codertocat/other.git"))
        .push_to_master("moved.txt", "the base moved");
    std::fs::write(dir.join("hold-issue-2"), "").unwrap();
    app.issue(2)
        .comment("/autodev retry")
        .by(WRITER)
        .with(in_other)
        .await;
    within(
        Duration::from_secs(30),
        "issue 2's second run",
        async || dir.join("started-issue-2").exists().then_some(()).ok_or(()),
    )
    .await;
    let running = get(other_task).await;
    assert_eq!(
        (running.state, running.runs),
        (State::Running, 2),
        "{running}"
    );
    let worktree = running
        .worktree
        .clone()
        .expect("a running task has a worktree");

    // Task 1's rebase ends; the chore goes on down the list it made before the retry.
    within(
        Duration::from_secs(40),
        "task 1 brought up to date",
        async || {
            let t = app.issue(1).task().get().await;
            t.told("brought up to date").then_some(()).ok_or(t.state)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let worktree_kept = std::path::Path::new(&worktree).join("feature.txt").exists();
    std::fs::write(dir.join("go"), "").unwrap();
    let t = within(
        Duration::from_secs(60),
        "issue 2's second run ended",
        async || {
            let t = get(other_task).await;
            (t.runs == 2 && t.state.ended())
                .then_some(t.clone())
                .ok_or(t.state)
        },
    )
    .await;
    let rebased_while_running = t
        .events
        .iter()
        // (recorded under run 1: the chore's row is the one it listed)
        .any(|e| e.message.contains("brought up to date"));
    assert!(
        worktree_kept && !rebased_while_running && t.state == State::Passed,
        "the rebase chore acted on a running task: worktree kept {worktree_kept}, rebased while running {rebased_while_running}: {t}"
    );
}

/// Against the fix that gives back the worktree of a run that *ends on a full disk*: the agent
/// fills the disk from its worktree (with a file its `.gitignore` hides) but leaves a little
/// more than the megabyte autodev calls full. Its run ends normally, so its worktree, ballast
/// included, is kept for `cleanup_after_hours` (72 h). The next task is the one that finds the
/// disk full: the reserve is spent on it and its (small) worktree is given back, not the
/// ballast, so the reserve cannot be made again and new work is refused for three days.
#[tokio::test]
async fn an_agent_that_leaves_just_over_a_megabyte_free_does_not_keep_new_work_out() {
    let world = World::new();
    let Some(_disk) = SmallDisk::mount(&world.data, 64) else {
        return;
    };
    // A repository whose checkout needs a few megabytes.
    let out = std::process::Command::new("head")
        .args(["-c", "3000000", "/dev/urandom"])
        .output()
        .unwrap();
    std::fs::write(world.repo.join("big.bin"), out.stdout).unwrap();
    git(&world.repo, &["add", "big.bin"]);
    git(&world.repo, &["commit", "-q", "-m", "a big file"]);
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\necho \"$(date +%s%N)\" > feature.txt\n\
             if [ \"$(basename \"$(pwd -P)\")\" = FILL-1 ]; then\n\
               echo ballast > .gitignore\n\
               avail=$(df -Pk . | awk 'NR==2 {{print $4}}')\n\
               head -c $(( (avail - 1500) * 1024 )) /dev/zero > ballast\n\
             fi\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    let t = server.run_to_end("FILL-1", "").await;
    assert_eq!(
        t.state,
        State::Passed,
        "the filling run ends as any other: {t}"
    );
    // The next task finds the disk full.
    let t = server.run_to_end("FILL-2", "").await;
    eprintln!("the next task ended {:?}: {:?}", t.state, t.last_error);
    let spec = crate::support::spec("FILL-3", "");
    within(
        Duration::from_secs(30),
        "new tasks taken again",
        async || {
            let (status, body) = server.post_spec("application/yaml", &spec).await;
            if status == 201 {
                Ok(())
            } else {
                Err((status, body))
            }
        },
    )
    .await;
    Task::local(&server, "FILL-3").ended_as(State::Passed).await;
}
