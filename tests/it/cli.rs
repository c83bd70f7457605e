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
    // `roles_dir` is relative to the configuration file (here in the same directory).
    let mut config = std::fs::read_to_string(&world.config).unwrap();
    config.push_str("roles_dir: roles\n");
    std::fs::write(&world.config, config).unwrap();
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

/// `autodev` started in `dir` with no configuration named: only `extra` set besides HOME and
/// the data directory.
fn bare_command(
    world: &World,
    dir: &std::path::Path,
    args: &[&str],
    extra: &[(&str, String)],
) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_autodev"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &world.home)
        .env("AUTODEV_DATA_DIR", &world.data)
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

#[test]
fn a_repositorys_own_config_and_roles_are_not_autodevs() {
    let world = World::new();
    // The repository autodev works in has a configuration and roles of its own.
    std::fs::create_dir_all(world.repo.join("config")).unwrap();
    std::fs::write(
        world.repo.join("config/config.yaml"),
        "url: https://example.com\n",
    )
    .unwrap();
    std::fs::create_dir_all(world.repo.join("roles")).unwrap();
    std::fs::write(
        world.repo.join("roles/planted.yaml"),
        "name: planted\nprompt: Do as the file says.\n",
    )
    .unwrap();
    let out = bare_command(&world, &world.repo, &["roles"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("planted"), "{stdout}");
    // The shipped roles are in the binary, wherever it runs.
    for role in ["backend", "data_analyst", "sre"] {
        assert!(stdout.contains(role), "{stdout}");
    }
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("specs/da_example.yaml");
    let out = bare_command(
        &world,
        world.root.path(),
        &["validate", spec.to_str().unwrap()],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // autodev's own file: $XDG_CONFIG_HOME/autodev/config.yaml, its roles_dir relative to it.
    let xdg = world.root.path().join("xdg");
    std::fs::create_dir_all(xdg.join("autodev/my-roles")).unwrap();
    std::fs::write(
        xdg.join("autodev/config.yaml"),
        "roles_dir: my-roles\nproviders:\n  order: [claude_cli]\n",
    )
    .unwrap();
    std::fs::write(
        xdg.join("autodev/my-roles/reviewer.yaml"),
        "name: reviewer\nprompt: Review the change.\n",
    )
    .unwrap();
    let with_xdg = [("XDG_CONFIG_HOME", xdg.display().to_string())];
    let out = bare_command(&world, &world.repo, &["roles"], &with_xdg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("reviewer") && !stdout.contains("planted"),
        "{stdout}"
    );
}

#[test]
fn config_check_shows_each_value_with_its_source_and_no_secret() {
    let world = World::new();
    let mut config = std::fs::read_to_string(&world.config).unwrap();
    config.push_str("hygiene: {checkpoint_minutes: 45}\n");
    std::fs::write(&world.config, config).unwrap();
    let out = world
        .command(&["config", "check"])
        .env("AUTODEV_API_TOKEN", "tok-very-secret")
        .env("GITHUB_TOKEN", "ghp_also_secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("tok-very-secret") && !stdout.contains("ghp_also_secret"),
        "{stdout}"
    );
    assert!(
        stdout.contains("api_token: \"<set, not shown>\"  # env AUTODEV_API_TOKEN"),
        "{stdout}"
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
            .to_owned()
    };
    assert!(
        line("checkpoint_minutes").contains("\"45m\"  # file "),
        "{stdout}"
    );
    assert!(line("rebase_minutes").ends_with("# default"), "{stdout}");
    assert!(
        line("data_dir").ends_with("# env AUTODEV_DATA_DIR"),
        "{stdout}"
    );
    // What it prints is a configuration autodev reads back.
    let yaml: String = stdout
        .lines()
        .skip_while(|l| !l.starts_with("providers:"))
        .map(|l| format!("{l}\n"))
        .collect();
    autodev::config::FileConfig::from_yaml(&yaml, std::path::Path::new("check.yaml"))
        .expect("config check's output reads back");
}

#[tokio::test]
async fn list_cancel_and_retry_talk_to_the_server() {
    let world = World::new();
    let server = world.serve_with(&["--workers", "0"]);
    for id in ["LST-1", "LST-2"] {
        let (status, body) = server.post_spec("application/yaml", &spec(id, "")).await;
        assert_eq!(status, 201, "{body}");
    }
    let run = |args: &[&str]| {
        let mut cmd = world.command(args);
        cmd.env("AUTODEV_URL", &server.url);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, stdout) = run(&["list"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("LST-1") && stdout.contains("LST-2") && stdout.contains("queued"),
        "{stdout}"
    );
    let (code, stdout) = run(&["cancel", "LST-1"]);
    assert_eq!((code, stdout.trim()), (Some(0), "LST-1: cancelled"));
    let (_, stdout) = run(&["list", "--state", "cancelled"]);
    assert!(
        stdout.contains("LST-1") && !stdout.contains("LST-2"),
        "{stdout}"
    );
    let (_, stdout) = run(&["list", "--repo", "octo/web"]);
    assert_eq!(stdout.trim(), "no tasks");
    let (code, stdout) = run(&["retry", "LST-1"]);
    assert_eq!((code, stdout.trim()), (Some(0), "LST-1: queued"));
    let (code, _) = run(&["status", "LST-1", "--repo", "octo/web"]);
    assert_eq!(code, Some(1), "not a task of that repository");
    let (code, _) = run(&["status", "LST-1", "--repo", "not-a-repo"]);
    assert_eq!(code, Some(2), "a bad --repo is a usage error");
}

#[test]
fn validate_checks_the_provider_asked_for_and_providers_fails_when_none_can_run() {
    let world = World::new();
    world.write_config(
        "providers:\n  order: [claude_cli]\n  claude_cli: {binary: /nonexistent/claude}\n",
    );
    let path = world.write_spec("t.yaml", &spec("VAL-1", "provider_override: nope_cli\n"));
    let out = world
        .command(&["validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("provider_override") && stdout.contains("not configured"),
        "{stdout}"
    );
    let out = world.command(&["providers"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no provider can run here"));
}

#[test]
fn run_says_each_step_once_and_colours_nothing_it_does_not_print_to_a_terminal() {
    let world = World::new();
    world.simple_claude("feature.txt", "hi");
    let path = world.write_spec("task.yaml", &spec("ONCE-1", ""));
    let out = world
        .command(&["run", path.to_str().unwrap()])
        .env_remove("AUTODEV_LOG")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches("[passed]").count(), 1, "{stdout}");
    // The steps are on standard output; the log repeats none of them.
    assert!(!stderr.contains("committed"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stdout.contains('\u{1b}'),
        "no colour: {stderr}"
    );
}

#[test]
fn the_example_specs_come_with_the_binary_and_validate() {
    let world = World::new();
    let out = world.command(&["example"]).output().unwrap();
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && list.contains("sample_task"),
        "{list}"
    );
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let out = world.command(&["example", name]).output().unwrap();
        assert!(out.status.success(), "{name}");
        let path = world.write_spec(
            &format!("{name}.yaml"),
            &String::from_utf8_lossy(&out.stdout),
        );
        let out = world
            .command(&["validate", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = world.command(&["example", "nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn every_command_explains_itself_with_an_example() {
    let world = World::new();
    let out = world.command(&["--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 15, "{help}");
    for command in commands {
        let mut args = vec![command];
        if command == "config" {
            args.push("check");
        }
        args.push("--help");
        let out = world.command(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example"),
            "`autodev {command} --help` shows no example:\n{text}"
        );
    }
}
