//! `agent.sandbox: bwrap`: the same probing agent runs with and without the sandbox. Without
//! it, it can read autodev's environment through `/proc`, credential files and the database;
//! inside, none of these, while its own work, git and the gates still run.

use crate::support::{CLAUDE_OK, State, World, assert_holds, assert_lacks};

const TOKEN: &str = "ghp_sandboxProbeSecret42";
const API_TOKEN: &str = "sk-ant-key-from-a-file-7";

/// Whether bubblewrap can make a sandbox here; says the test was not run when it cannot. CI
/// installs bubblewrap (`.ci/run`); a machine without user namespaces cannot run it.
fn sandbox_here() -> bool {
    let works = bwrap_works();
    if !works {
        eprintln!("not run: bubblewrap cannot make a sandbox on this machine");
    }
    works
}

fn bwrap_works() -> bool {
    std::process::Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--unshare-pid", "--", "true"])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Probe {
    environ_hits: usize,
    ssh: String,
    token_file: String,
    data_dir: String,
    /// Exit codes of opening the task repository's git config for writing (appending
    /// nothing), and of moving its `.git` aside (and back).
    git_writes: (String, String),
}

async fn probe(sandbox: bool) -> Probe {
    let mut world = World::new();
    let ssh = world.home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("id_ed25519"), "PRIVATE KEY DATA\n").unwrap();
    let token_file = world.root.path().join("api-token.txt");
    std::fs::write(&token_file, API_TOKEN).unwrap();
    let out = world.agent_dir.display().to_string();
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c {TOKEN} > {out}/environ.txt\n\
             cat {ssh}/id_ed25519 > {out}/ssh.txt 2>&1\n\
             cat {token} > {out}/token.txt 2>&1\n\
             ls {data} > {out}/data.txt 2>&1\n\
             (: >> \"$(git rev-parse --git-common-dir)/config\") 2>/dev/null; echo $? > {out}/gitconfig.txt\n\
             (mv .git .git-moved && mv .git-moved .git) 2>/dev/null; echo $? > {out}/dotgit.txt\n\
             echo x > feature.txt\n\
             git add feature.txt\n\
             echo '{CLAUDE_OK}'",
            ssh = ssh.display(),
            token = token_file.display(),
            data = world.data.display(),
        ),
    );
    let mode = if sandbox { "bwrap" } else { "off" };
    std::fs::write(
        &world.config,
        format!(
            "providers:\n  order: [claude_cli]\nworkers: {{concurrency: 1, heartbeat_seconds: 1, missed_heartbeats: 2}}\nagent: {{sandbox: {mode}, sandbox_writable: [{out}], env: [FAKE_AGENT_DIR]}}\n"
        ),
    )
    .unwrap();
    world.extra_env.extend([
        ("GITHUB_TOKEN".to_owned(), TOKEN.to_owned()),
        (
            "ANTHROPIC_API_KEY_FILE".to_owned(),
            token_file.display().to_string(),
        ),
    ]);
    let server = world.serve();
    let task = server
        .run_to_end("SBX-1", "acceptance:\n  tests: [\"test -f feature.txt\"]\n")
        .await;
    assert_eq!(task.state, State::Passed, "sandbox {sandbox}: {task:#}");
    let read = |f: &str| std::fs::read_to_string(world.agent_dir.join(f)).unwrap_or_default();
    Probe {
        environ_hits: read("environ.txt").trim().parse().unwrap_or(0),
        ssh: read("ssh.txt"),
        token_file: read("token.txt"),
        data_dir: read("data.txt"),
        git_writes: (
            read("gitconfig.txt").trim().to_owned(),
            read("dotgit.txt").trim().to_owned(),
        ),
    }
}

#[tokio::test]
async fn a_sandboxed_agent_cannot_read_autodevs_environment_credentials_or_database() {
    if !sandbox_here() {
        return;
    }
    let open = probe(false).await;
    assert!(
        open.environ_hits > 0,
        "without a sandbox the token is readable in /proc (the reason for one)"
    );
    assert!(open.ssh.contains("PRIVATE KEY DATA"));
    assert!(open.token_file.contains(API_TOKEN));
    assert!(open.data_dir.contains("autodev.db"), "{}", open.data_dir);
    assert_eq!(
        open.git_writes,
        ("0".to_owned(), "0".to_owned()),
        "outside, the git config is writable and .git can be moved"
    );

    let boxed = probe(true).await;
    assert_eq!(
        boxed.environ_hits, 0,
        "autodev's processes are out of sight"
    );
    assert!(!boxed.ssh.contains("PRIVATE KEY DATA"), "{}", boxed.ssh);
    assert!(
        !boxed.token_file.contains(API_TOKEN),
        "{}",
        boxed.token_file
    );
    assert!(!boxed.data_dir.contains("autodev.db"), "{}", boxed.data_dir);
    assert_ne!(
        boxed.git_writes.0, "0",
        "inside, git config (filters run in autodev's own git) is read-only"
    );
    assert_ne!(
        boxed.git_writes.1, "0",
        "and .git cannot be moved aside and rebuilt"
    );
}

#[tokio::test]
async fn a_sandbox_that_cannot_run_stops_serve_unless_it_may_go_without() {
    // A PATH without bwrap on it.
    let start = |world: &World| {
        world
            .command(&["serve", "--bind", "127.0.0.1:0"])
            .env("PATH", world.bin.display().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let world = World::new();
    std::fs::write(
        &world.config,
        "providers:\n  order: [claude_cli]\nagent: {sandbox: bwrap}\n",
    )
    .unwrap();
    let out = start(&world).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`bwrap`, which is not on PATH"), "{err}");

    // The default, `auto`, in App mode: outsiders' words reach agents, so no sandbox, no start.
    let mut app = crate::webhooks::app_world();
    app.sandbox = "auto";
    app.write_config("providers:\n  order: [claude_cli]\n");
    let out = start(&app).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("App mode runs agents on outsiders' words") && err.contains("sandbox: off"),
        "{err}"
    );

    // In local mode it starts, and says what it lacks.
    let mut local = World::new();
    local.sandbox = "auto";
    local.write_config("providers:\n  order: [claude_cli]\n");
    let mut child = start(&local);
    let stderr = child.stderr.take().unwrap();
    let warned = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("listening on"))
            .any(|l| l.contains("agents run without a sandbox"))
    });
    let warned = warned.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "local mode warns when it goes without a sandbox");
}

#[tokio::test]
async fn an_agent_installed_in_home_does_not_uncover_homes_secrets() {
    if !sandbox_here() {
        return;
    }
    let world = World::new();
    let ssh = world.home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("id_ed25519"), "PRIVATE KEY DATA\n").unwrap();
    // The agent's program sits in HOME itself, so its directory is HOME.
    let out = world.agent_dir.display().to_string();
    let program = world.home.join("claude");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\ncat >/dev/null\ncat {ssh}/id_ed25519 > {out}/ssh.txt 2>&1\necho x > feature.txt\necho '{CLAUDE_OK}'\n",
            ssh = ssh.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        &world.config,
        format!(
            "providers:\n  order: [claude_cli]\n  claude_cli: {{mode: cli, binary: {program}}}\nworkers: {{concurrency: 1, heartbeat_seconds: 1, missed_heartbeats: 2}}\nagent: {{sandbox: bwrap, sandbox_writable: [{out}]}}\n",
            program = program.display()
        ),
    )
    .unwrap();
    let server = world.serve();
    let task = server.run_to_end("SBX-HOME", "").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    let read = std::fs::read_to_string(world.agent_dir.join("ssh.txt")).unwrap_or_default();
    assert!(!read.contains("PRIVATE KEY DATA"), "{read}");
}

#[tokio::test]
async fn the_tool_loops_commands_run_in_the_sandbox() {
    if !sandbox_here() {
        return;
    }
    use crate::fake_models::{FakeModels, Turn};
    const KEY: &str = "sk-test-sandboxed";
    let fake = FakeModels::start(
        KEY,
        vec![
            Turn::Tools(vec![(
                "run_command",
                serde_json::json!({"command": "echo made > made.txt; cat /proc/1/cmdline | tr '\\0' ' '"}),
            )]),
            Turn::Done("Made it."),
        ],
    )
    .await;
    let mut world = World::new();
    std::fs::write(
        &world.config,
        "providers:\n  order: [anthropic_api]\n  anthropic_api: {mode: api}\nworkers: {concurrency: 1, heartbeat_seconds: 1, missed_heartbeats: 2}\nagent: {sandbox: bwrap}\n",
    )
    .unwrap();
    world.extra_env.extend([
        ("ANTHROPIC_API_KEY".to_owned(), KEY.to_owned()),
        ("ANTHROPIC_BASE_URL".to_owned(), fake.url.clone()),
    ]);
    let server = world.serve();
    let task = server
        .run_to_end(
            "SBX-API",
            "acceptance:\n  tests: [\"grep -qx made made.txt\"]\n",
        )
        .await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    // The command's own PID namespace: its first process is the sandbox's, not the host's init.
    let requests = fake.requests();
    let result = requests[1].1["messages"].to_string();
    assert!(result.contains("bwrap"), "{result}");
}

/// A plain HTTP server on 127.0.0.1 that answers every request with `body`.
async fn http_server(body: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn agents_reach_their_providers_hosts_and_nothing_else() {
    if !bwrap_works() || crate::support::which("curl").is_none() {
        eprintln!("not run: needs bubblewrap able to make a sandbox, and curl");
        return;
    }
    let model = http_server("hello-from-the-model").await;
    let other = http_server("hello-from-another-service").await;
    let mut world = World::new();
    // The provider is pointed at the fake model, which puts it on the agent's allow-list.
    world.extra_env.push((
        "ANTHROPIC_BASE_URL".to_owned(),
        format!("http://127.0.0.1:{model}"),
    ));
    let server = world.serve();
    let api = server.url.rsplit(':').next().unwrap().to_owned();
    let out = world.agent_dir.display();
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             curl -sS -p http://127.0.0.1:{model}/ > {out}/model.txt 2>&1\n\
             curl -sS http://127.0.0.1:{model}/plain > {out}/model-plain.txt 2>&1\n\
             curl -sS http://127.0.0.1:{other}/plain > {out}/other-plain.txt 2>&1\n\
             curl -sS -p http://127.0.0.1:{other}/ > {out}/other.txt 2>&1\n\
             curl -sS -p http://127.0.0.1:{api}/healthz > {out}/api.txt 2>&1\n\
             curl -sS -p https://example.com/ > {out}/web.txt 2>&1\n\
             curl -sS --noproxy '*' http://127.0.0.1:{model}/ > {out}/direct.txt 2>&1\n\
             echo x > feature.txt\necho '{CLAUDE_OK}'"
        ),
    );
    let task = server.run_to_end("NET-1", "").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_holds(&world.left("model.txt"), "hello-from-the-model");
    assert_lacks(&world.left("other.txt"), "hello");
    // Plain HTTP through the proxy (absolute form), as clients send it for http:// URLs.
    assert_holds(&world.left("model-plain.txt"), "hello-from-the-model");
    assert_lacks(&world.left("other-plain.txt"), "hello");
    assert_lacks(&world.left("api.txt"), "ok");
    assert_lacks(&world.left("direct.txt"), "hello");
    let events = task.timeline();
    for host in [
        format!("127.0.0.1:{other}"),
        format!("127.0.0.1:{api}"),
        "example.com:443".to_owned(),
    ] {
        assert!(
            events.contains(&format!(
                "refused the agent's connection to {host}: not in agent.egress"
            )),
            "{host}: {events}"
        );
    }
}

#[tokio::test]
async fn planted_links_capabilities_and_host_sockets_do_not_open_the_sandbox() {
    if !sandbox_here() {
        return;
    }
    let world = World::new();
    let ssh = world.home.join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("id_ed25519"), "PRIVATE KEY DATA\n").unwrap();
    std::fs::create_dir_all(world.home.join(".claude")).unwrap();
    std::fs::write(
        world.home.join(".claude/.credentials.json"),
        r#"{"token":"OPERATOR-LOGIN"}"#,
    )
    .unwrap();
    // A host service's socket directory under /run.
    let run_marker = format!("/run/autodev-test-{}", std::process::id());
    std::fs::create_dir_all(&run_marker).unwrap();
    let out = world.agent_dir.display().to_string();
    let data = world.data.display().to_string();
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             gd=$(git rev-parse --path-format=absolute --git-common-dir)\n\
             mkdir -p \"$gd/worktrees/planted-a\" \"$gd/worktrees/planted-b\"\n\
             ln -s / \"$gd/worktrees/planted-a/gitdir\"\n\
             ln -s {ssh}/id_ed25519 \"$gd/worktrees/planted-b/commondir\"\n\
             grep CapEff /proc/self/status > {out}/caps.txt\n\
             ls /run > {out}/run.txt 2>&1\n\
             cat {home}/.claude/.credentials.json > {out}/operator-login.txt 2>&1\n\
             echo x > feature.txt\necho '{CLAUDE_OK}'",
            ssh = ssh.display(),
            home = world.home.display(),
        ),
    );
    let server = world.serve();
    // The gate runs after the links are planted: the next sandbox is made with them there.
    let gate = format!(
        "ls {data} > {out}/gate-data.txt 2>&1; cat {ssh}/id_ed25519 > {out}/gate-ssh.txt 2>&1; ls -A \"$HOME/..\" > {out}/gate-homes.txt 2>&1; true",
        ssh = ssh.display()
    );
    let task = server
        .run_to_end("SBX-LINK", &format!("acceptance:\n  tests: [{gate:?}]\n"))
        .await;
    let _ = std::fs::remove_dir_all(&run_marker);
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_lacks(&world.left("gate-data.txt"), "autodev.db");
    assert_lacks(&world.left("gate-ssh.txt"), "PRIVATE KEY");
    assert_holds(&world.left("caps.txt"), "0000000000000000");
    assert_lacks(&world.left("run.txt"), "autodev-test-");
    assert_lacks(&world.left("operator-login.txt"), "OPERATOR-LOGIN");
    let homes = world.left("gate-homes.txt");
    assert!(
        !homes.contains("egress") && !homes.contains("claude_cli"),
        "the gates see the agents' HOME or proxy: {homes}"
    );
}

#[tokio::test]
async fn an_agent_that_rebuilds_its_git_directory_runs_nothing_in_autodevs_git() {
    if !sandbox_here() {
        return;
    }
    let world = World::new();
    // Outside the sandbox's writable paths: only a process outside it can make this file.
    let pwned = world.root.path().join("pwned");
    let filter = format!(
        "[filter \"x\"]\n\tclean = touch {} && cat\n\tsmudge = cat\n",
        pwned.display()
    );
    std::fs::write(world.agent_dir.join("filter.cfg"), filter).unwrap();
    // Every way into what autodev's own git reads: a git directory moved aside and rebuilt
    // with a `commondir` of the agent's own, that pointer written in place, the config and
    // hooks written directly, and an attribute that asks for the filter.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             gd=$(git rev-parse --absolute-git-dir)\n\
             cd=$(git rev-parse --path-format=absolute --git-common-dir)\n\
             evil=\"$PWD/evil-common\"; cp -r \"$cd\" \"$evil\"\n\
             cat {out}/filter.cfg >> \"$evil/config\"\n\
             cat {out}/filter.cfg >> \"$cd/config\" 2>/dev/null\n\
             printf '#!/bin/sh\\ntouch {pwned}\\n' > \"$cd/hooks/pre-commit\" 2>/dev/null; chmod +x \"$cd/hooks/pre-commit\" 2>/dev/null\n\
             (mv \"$gd\" \"$gd.old\" && cp -r \"$gd.old\" \"$gd\") 2>/dev/null\n\
             echo \"$evil\" > \"$gd/commondir\" 2>/dev/null\n\
             echo '* filter=x' > .gitattributes\n\
             echo x > feature.txt\n\
             echo '{CLAUDE_OK}'",
            pwned = pwned.display(),
            out = world.agent_dir.display(),
        ),
    );
    let server = world.serve();
    let task = server.run_to_end("SBX-GITDIR", "").await;
    assert!(
        !pwned.exists(),
        "a filter, hook or config the agent planted ran outside the sandbox: {task:#}"
    );
    assert_eq!(task.state, State::Passed, "{task:#}");
    let tree = std::process::Command::new("git")
        .args(["-C", &world.repo.display().to_string()])
        .args(["show", "auto/backend/SBX-GITDIR:feature.txt"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&tree.stdout), "x\n");
}

#[tokio::test]
async fn an_agent_moves_none_of_the_users_branches_and_reaches_no_other_tasks_work() {
    if !sandbox_here() {
        return;
    }
    use crate::support::git;
    let world = World::new();
    let master = git(&world.repo, &["rev-parse", "master"]);
    let other = world.data.join("worktrees/local/SBX-FIRST");
    // The first task leaves its worktree; the second tries everything a git can write.
    world.agent(
        "claude",
        &format!(
            "prompt=$(cat)\n\
             case \"$prompt\" in\n\
             *SBX-FIRST*) echo first > feature.txt ;;\n\
             *) repo={repo}\n\
               echo evil > evil.txt; git add evil.txt; git commit -qm evil\n\
               evil=$(git rev-parse HEAD)\n\
               git -C \"$repo\" update-ref refs/heads/master \"$evil\" 2>/dev/null\n\
               git -C \"$repo\" update-ref refs/heads/planted \"$evil\" 2>/dev/null\n\
               git -C \"$repo\" replace {master} \"$evil\" 2>/dev/null\n\
               git replace {master} \"$evil\" 2>/dev/null\n\
               git update-ref refs/heads/master \"$evil\"\n\
               echo pwn > {other}/feature.txt 2>/dev/null\n\
               git reset -q --hard HEAD~1; git update-ref -d refs/heads/master\n\
               echo second > feature.txt ;;\n\
             esac\n\
             echo '{CLAUDE_OK}'",
            repo = world.repo.display(),
            other = other.display(),
        ),
    );
    let server = world.serve();
    let first = server.run_to_end("SBX-FIRST", "").await;
    assert_eq!(first.state, State::Passed, "{first:#}");
    let second = server.run_to_end("SBX-SECOND", "").await;
    assert_eq!(second.state, State::Passed, "{second:#}");
    assert_eq!(git(&world.repo, &["rev-parse", "master"]), master);
    let refs = git(&world.repo, &["for-each-ref", "--format=%(refname)"]);
    assert_lacks(&refs, "refs/heads/planted");
    assert_lacks(&refs, "refs/replace");
    assert_eq!(
        std::fs::read_to_string(other.join("feature.txt")).unwrap(),
        "first\n",
        "another task's worktree is out of reach"
    );
    // The branch is the agent's branch and files, read by autodev's own git.
    let log = git(
        &world.repo,
        &["log", "--format=%s", "master..auto/backend/SBX-SECOND"],
    );
    assert_eq!(log.lines().count(), 1, "{log}");
    assert_eq!(
        git(
            &world.repo,
            &["show", "auto/backend/SBX-SECOND:feature.txt"]
        ),
        "second"
    );
}

#[tokio::test]
async fn links_in_the_task_repository_bring_no_other_repositorys_history_out() {
    if !sandbox_here() {
        return;
    }
    use crate::support::git;
    let world = World::new();
    // The agent knows a commit of it (a name is not a secret; what it holds is), and links
    // the store that has it into its own repository.
    let (s, secret_sha) = secret_repo(&world);
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             echo x > feature.txt\n\
             ref=.git/refs/heads/auto/backend/SBX-LINK\n\
             echo {secret_sha} > \"$ref\"\n\
             rm -rf .git/objects/pack; ln -s {s}/objects/pack .git/objects/pack\n\
             echo '{CLAUDE_OK}'",
            s = s.display(),
        ),
    );
    let server = world.serve();
    let task = server.run_to_end("SBX-LINK", "").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_no_secret(&world, &secret_sha);
    assert_eq!(
        git(&world.repo, &["show", "auto/backend/SBX-LINK:feature.txt"]),
        "x"
    );
    assert_holds(&task.to_string(), "is a link or a special file");
}

/// Another repository, out of the sandbox's sight (under the data directory), packed: its git
/// directory and its commit.
fn secret_repo(world: &World) -> (std::path::PathBuf, String) {
    use crate::support::git;
    let secret = world.data.join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    git(&secret, &["init", "-q", "-b", "main"]);
    std::fs::write(secret.join("plans.txt"), "TOP SECRET\n").unwrap();
    git(&secret, &["add", "."]);
    git(
        &secret,
        &[
            "-c",
            "user.name=s",
            "-c",
            "user.email=s@s",
            "commit",
            "-qm",
            "secret",
        ],
    );
    git(&secret, &["gc", "-q"]);
    let sha = git(&secret, &["rev-parse", "main"]);
    (secret.join(".git"), sha)
}

/// The secret commit is nowhere in the user's repository: not as an object, not named by any
/// tree (a submodule entry) of any ref.
#[track_caller]
fn assert_no_secret(world: &World, secret_sha: &str) {
    use crate::support::git;
    let found = std::process::Command::new("git")
        .args(["-C", &world.repo.display().to_string()])
        .args(["cat-file", "-e", secret_sha])
        .status()
        .unwrap();
    assert!(!found.success(), "the other repository's commit came out");
    for r in git(&world.repo, &["for-each-ref", "--format=%(objectname)"]).lines() {
        assert_lacks(&git(&world.repo, &["ls-tree", "-r", r]), secret_sha);
    }
}

#[tokio::test]
async fn a_git_file_in_the_task_repository_leads_autodevs_fetch_nowhere() {
    if !sandbox_here() {
        return;
    }
    let world = World::new();
    let (s, secret_sha) = secret_repo(&world);
    // A repository of the agent's own, borrowing the other store, named by `.git/.git`: a
    // non-strict upload-pack would serve it instead of the task's.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             echo x > feature.txt\n\
             git init -q --bare evil.git\n\
             echo {s}/objects > evil.git/objects/info/alternates\n\
             mkdir -p evil.git/refs/heads/auto/backend\n\
             echo {secret_sha} > evil.git/refs/heads/auto/backend/SBX-GITFILE\n\
             printf 'gitdir: %s/evil.git\\n' \"$PWD\" > .git/.git\n\
             echo '{CLAUDE_OK}'",
            s = s.display(),
        ),
    );
    let server = world.serve();
    let task = server.run_to_end("SBX-GITFILE", "").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_no_secret(&world, &secret_sha);
    assert_holds(&task.to_string(), "names another repository");
}

#[tokio::test]
async fn a_deleted_head_does_not_open_the_task_repository_to_the_next_job() {
    if !sandbox_here() {
        return;
    }
    let world = World::new();
    let (s, secret_sha) = secret_repo(&world);
    let out = world.agent_dir.display();
    // Round 1 deletes HEAD (the job after it once saw no git directory there and left its
    // parts writable); the gate, the next job, lists the other store as borrowed and fails;
    // round 2 reads from it.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             if [ -f round1 ]; then\n\
               git cat-file -p {secret_sha}:plans.txt > {out}/leak.txt 2>&1\n\
               ls {s}/objects/pack > {out}/packs.txt 2>&1\n\
               echo done > done.txt\n\
             else\n\
               touch round1; echo x > feature.txt; rm -f .git/HEAD\n\
             fi\n\
             echo '{CLAUDE_OK}'",
            s = s.display(),
        ),
    );
    let gate = format!(
        "printf '%s\\n' {s}/objects >> .git/objects/info/alternates; echo 'ref: refs/heads/auto/backend/SBX-HEAD' > .git/HEAD; test -f done.txt",
        s = s.display()
    );
    let server = world.serve();
    let task = server
        .run_to_end(
            "SBX-HEAD",
            &format!("acceptance:\n  tests: [{}]\n", serde_json::json!(gate)),
        )
        .await;
    assert_eq!(task.rounds, 2, "{task:#}");
    assert_lacks(&world.left("leak.txt"), "TOP SECRET");
    assert_lacks(&world.left("packs.txt"), ".pack");
    assert_no_secret(&world, &secret_sha);
}

#[tokio::test]
async fn the_checkpointer_reads_a_tasks_files_from_inside_its_sandbox() {
    if !sandbox_here() {
        return;
    }
    let world = World::new();
    let (s, secret_sha) = secret_repo(&world);
    // A nested repository whose `.git` file names the hidden one: a git reading the files
    // from outside the sandbox records its commit; from inside, there is nothing there.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             mkdir sub; printf 'gitdir: {s}\\n' > sub/.git; echo x > feature.txt\n\
             sleep 4\n\
             rm -rf sub\n\
             echo '{CLAUDE_OK}'",
            s = s.display(),
        ),
    );
    world
        .write_config("providers:\n  order: [claude_cli]\nhygiene: {checkpoint_minutes: \"1s\"}\n");
    let server = world.serve();
    let task = server.run_to_end("SBX-CKPT", "").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_holds(&task.to_string(), "checkpoint");
    assert_no_secret(&world, &secret_sha);
}

#[tokio::test]
async fn an_agent_that_sets_its_branch_back_keeps_the_start_and_its_files_show_the_change() {
    use crate::support::git;
    let world = World::new();
    // The base changed a workflow; the agent sets its branch back before that, where the
    // workflow is the old one, so that its own commits seem to change nothing there.
    let workflows = world.repo.join(".github/workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(workflows.join("ci.yml"), "on: push # old\n").unwrap();
    git(&world.repo, &["add", "."]);
    git(&world.repo, &["commit", "-qm", "old workflow"]);
    std::fs::write(workflows.join("ci.yml"), "on: pull_request # fixed\n").unwrap();
    git(&world.repo, &["commit", "-qam", "fixed workflow"]);
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             git reset -q --hard HEAD~1\n\
             echo x > feature.txt; git add feature.txt; git commit -qm feature\n\
             echo '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    let task = server.run_to_end("BACK-1", "").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_holds(&task.to_string(), "no longer contains");
    let branch = "auto/backend/BACK-1";
    git(
        &world.repo,
        &["merge-base", "--is-ancestor", "master", branch],
    );
    // What the workflow guard compares: the old workflow is a change on this branch.
    assert_eq!(
        git(&world.repo, &["diff", "--name-only", "master", branch]),
        ".github/workflows/ci.yml\nfeature.txt"
    );
}

#[tokio::test]
async fn a_tree_of_millions_of_paths_on_the_agents_branch_is_not_read() {
    use crate::support::git;
    let world = World::new();
    // Six levels of sixteen names for one tree each: 16^6 paths from seven tree objects.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             t=$(printf 'x' | git hash-object -w --stdin)\n\
             kind=blob\n\
             for level in 1 2 3 4 5 6; do\n\
               t=$(for i in 0 1 2 3 4 5 6 7 8 9 a b c d e f; do printf '%s %s %s\\t%s\\n' $([ $kind = blob ] && echo 100644 || echo 040000) $kind $t n$i; done | git mktree)\n\
               kind=tree\n\
             done\n\
             c=$(echo bomb | git commit-tree $t -p HEAD)\n\
             git update-ref refs/heads/auto/backend/BOMB-1 $c\n\
             echo x > feature.txt\n\
             echo '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve();
    let task = server.run_to_end("BOMB-1", "").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_holds(&task.to_string(), "changes more than 1000000 paths");
    assert_eq!(
        git(&world.repo, &["show", "auto/backend/BOMB-1:feature.txt"]),
        "x"
    );
}

#[tokio::test]
async fn a_named_pipe_where_git_reads_holds_the_task_only_for_the_read_timeout() {
    let world = World::new();
    // A nested repository whose HEAD is a pipe nobody writes: git waits on it for ever.
    world.agent(
        "claude",
        &format!(
            "cat >/dev/null\n\
             mkdir -p sub/.git/objects sub/.git/refs; mkfifo sub/.git/HEAD; echo x > feature.txt\n\
             echo '{CLAUDE_OK}'"
        ),
    );
    std::fs::write(
        &world.config,
        format!(
            "providers:\n  order: [claude_cli]\nworkers: {{concurrency: 1, heartbeat_seconds: 1, missed_heartbeats: 2}}\nagent: {{sandbox: {}, read_timeout: 2s}}\n",
            world.sandbox
        ),
    )
    .unwrap();
    let server = world.serve();
    let task = server.run_to_end("FIFO-1", "").await;
    assert_eq!(task.state, State::Error, "{task:#}");
    assert_holds(&task.to_string(), "still running after 2s");
}
