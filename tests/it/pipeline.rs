//! The worker pipeline through the real server: fallback, feedback rounds, budgets, cancel,
//! retry, and what the agent can see.

use std::time::Duration;

use crate::story::{Repo, State, Task, TaskView, eventually};
use crate::support::{CLAUDE_OK, World, alive, git, spec, wait_for_file};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn falls_back_past_a_missing_binary_and_a_failing_one() {
    let world = World::new();
    let failing = world.agent("codex", "echo 'codex: not logged in' >&2\nexit 3");
    let gemini = world.agent(
        "gemini",
        "cat > /dev/null\necho done > feature.txt\necho '{\"response\": \"ok\", \"stats\": {}}'",
    );
    world.write_config(&format!(
        "providers:\n  order: [claude_cli, codex_cli, gemini_cli]\n  claude_cli: {{mode: cli, binary: /nonexistent/claude}}\n  codex_cli: {{mode: cli, binary: {}}}\n  gemini_cli: {{mode: cli, binary: {}}}\n",
        failing.display(),
        gemini.display()
    ));
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("FB-1", ""))
        .await;
    let task = server.ended("FB-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_eq!(task.provider.as_deref(), Some("gemini_cli"));
    let events: Vec<String> = task.events.iter().map(|e| e.message.clone()).collect();
    let all = events.join("\n");
    assert!(
        all.contains("claude_cli: skipped (`/nonexistent/claude` not found on PATH)"),
        "{all}"
    );
    assert!(
        all.contains("codex_cli: failure (exit code 3: codex: not logged in)"),
        "{all}"
    );
    assert!(all.contains("gemini_cli: success"), "{all}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            r#"autodev_provider_requests_total{provider="codex_cli",status="failure"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"autodev_provider_requests_total{provider="claude_cli",status="skipped"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn every_provider_failing_is_an_error_listing_each_reason() {
    let world = World::new();
    world.agent(
        "claude",
        "echo '{\"type\":\"result\",\"is_error\":true,\"result\":\"credit balance too low\"}'",
    );
    world.write_config("providers:\n  order: [claude_cli, codex_cli]\n  codex_cli: {mode: cli, binary: no-such-codex}\n");
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("ALL-1", ""))
        .await;
    let task = server.ended("ALL-1").await;
    assert_eq!(task.state, State::Error);
    let err = task.last_error.as_deref().unwrap();
    assert!(
        err.contains("claude_cli: reported an error: credit balance too low"),
        "{err}"
    );
    assert!(
        err.contains("codex_cli: `no-such-codex` not found on PATH"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failing_gate_is_fed_back_and_round_two_passes() {
    let world = World::new();
    // Round 1 writes the wrong file; when the prompt reports the failure, the agent fixes it.
    world.agent(
        "claude",
        &format!(
            "prompt=$(cat)\nn=$(ls \"$FAKE_AGENT_DIR\" | wc -l)\nprintf '%s' \"$prompt\" > \"$FAKE_AGENT_DIR/prompt-$n.txt\"\n\
             case \"$prompt\" in *'Round 2 of 3'*) echo fixed > fixed.txt ;; *) echo draft > draft.txt ;; esac\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("FIX-1", "acceptance:\n  tests: [\"test -f fixed.txt || { echo 'fixed.txt is missing'; exit 1; }\"]\n"))
        .await;
    let task = server.ended("FIX-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_eq!(task.rounds, 2);
    let gates: Vec<_> = task
        .gates
        .iter()
        .map(|g| (g.round, g.status.as_str()))
        .collect();
    assert_eq!(gates, [(1, "failed"), (2, "passed")]);
    let second = std::fs::read_to_string(world.agent_dir.join("prompt-1.txt")).unwrap();
    assert!(
        second.contains("fixed.txt is missing"),
        "the failing output reaches the agent:\n{second}"
    );
    assert!(second.contains("gate `tests[0]`"), "{second}");
}

#[tokio::test]
async fn rounds_exhausted_ends_failed_with_the_gate_and_its_output() {
    let world = World::new();
    world.agent(
        "claude",
        &format!("cat >/dev/null\ndate +%s%N >> work.txt\necho '{CLAUDE_OK}'"),
    );
    let server = world.serve();
    server
        .post_spec(
            "application/yaml",
            &spec(
                "NOPE-1",
                "max_rounds: 2\nacceptance:\n  tests: [\"echo 3 tests failed; exit 1\"]\n",
            ),
        )
        .await;
    let task = server.ended("NOPE-1").await;
    assert_eq!(task.state, State::Failed);
    assert_eq!(task.rounds, 2);
    let err = task.last_error.as_deref().unwrap();
    assert!(err.contains("after 2 round(s)"), "{err}");
    assert!(err.contains("gate `tests[0]`"), "{err}");
    assert!(err.contains("exit code 1"), "{err}");
    assert!(err.contains("3 tests failed"), "{err}");
    // The work is kept on the branch for a retry.
    let subject = git(
        &world.repo,
        &["log", "-1", "--format=%s", "auto/backend/NOPE-1"],
    );
    assert!(subject.starts_with("chore(backend): "), "{subject}");
}

#[tokio::test]
async fn an_agent_that_changes_nothing_fails_the_task() {
    let world = World::new();
    world.agent("claude", &format!("cat >/dev/null\necho '{CLAUDE_OK}'"));
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("IDLE-1", ""))
        .await;
    let task = server.ended("IDLE-1").await;
    assert_eq!(task.state, State::Failed);
    assert!(
        task.last_error
            .as_deref()
            .unwrap()
            .contains("changed nothing in round 1"),
        "{task:#}"
    );
}

#[tokio::test]
async fn an_agent_that_commits_its_own_work_counts_as_a_change() {
    let world = World::new();
    world.agent("claude", &format!("cat >/dev/null\necho x > own.txt\ngit add own.txt\ngit commit -q -m 'agent commit'\necho '{CLAUDE_OK}'"));
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("SELF-1", ""))
        .await;
    let task = server.ended("SELF-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    let author = git(
        &world.repo,
        &["log", "-1", "--format=%an <%ae>", "auto/backend/SELF-1"],
    );
    assert_eq!(author, "autodev <autodev@users.noreply.github.com>");
}

#[tokio::test]
async fn a_hanging_agent_is_killed_at_the_timeout_with_nothing_left_behind() {
    // The agent's processes are watched from outside.
    let world = World::unconfined();
    world.agent(
        "claude",
        "cat >/dev/null\nsleep 600 &\necho $! > \"$FAKE_AGENT_DIR/child.pid\"\necho $$ > \"$FAKE_AGENT_DIR/agent.pid\"\nwait",
    );
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("HANG-1", "timeout: 3\n"))
        .await;
    let child: i32 = wait_for_file(&world.agent_dir.join("child.pid"), WAIT)
        .await
        .trim()
        .parse()
        .unwrap();
    let agent: i32 = wait_for_file(&world.agent_dir.join("agent.pid"), WAIT)
        .await
        .trim()
        .parse()
        .unwrap();
    let task = server.ended("HANG-1").await;
    assert_eq!(task.state, State::Failed);
    assert!(
        task.last_error.as_deref().unwrap().contains("timed out"),
        "{task:#}"
    );
    assert!(!alive(agent), "agent {agent} still running");
    assert!(!alive(child), "agent's child {child} still running");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            r#"autodev_provider_requests_total{provider="claude_cli",status="timeout"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn cancel_stops_a_running_agent_at_once() {
    // The agent's process is watched from outside.
    let world = World::unconfined();
    world.agent(
        "claude",
        "cat >/dev/null\necho partial > partial.txt\nsleep 600 &\necho $! > \"$FAKE_AGENT_DIR/child.pid\"\nwait",
    );
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("CXL-1", ""))
        .await;
    let child: i32 = wait_for_file(&world.agent_dir.join("child.pid"), WAIT)
        .await
        .trim()
        .parse()
        .unwrap();
    server.wait_for("CXL-1", &[State::Running]).await;
    let started = std::time::Instant::now();
    let (status, body) = server.post("/tasks/CXL-1/cancel").await;
    assert_eq!(status, 202, "{body}");
    let task = server.ended("CXL-1").await;
    assert_eq!(task.state, State::Cancelled, "{task:#}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(!alive(child), "agent's child {child} still running");
    // What the agent wrote before the cancel is kept on the branch.
    assert_eq!(
        git(&world.repo, &["show", "auto/backend/CXL-1:partial.txt"]),
        "partial"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"autodev_tasks_total{role="backend",status="cancelled"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn cancel_of_a_queued_task_is_immediate() {
    let world = World::new();
    world.agent("claude", "sleep 600");
    // One worker slot, held by the first task, so the second stays queued.
    std::fs::write(
        &world.config,
        "providers: {order: [claude_cli]}\nworkers: {concurrency: 1, heartbeat_seconds: 1, missed_heartbeats: 2}\n",
    )
    .unwrap();
    let server = world.serve();
    server.post_spec("application/yaml", &spec("Q-1", "")).await;
    server.wait_for("Q-1", &[State::Running]).await;
    server.post_spec("application/yaml", &spec("Q-2", "")).await;
    let (status, body) = server.post("/tasks/Q-2/cancel").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "cancelled");
    server.post("/tasks/Q-1/cancel").await;
    server.wait_for("Q-1", &[State::Cancelled]).await;
    let (_, q2) = server.get("/tasks/Q-2").await;
    assert_eq!(q2["state"], "cancelled");
    assert!(q2["started_at"].is_null(), "Q-2 never ran");
}

#[tokio::test]
async fn retry_continues_on_the_same_branch() {
    let world = World::new();
    // First run: writes step1 and fails the gate. Second run: sees step1 (from the branch) and
    // completes the work.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\nif [ -f step1.txt ]; then echo two > step2.txt; else echo one > step1.txt; fi\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    server
        .post_spec(
            "application/yaml",
            &spec(
                "RT-1",
                "max_rounds: 1\nacceptance:\n  tests: [\"test -f step2.txt\"]\n",
            ),
        )
        .await;
    let first = server.ended("RT-1").await;
    assert_eq!(first.state, State::Failed);
    let first_head = first.head_sha.as_deref().unwrap().to_owned();

    let (status, body) = server.post("/tasks/RT-1/retry").await;
    assert_eq!(status, 202, "{body}");
    assert_ne!(
        body["job_id"].as_str(),
        first.job_id.as_deref(),
        "a retry is a new job"
    );
    let second = server.ended("RT-1").await;
    assert_eq!(second.state, State::Passed, "{second:#}");
    assert_eq!(second.runs, 2);
    let log = git(
        &world.repo,
        &["log", "--format=%H %s", "master..auto/backend/RT-1"],
    );
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("feat(backend)"), "{log}");
    assert!(
        lines[1].starts_with(&first_head),
        "the retry builds on the first run's commit: {log}"
    );
    assert!(second.told("continuing the existing branch"), "{second}");
}

#[tokio::test]
async fn the_agent_sees_no_secret_and_a_home_of_its_own() {
    // App mode, so the App's private key and webhook secret are in autodev's environment too.
    let mut world = crate::webhooks::app_world();
    world
        .extra_env
        .retain(|(k, _)| k != "GITHUB_WEBHOOK_SECRET");
    let key_path = world.root.path().join("app.pem");
    let key_body: String = std::fs::read_to_string(&key_path)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    for (k, v) in [
        ("AUTODEV_API_TOKEN", "api-token-SECRET-1"),
        ("GITHUB_WEBHOOK_SECRET", "webhook-SECRET-2"),
        ("GITHUB_TOKEN", "ghp-SECRET-3"),
        ("AWS_SECRET_ACCESS_KEY", "aws-SECRET-4"),
        ("ANTHROPIC_API_KEY", "sk-ant-allowed"),
        ("OPENAI_API_KEY", "sk-openai-not-for-claude"),
    ] {
        world.extra_env.push((k.into(), v.into()));
    }
    std::fs::write(
        world.home.join(".git-credentials"),
        "https://x:SECRET-5@github.com\n",
    )
    .unwrap();
    std::fs::create_dir_all(world.home.join(".ssh")).unwrap();
    std::fs::write(world.home.join(".ssh/id_ed25519"), "SECRET-6").unwrap();
    std::fs::create_dir_all(world.home.join(".claude")).unwrap();
    std::fs::write(
        world.home.join(".claude/settings.json"),
        "{\"theme\": \"dark\"}",
    )
    .unwrap();
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\nout=\"$FAKE_AGENT_DIR\"\nenv > \"$out/env.txt\"\necho \"$HOME\" > \"$out/home.txt\"\n\
             ls -A \"$HOME\" > \"$out/home-list.txt\"\ncat \"$HOME/.claude/settings.json\" > \"$out/claude-settings.txt\"\n\
             cat .git 2>/dev/null > \"$out/dotgit.txt\"; git config --list > \"$out/git-config.txt\" 2>&1\n\
             for p in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $p 2>/dev/null; echo; done > \"$out/cmdlines.txt\"\n\
             echo x > feature.txt\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("ENV-1", ""))
        .await;
    let task = server.ended("ENV-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");

    let read = |f: &str| std::fs::read_to_string(world.agent_dir.join(f)).unwrap();
    let env = read("env.txt");
    let everything = [
        "env.txt",
        "home-list.txt",
        "git-config.txt",
        "cmdlines.txt",
        "dotgit.txt",
    ]
    .iter()
    .map(|f| read(f))
    .collect::<String>();
    for secret in [
        "SECRET-1",
        "SECRET-2",
        "SECRET-3",
        "SECRET-4",
        "SECRET-5",
        "SECRET-6",
        "sk-openai",
    ] {
        assert!(
            !everything.contains(secret),
            "the agent could see {secret}:\n{env}"
        );
    }
    assert!(
        !everything.contains(&key_body),
        "the agent could see the App's private key"
    );
    assert!(
        !everything.contains(key_path.to_str().unwrap()),
        "the agent could see where the key is"
    );
    assert!(
        env.contains("ANTHROPIC_API_KEY=sk-ant-allowed"),
        "its own provider key is passed:\n{env}"
    );
    assert!(
        env.contains("FAKE_AGENT_DIR="),
        "configured extras are passed"
    );
    let home = read("home.txt");
    assert!(
        !home.trim().eq(world.home.to_str().unwrap()),
        "HOME is not the real one"
    );
    assert!(home.starts_with(world.data.to_str().unwrap()), "{home}");
    let listing = read("home-list.txt");
    assert!(listing.contains(".claude"), "{listing}");
    assert!(
        !listing.contains(".ssh") && !listing.contains(".git-credentials"),
        "{listing}"
    );
    assert!(
        read("claude-settings.txt").contains("dark"),
        "the CLI's own settings are there"
    );
}

#[tokio::test]
async fn base_branch_comes_from_the_spec_then_dev_branch_and_a_missing_one_is_an_error() {
    let mut world = World::new();
    git(&world.repo, &["branch", "develop"]);
    git(&world.repo, &["branch", "release"]);
    world
        .extra_env
        .push(("DEV_BRANCH".into(), "develop".into()));
    world.simple_claude("f.txt", "x");
    let server = world.serve();
    server.post_spec("application/yaml", &spec("B-1", "")).await;
    server
        .post_spec("application/yaml", &spec("B-2", "base_branch: release\n"))
        .await;
    server
        .post_spec("application/yaml", &spec("B-3", "base_branch: nope\n"))
        .await;
    let one = server.ended("B-1").await;
    assert_eq!(one.base_branch.as_deref(), Some("develop"));
    let two = server.ended("B-2").await;
    assert_eq!(two.base_branch.as_deref(), Some("release"));
    let three = server.ended("B-3").await;
    assert_eq!(three.state, State::Error);
    assert!(
        three
            .last_error
            .as_deref()
            .unwrap()
            .contains("base branch `nope` does not exist"),
        "{three:#}"
    );
}

#[test]
fn a_data_dir_inside_the_repository_is_refused() {
    let mut world = World::new();
    let inside = world.repo.join(".autodev");
    world
        .extra_env
        .push(("AUTODEV_DATA_DIR".into(), inside.display().to_string()));
    let out = world
        .command(&["serve", "--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside the repository"));
}

#[tokio::test]
async fn ended_tasks_worktrees_are_cleaned_up_and_a_retry_still_continues() {
    let world = World::new();
    world.agent(
        "claude",
        &format!("cat >/dev/null\ndate +%s%N >> work.txt\necho '{CLAUDE_OK}'"),
    );
    world.write_config("providers:\n  order: [claude_cli]\nhygiene: {cleanup_minutes: \"1s\", cleanup_after_hours: 0}\n");
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("CLN-1", ""))
        .await;
    let task = Task::local(&server, "CLN-1");
    task.ended_as(State::Passed).await;
    // Where autodev puts it (the record may be cleared already: clean-up runs every second).
    let path = world.data.join("worktrees/local/CLN-1");
    // The directory goes first, then the record.
    let cleaned = |t: &TaskView| !path.exists() && t.worktree.is_none();
    task.until("the worktree cleaned up", cleaned).await;
    assert!(
        !git(&world.repo, &["worktree", "list"]).contains("CLN-1"),
        "git forgot it too"
    );
    let metrics = server.metrics().await;
    assert!(metrics.contains("autodev_active_worktrees 0"), "{metrics}");
    // The branch stays; a retry makes a new worktree from it.
    server.post("/tasks/CLN-1/retry").await;
    task.run(2).ended_as(State::Passed).await;
    let log = git(
        &world.repo,
        &["log", "--format=%s", "master..auto/backend/CLN-1"],
    );
    assert_eq!(log.lines().count(), 2, "{log}");
}

#[tokio::test]
async fn checkpoints_while_the_agent_writes_lose_nothing_and_break_nothing() {
    let world = World::new();
    // The agent writes a file every 100 ms for about 4 s, and runs git itself meanwhile.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\ni=0\nwhile [ $i -lt 40 ]; do\n  echo $i > file-$i.txt\n  git status --porcelain >/dev/null 2>>\"$FAKE_AGENT_DIR/git-errors.txt\"\n  \
             if [ $((i % 10)) -eq 0 ]; then git add file-$i.txt 2>>\"$FAKE_AGENT_DIR/git-errors.txt\"; fi\n  i=$((i+1))\n  sleep 0.1\ndone\necho '{CLAUDE_OK}'"
        ),
    );
    world
        .write_config("providers:\n  order: [claude_cli]\nhygiene: {checkpoint_minutes: \"1s\"}\n");
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("CP-1", ""))
        .await;
    let task = server.ended("CP-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    let checkpoints = task.events_of("checkpoint");
    assert!(
        checkpoints >= 2,
        "checkpoints were taken while it ran: {task:#}"
    );
    // The side ref holds a commit on top of the branch's start, with some of the files.
    let side = git(&world.repo, &["rev-parse", "refs/autodev/checkpoints/CP-1"]);
    let files = git(&world.repo, &["ls-tree", "--name-only", &side]);
    assert!(files.contains("file-0.txt"), "{files}");
    // Nothing was lost or broken: every file is in the final commit, the repository is sound,
    // and the agent's own git never failed.
    let final_files = git(
        &world.repo,
        &["ls-tree", "--name-only", "auto/backend/CP-1"],
    );
    for i in 0..40 {
        assert!(
            final_files.contains(&format!("file-{i}.txt")),
            "file-{i}.txt lost"
        );
    }
    git(&world.repo, &["fsck", "--no-progress"]);
    let errors =
        std::fs::read_to_string(world.agent_dir.join("git-errors.txt")).unwrap_or_default();
    assert!(errors.trim().is_empty(), "the agent's git failed: {errors}");
    let subjects = git(
        &world.repo,
        &["log", "--format=%s", "master..auto/backend/CP-1"],
    );
    assert_eq!(
        subjects.lines().count(),
        1,
        "checkpoints stay off the branch: {subjects}"
    );
}

#[tokio::test]
async fn in_local_mode_a_passed_branch_behind_its_base_is_rebased_in_place() {
    let world = World::new();
    world.simple_claude("feature.txt", "x");
    world.write_config("providers:\n  order: [claude_cli]\nhygiene: {rebase_minutes: \"1s\"}\n");
    let server = world.serve();
    server
        .post_spec(
            "application/yaml",
            &spec("LRB-1", "acceptance:\n  tests: [\"test -f feature.txt\"]\n"),
        )
        .await;
    let task = Task::local(&server, "LRB-1");
    task.ended_as(State::Passed).await;
    std::fs::write(world.repo.join("base.txt"), "moved on\n").unwrap();
    git(&world.repo, &["add", "base.txt"]);
    git(&world.repo, &["commit", "-q", "-m", "master moves on"]);
    let repo = Repo(world.repo.clone());
    let rebased = async || {
        repo.contains("auto/backend/LRB-1", "master")
            .then_some(())
            .ok_or(())
    };
    eventually("the branch rebased", rebased).await;
    assert_eq!(repo.file("auto/backend/LRB-1", "feature.txt"), "x");
    let t = task
        .until("the rebase told", |t| t.events_of("rebase") > 0)
        .await;
    assert_eq!(t.state, State::Passed, "the gates passed again: {t:#?}");
    assert_eq!(t.head_sha, Some(repo.head("auto/backend/LRB-1")));
}

#[tokio::test]
async fn autodev_checkpoint_by_hand_saves_a_running_tasks_work() {
    let world = World::new();
    // The agent writes its work, says so, and waits to be let go.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\necho half > half.txt\ntouch \"$FAKE_AGENT_DIR/written\"\nwhile [ ! -f \"$FAKE_AGENT_DIR/go\" ]; do sleep 0.1; done\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("CPH-1", ""))
        .await;
    let written = async || {
        world
            .agent_dir
            .join("written")
            .exists()
            .then_some(())
            .ok_or(())
    };
    eventually("the agent's work written", written).await;
    let out = tokio::process::Command::from(world.command(&["checkpoint"]))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("1 checkpoint(s) saved"), "{stdout}");
    let side = git(
        &world.repo,
        &["rev-parse", "refs/autodev/checkpoints/CPH-1"],
    );
    assert_eq!(
        git(&world.repo, &["show", &format!("{side}:half.txt")]),
        "half"
    );
    assert!(
        git(&world.repo, &["log", "-1", "--format=%s", &side])
            .starts_with("chore(backend): checkpoint"),
    );
    std::fs::write(world.agent_dir.join("go"), "").unwrap();
    let task = server.ended("CPH-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
}

#[tokio::test]
async fn the_users_gc_while_a_task_runs_breaks_nothing() {
    let world = World::new();
    // The task starts from a commit that the user then drops from every branch of theirs and
    // prunes for good, while the agent works.
    std::fs::write(world.repo.join("base.txt"), "base\n").unwrap();
    git(&world.repo, &["add", "base.txt"]);
    git(&world.repo, &["commit", "-q", "-m", "the base"]);
    let base = git(&world.repo, &["rev-parse", "HEAD"]);
    let out = world.agent_dir.display();
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             echo started > {out}/started\n\
             while [ ! -f {out}/go ]; do sleep 0.05; done\n\
             git log -1 --format=%s > {out}/log.txt\n\
             echo y > feature.txt; git add feature.txt; git commit -qm 'the agent'\n\
             echo '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    let (status, body) = server
        .post_spec("application/yaml", &spec("GC-1", ""))
        .await;
    assert_eq!(status, 201, "{body}");
    wait_for_file(&world.agent_dir.join("started"), Duration::from_secs(30)).await;
    git(&world.repo, &["reset", "-q", "--hard", "HEAD~1"]);
    git(&world.repo, &["reflog", "expire", "--expire=now", "--all"]);
    git(&world.repo, &["gc", "-q", "--prune=now"]);
    std::fs::write(world.agent_dir.join("go"), "go").unwrap();
    let task = server.ended("GC-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_eq!(world.left("log.txt"), "the base\n");
    assert_eq!(
        git(
            &world.repo,
            &["log", "--format=%s", "-2", "auto/backend/GC-1"]
        ),
        "the agent\nthe base"
    );
    assert_eq!(
        git(&world.repo, &["rev-parse", "auto/backend/GC-1~1"]),
        base
    );
}

/// The next task on the same base takes the repository made ahead while the last one's agent
/// worked: on its own branch, with the base's files, and nothing of the spare's left in it.
#[tokio::test]
async fn the_next_task_takes_a_checkout_made_ahead_and_a_moved_base_is_not_missed() {
    let world = World::new();
    // Each agent writes down what it found, and which branch its repository is on.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n{{ cat README.md; git symbolic-ref HEAD; git branch --format='%(refname)'; }} > seen.txt\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    let first = server.run_to_end("AHEAD-1", "").await;
    assert_eq!(first.state, State::Passed, "{first}");
    assert!(!first.told("checked out ahead"), "{first}");

    let second = eventually("a spare checkout taken", async || {
        // The spare is made while an agent works; a task that came too soon checks out as ever.
        let id = format!("AHEAD-{}", rand_id());
        let t = server.run_to_end(&id, "").await;
        if t.told("checked out ahead") {
            Ok((id, t))
        } else {
            Err(t)
        }
    })
    .await;
    let (id, task) = second;
    assert_eq!(task.state, State::Passed, "{task}");
    let seen = git(
        &world.repo,
        &["show", &format!("auto/backend/{id}:seen.txt")],
    );
    let readme = std::fs::read_to_string(world.repo.join("README.md")).unwrap();
    assert!(seen.starts_with(readme.trim_end()), "{seen}");
    let branch = format!("refs/heads/auto/backend/{id}");
    assert_eq!(
        seen[readme.trim_end().len()..]
            .split_whitespace()
            .collect::<Vec<_>>(),
        [branch.as_str(), branch.as_str()],
        "on its own branch, the only one: {seen}"
    );

    // The base moves on: the spare made at the old commit is not used.
    std::fs::write(world.repo.join("README.md"), "moved on\n").unwrap();
    git(&world.repo, &["commit", "-q", "-am", "move the base"]);
    let moved = server.run_to_end("AHEAD-MOVED", "").await;
    assert_eq!(moved.state, State::Passed, "{moved}");
    assert!(!moved.told("checked out ahead"), "{moved}");
    let seen = git(&world.repo, &["show", "auto/backend/AHEAD-MOVED:seen.txt"]);
    assert!(seen.starts_with("moved on\n"), "{seen}");
}

fn rand_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(2);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Without the sandbox an agent could write into a spare that the next task's agent will work
/// in: none is made, however many tasks run.
#[tokio::test]
async fn without_the_sandbox_no_checkout_is_made_ahead() {
    let world = World::unconfined();
    world.agent(
        "claude",
        &format!("cat >/dev/null\necho x > f.txt\necho '{CLAUDE_OK}'"),
    );
    let server = world.serve();
    for n in 1..=3 {
        let t = server.run_to_end(&format!("BARE-{n}"), "").await;
        assert_eq!(t.state, State::Passed, "{t}");
        assert!(!t.told("checked out ahead"), "{t}");
    }
    let spares = world.data.join("worktrees/.spare");
    let held: Vec<_> = std::fs::read_dir(&spares)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(held.is_empty(), "{held:?}");
}
