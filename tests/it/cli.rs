//! The command line: `run` in the foreground, `validate`, `submit` and `status`, `roles`.

use crate::support::{State, World, git, spec};

#[test]
fn run_prints_each_stage_and_exits_by_the_result() {
    let world = World::new();
    world.simple_claude("feature.txt", "hi");
    let path = world.write_spec(
        "task.yaml",
        &spec("CLI-1", "acceptance:\n  tests: [\"test -f feature.txt\"]\n"),
    );
    let out = world
        .command(&["run", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in [
        "[worktree]",
        "[agent]",
        "[provider] claude_cli: success",
        "[gate] gate `tests[0]`",
        "[commit]",
        "[passed]",
    ] {
        assert!(stdout.contains(stage), "missing {stage} in:\n{stdout}");
    }
    assert_eq!(
        git(&world.repo, &["show", "auto/backend/CLI-1:feature.txt"]),
        "hi"
    );

    // The same id again is refused, unless asked to run it again.
    let out = world
        .command(&["run", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rerun"));

    let failing = world.write_spec(
        "fail.yaml",
        &spec(
            "CLI-2",
            "max_rounds: 1\nacceptance:\n  tests: [\"false\"]\n",
        ),
    );
    let out = world
        .command(&["run", failing.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed"));
}

#[test]
fn validate_reports_each_file() {
    let world = World::new();
    let good = world.write_spec("good.yaml", &spec("V-1", ""));
    let bad = world.write_spec(
        "bad.json",
        "{\"id\": \"V 2\", \"title\": \"t\", \"description\": \"d\", \"role\": \"backend\"}",
    );
    let out = world
        .command(&["validate", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("branch auto/backend/V-1"));
    let out = world
        .command(&["validate", good.to_str().unwrap(), bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("`id`") && stdout.contains("whitespace"),
        "{stdout}"
    );
}

#[tokio::test]
async fn submit_and_status_talk_to_the_server() {
    let world = World::new();
    world.simple_claude("feature.txt", "hi");
    let server = world.serve();
    let path = world.write_spec("task.yaml", &spec("SUB-1", ""));
    let mut cmd = world.command(&["submit", path.to_str().unwrap()]);
    cmd.env("AUTODEV_URL", &server.url);
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued task SUB-1"));
    server.wait_for("SUB-1", &[State::Passed]).await;
    let mut cmd = world.command(&["status", "SUB-1"]);
    cmd.env("AUTODEV_URL", &server.url);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("state:   passed"), "{stdout}");
    assert!(stdout.contains("auto/backend/SUB-1"), "{stdout}");
    let mut cmd = world.command(&["status", "NOPE"]);
    cmd.env("AUTODEV_URL", &server.url);
    assert_eq!(cmd.output().unwrap().status.code(), Some(1));
}

#[test]
fn roles_lists_sources_and_help_answers() {
    let world = World::new();
    std::fs::create_dir_all(world.root.path().join("roles")).unwrap();
    std::fs::write(
        world.root.path().join("roles/sre.yaml"),
        "name: sre\nbranch_prefix: ops\nprompt: careful\n",
    )
    .unwrap();
    let out = world.command(&["roles"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("backend") && stdout.contains("built-in"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ops/<task_id>") && stdout.contains("roles/sre.yaml"),
        "{stdout}"
    );
    let out = world.command(&["run", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("foreground"));
}
