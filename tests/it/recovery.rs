//! Crash recovery: a server killed with SIGKILL mid-task, restarted.

use std::time::Duration;

use crate::support::{CLAUDE_OK, State, World, alive, git, spec, wait_for_file};

#[tokio::test]
async fn a_killed_server_restarts_the_task_once_and_stops_the_old_agent() {
    // Leftover agents are found and watched from outside; a sandbox would end them anyway.
    let world = World::unconfined();
    // The first agent run hangs (it would never finish); later runs finish at once.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\nif [ ! -f \"$FAKE_AGENT_DIR/first.pid\" ]; then\n  echo $$ > \"$FAKE_AGENT_DIR/first.pid\"\n  sleep 600 &\n  echo $! > \"$FAKE_AGENT_DIR/first-child.pid\"\n  wait\nfi\n\
             echo run >> \"$FAKE_AGENT_DIR/runs.txt\"\necho done > feature.txt\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("CRASH-1", ""))
        .await;
    let agent: i32 = wait_for_file(&world.agent_dir.join("first.pid"), Duration::from_secs(30))
        .await
        .trim()
        .parse()
        .unwrap();
    let child: i32 = wait_for_file(
        &world.agent_dir.join("first-child.pid"),
        Duration::from_secs(30),
    )
    .await
    .trim()
    .parse()
    .unwrap();
    server.kill_hard();
    assert!(
        alive(agent),
        "the agent outlives the killed server (its own process group)"
    );

    let server = world.serve();
    let task = server.ended("CRASH-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert!(!alive(agent), "old agent {agent} still running");
    assert!(!alive(child), "old agent's child {child} still running");
    let runs = std::fs::read_to_string(world.agent_dir.join("runs.txt")).unwrap();
    assert_eq!(
        runs.lines().count(),
        1,
        "the pipeline finished exactly once"
    );
    let log = git(
        &world.repo,
        &["log", "--format=%s", "master..auto/backend/CRASH-1"],
    );
    assert_eq!(log.lines().count(), 1, "one commit series: {log}");
    let ends = ["passed", "failed", "error", "cancelled"];
    let terminal: Vec<_> = task
        .events
        .iter()
        .filter(|e| ends.contains(&e.kind.as_str()))
        .collect();
    assert_eq!(terminal.len(), 1, "one terminal state: {task:#}");
}

#[tokio::test]
async fn cancel_reaches_an_agent_running_in_another_worker_process() {
    // The agent's process is watched from outside.
    let world = World::unconfined();
    world.agent(
        "claude",
        "cat >/dev/null\necho $$ > \"$FAKE_AGENT_DIR/agent.pid\"\nsleep 600 &\nwait",
    );
    // The API process runs no tasks; a separate worker process does.
    let server = world.serve_with(&["--workers", "0"]);
    let _worker = world.worker();
    server
        .post_spec("application/yaml", &spec("XP-1", ""))
        .await;
    let agent: i32 = wait_for_file(&world.agent_dir.join("agent.pid"), Duration::from_secs(30))
        .await
        .trim()
        .parse()
        .unwrap();
    server.wait_for("XP-1", &[State::Running]).await;
    let (status, _) = server.post("/tasks/XP-1/cancel").await;
    assert_eq!(status, 202);
    let started = std::time::Instant::now();
    let task = server.ended("XP-1").await;
    assert_eq!(task.state, State::Cancelled, "{task:#}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(!alive(agent), "agent {agent} still running");
}

#[tokio::test]
async fn two_processes_on_one_database_run_each_task_once() {
    // The agents' processes are counted from outside.
    let world = World::unconfined();
    world.agent(
        "claude",
        &format!("cat >/dev/null\nbasename \"$PWD\" >> \"$FAKE_AGENT_DIR/runs.txt\"\nsleep 0.3\necho x > f.txt\necho '{CLAUDE_OK}'"),
    );
    let server = world.serve();
    let _worker = world.worker();
    let ids: Vec<String> = (1..=6).map(|i| format!("MP-{i}")).collect();
    for id in &ids {
        let (status, _) = server.post_spec("application/yaml", &spec(id, "")).await;
        assert_eq!(status, 201);
    }
    for id in &ids {
        let task = server.ended(id).await;
        assert_eq!(task.state, State::Passed, "{task:#}");
    }
    let runs = std::fs::read_to_string(world.agent_dir.join("runs.txt")).unwrap();
    let mut seen: Vec<&str> = runs.lines().collect();
    seen.sort();
    assert_eq!(
        seen,
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "each task's agent ran once"
    );
}

#[tokio::test]
async fn an_agent_whose_server_died_before_recording_it_is_still_found_and_stopped() {
    // Leftover agents are found and watched from outside; a sandbox would end them anyway.
    let world = World::unconfined();
    // The first run hangs; later runs finish.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\nif [ ! -f \"$FAKE_AGENT_DIR/first.pid\" ]; then\n  echo $$ > \"$FAKE_AGENT_DIR/first.pid\"\n  sleep 600 &\n  echo $! > \"$FAKE_AGENT_DIR/first-child.pid\"\n  wait\nfi\n\
             echo done > feature.txt\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("UNREC-1", ""))
        .await;
    let agent: i32 = wait_for_file(&world.agent_dir.join("first.pid"), Duration::from_secs(30))
        .await
        .trim()
        .parse()
        .unwrap();
    let child: i32 = wait_for_file(
        &world.agent_dir.join("first-child.pid"),
        Duration::from_secs(30),
    )
    .await
    .trim()
    .parse()
    .unwrap();
    server.kill_hard();
    // As if the server had died between starting the agent and recording its process group
    // (the run's marker is recorded before anything starts).
    let cleared = world
        .execute(
            "UPDATE tasks SET agent_pgid = NULL WHERE task_id = 'UNREC-1' AND agent_marker IS NOT NULL",
        )
        .await;
    assert_eq!(cleared, 1);
    assert!(alive(agent) && alive(child), "the orphaned agent runs on");

    let server = world.serve();
    let task = server.ended("UNREC-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert!(!alive(agent), "old agent {agent} still running");
    assert!(!alive(child), "old agent's child {child} still running");
    assert!(task.events_of("recovered") > 0, "{task:#}");
}

#[tokio::test]
async fn a_rerun_after_a_crashed_foreground_run_stops_its_unrecorded_agent() {
    // Leftover agents are found and watched from outside; a sandbox would end them anyway.
    let world = World::unconfined();
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\nif [ ! -f \"$FAKE_AGENT_DIR/first.pid\" ]; then\n  echo $$ > \"$FAKE_AGENT_DIR/first.pid\"\n  sleep 600 &\n  wait\nfi\n\
             echo done > feature.txt\necho '{CLAUDE_OK}'"
        ),
    );
    let spec_path = world.write_spec("task.yaml", &spec("RERUN-1", ""));
    let agent = crash_in_the_foreground(&world, &spec_path, "first.pid").await;
    // As if `autodev run` had died before recording the agent's process group.
    world
        .execute("UPDATE tasks SET agent_pgid = NULL WHERE task_id = 'RERUN-1'")
        .await;
    assert!(alive(agent));
    // The dead run's lease runs out; then the task is run again, under a new run number.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = tokio::process::Command::from(world.command(&[
            "run",
            "--rerun",
            spec_path.to_str().unwrap(),
        ]))
        .output()
        .await
        .unwrap();
        if !String::from_utf8_lossy(&out.stderr).contains("wait for it to end") {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("stopped agent processes left by an earlier run"),
        "{stdout}"
    );
    assert!(!alive(agent), "old agent {agent} still running");
}

#[tokio::test]
async fn cancelling_a_task_whose_worker_died_stops_the_agent_it_left() {
    let world = World::new();
    world.agent(
        "claude",
        "cat >/dev/null\necho $$ > \"$FAKE_AGENT_DIR/agent.pid\"\nsleep 600 &\nwait",
    );
    // Slow heartbeats: the periodic sweep would wait a minute, so only the cancel can stop it.
    // Unconfined: the agent's process is watched from outside.
    std::fs::write(
        &world.config,
        "providers:\n  order: [claude_cli]\nworkers: {concurrency: 1, heartbeat_seconds: 30, missed_heartbeats: 2}\nagent: {env: [FAKE_AGENT_DIR], sandbox: off}\n",
    )
    .unwrap();
    let spec_path = world.write_spec("task.yaml", &spec("CXL-1", ""));
    let agent = crash_in_the_foreground(&world, &spec_path, "agent.pid").await;
    // Its lease ran out a moment ago (as it would after a minute): too recently for the
    // sweep, which waits a heartbeat period more.
    world
        .execute(
            "UPDATE tasks SET lease_until = CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 1000
             WHERE task_id = 'CXL-1'",
        )
        .await;
    assert!(alive(agent));

    let server = world.serve_with(&["--workers", "0"]);
    let (status, body) = server.post("/tasks/CXL-1/cancel").await;
    assert!(status < 300, "{status} {body}");
    let (_, task) = server.get("/tasks/CXL-1").await;
    assert_eq!(task["state"], "cancelled", "{task:#}");
    assert!(
        !alive(agent),
        "the agent {agent} left by the dead run still runs"
    );
}

/// Starts `autodev run` on `spec`, waits until its agent has written its pid to `pid_file`,
/// and kills the run (not the agent, which has a process group of its own). The agent's pid.
async fn crash_in_the_foreground(world: &World, spec: &std::path::Path, pid_file: &str) -> i32 {
    let mut run = world
        .command(&["run", spec.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent = wait_for_file(&world.agent_dir.join(pid_file), Duration::from_secs(30))
        .await
        .trim()
        .parse()
        .unwrap();
    run.kill().unwrap();
    let _ = run.wait();
    agent
}

#[tokio::test]
async fn sigterm_interrupts_a_running_task_keeps_its_work_and_queues_it_again_at_once() {
    // The agent's process is watched from outside.
    let world = World::unconfined();
    std::fs::write(
        &world.config,
        "providers:\n  order: [claude_cli]\nworkers: {concurrency: 2, heartbeat_seconds: 1, missed_heartbeats: 30, drain_seconds: 1}\nagent: {env: [FAKE_AGENT_DIR], sandbox: off}\n",
    )
    .unwrap();
    // The first run leaves work behind and hangs; the next finds that work and finishes.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\nif [ ! -f progress.txt ]; then\n  echo one > progress.txt\n  echo $$ > \"$FAKE_AGENT_DIR/first.pid\"\n  exec sleep 600\nfi\n\
             cp progress.txt \"$FAKE_AGENT_DIR/seen.txt\"\necho done > feature.txt\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("DRAIN-1", ""))
        .await;
    let agent: i32 = wait_for_file(&world.agent_dir.join("first.pid"), Duration::from_secs(30))
        .await
        .trim()
        .parse()
        .unwrap();
    let log = server.log.clone();
    let (status, took) = server.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    // drain_seconds (1) plus the interruption's commit, well before the lease (30 s) runs out.
    assert!(
        took < Duration::from_secs(10),
        "exit took {took:?}:\n{}",
        log.lock().unwrap()
    );
    assert!(!alive(agent), "the agent {agent} outlived the shutdown");

    // The next start takes the task at once, as a new run, on the work the first one left.
    let restarted = std::time::Instant::now();
    let server = world.serve();
    let t = server.ended("DRAIN-1").await;
    assert!(
        restarted.elapsed() < Duration::from_secs(20),
        "not taken at once: {:?}",
        restarted.elapsed()
    );
    assert_eq!(t.state, State::Passed, "{t}");
    assert_eq!(t.runs, 2, "{t}");
    assert!(t.told("interrupted by shutdown"), "{t}");
    assert_eq!(
        std::fs::read_to_string(world.agent_dir.join("seen.txt")).unwrap(),
        "one\n",
        "the second run continued from the first run's work"
    );
    let log = git(
        &world.repo,
        &["log", "--format=%s", "master..auto/backend/DRAIN-1"],
    );
    assert_eq!(
        log.lines().count(),
        2,
        "the interrupted work, then the end: {log}"
    );
}
