//! Crash recovery: a server killed with SIGKILL mid-task, restarted.

use std::time::Duration;

use crate::support::{CLAUDE_OK, World, alive, git, spec, wait_for_file};

#[tokio::test]
async fn a_killed_server_restarts_the_task_once_and_stops_the_old_agent() {
    let world = World::new();
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
    let task = server
        .wait_for(
            "CRASH-1",
            &["passed", "failed", "error", "cancelled"],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(task["state"], "passed", "{task:#}");
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
    let terminal: Vec<_> = task["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            ["passed", "failed", "error", "cancelled"].contains(&e["kind"].as_str().unwrap())
        })
        .collect();
    assert_eq!(terminal.len(), 1, "one terminal state: {task:#}");
}
