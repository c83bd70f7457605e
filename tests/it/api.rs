//! The HTTP contract: submit as YAML and JSON, errors, auth, listing, metrics.

use serde_json::json;

use crate::support::{State, World, git, spec};

#[tokio::test]
async fn yaml_and_json_specs_run_to_passed_on_their_branches() {
    let world = World::new();
    world.simple_claude("feature.txt", "hello");
    let server = world.serve();

    let (status, body) = server
        .post_spec(
            "application/yaml",
            &spec("TSK-1", "acceptance:\n  tests: [\"test -f feature.txt\"]\n"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["task_id"], "TSK-1");
    assert!(body["job_id"].as_str().is_some_and(|j| !j.is_empty()));

    let json_spec = json!({
        "id": "TSK-2", "title": "Add JSON thing", "description": "d", "role": "backend",
        "target_dir": "svc", "acceptance": {"tests": ["test -f feature.txt"]},
    });
    let (status, body) = server
        .post_spec("application/json", &json_spec.to_string())
        .await;
    assert_eq!(status, 201, "{body}");

    let one = server.wait_for("TSK-1", &[State::Passed]).await;
    let two = server.wait_for("TSK-2", &[State::Passed]).await;
    assert_eq!(one.branch, "auto/backend/TSK-1");
    assert_eq!(one.repo, "local");
    assert_eq!(one.base_branch.as_deref(), Some("master"));
    assert_eq!(one.provider.as_deref(), Some("claude_cli"));
    assert!(one.last_error.is_none());
    assert!(!one.created_at.is_empty() && one.finished_at.is_some());
    assert_eq!(one.gates[0].gate, "tests[0]");
    assert_eq!(one.gates[0].status, "passed");

    // The work is committed on the task branch with a conventional message and trailer.
    let log = git(
        &world.repo,
        &["log", "--format=%s%n%b", "master..auto/backend/TSK-1"],
    );
    assert!(log.starts_with("feat(backend): Add a feature"), "{log}");
    assert!(log.contains("Autodev-Task: TSK-1"), "{log}");
    let file = git(&world.repo, &["show", "auto/backend/TSK-1:feature.txt"]);
    assert_eq!(file, "hello");
    // target_dir was created, and the agent worked inside it.
    assert_eq!(two.head_sha.as_deref().map(str::len), Some(40));
    let file = git(&world.repo, &["show", "auto/backend/TSK-2:svc/feature.txt"]);
    assert_eq!(file, "hello");
    // The worktrees live in the data directory, not in the repository.
    assert!(
        one.worktree
            .as_deref()
            .unwrap()
            .starts_with(world.data.to_str().unwrap())
    );
    assert_eq!(git(&world.repo, &["status", "--porcelain"]), "");

    let (_, list) = server.get("/tasks").await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["TSK-2", "TSK-1"], "newest first");

    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"autodev_tasks_total{role="backend",status="passed"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"autodev_provider_requests_total{provider="claude_cli",status="success"} 2"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"autodev_git_operations_total{operation="worktree_add"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"autodev_git_operations_total{operation="commit"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("autodev_active_worktrees 2"), "{metrics}");
    assert!(metrics.contains("autodev_queue_size 0"), "{metrics}");
    assert!(
        metrics
            .contains(r#"autodev_task_duration_seconds_count{outcome="passed",role="backend"} 2"#),
        "{metrics}"
    );
    let build = format!(
        "autodev_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.contains(&build), "{metrics}");
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let world = World::new();
    world.agent("claude", "sleep 30");
    let server = world.serve();

    let (status, _) = server
        .post_spec("application/yaml", &spec("DUP-1", ""))
        .await;
    assert_eq!(status, 201);
    let (status, body) = server
        .post_spec("application/yaml", &spec("DUP-1", ""))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("already exists"));

    let (status, body) = server.get("/tasks/NOPE-9").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("NOPE-9"));

    let bad = "id: X-1\ntitle: t\ndescription: [unclosed\nrole: backend\n";
    let (status, body) = server.post_spec("text/yaml", bad).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["line"].as_u64().is_some() && body["column"].as_u64().is_some(),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains("line"), "{body}");

    let (status, body) = server
        .post_spec("application/json", "{\"id\": \"X\",}")
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["line"], 1, "{body}");

    let (status, body) = server
        .post_spec("application/yaml", &spec("ESC-1", "target_dir: ../x\n"))
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["problems"][0]["field"], "target_dir", "{body}");
    let (status, body) = server
        .post_spec("application/yaml", &spec("ESC-2", "target_dir: /etc\n"))
        .await;
    assert_eq!(status, 422, "{body}");

    let (status, body) = server
        .post_spec(
            "application/yaml",
            &spec("TYPO-1", "acceptence: {lint: true}\n"),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("did you mean `acceptance`"),
        "{body}"
    );

    let (status, body) = server
        .post_spec(
            "application/yaml",
            "id: R-1\ntitle: t\ndescription: d\nrole: astronaut\n",
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("known roles: backend"),
        "{body}"
    );

    let (status, _) = server.post_spec("text/plain", &spec("CT-1", "")).await;
    assert_eq!(status, 415);

    // Nothing invalid was stored.
    let (_, list) = server.get("/tasks").await;
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Retry while running → 409; cancel an ended task → 409.
    server.wait_for("DUP-1", &[State::Running]).await;
    let (status, _) = server.post("/tasks/DUP-1/retry").await;
    assert_eq!(status, 409);
    let (status, _) = server.post("/tasks/DUP-1/cancel").await;
    assert_eq!(status, 202);
    server.wait_for("DUP-1", &[State::Cancelled]).await;
    let (status, body) = server.post("/tasks/DUP-1/cancel").await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = server.post("/tasks/NOPE/cancel").await;
    assert_eq!(status, 404);
    let (status, _) = server.get("/repos/acme/web/tasks/DUP-1").await;
    assert_eq!(status, 404, "a local task is not in acme/web");

    let (status, health) = server.get("/healthz").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn api_token_guards_every_task_route() {
    let mut world = World::new();
    world.simple_claude("f.txt", "x");
    world
        .extra_env
        .push(("AUTODEV_API_TOKEN".into(), "tok-123".into()));
    let server = world.serve();
    let url = &server.url;
    let anon = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/tasks"),
        ("GET", "/tasks/A"),
        ("POST", "/tasks"),
        ("POST", "/tasks/A/cancel"),
    ] {
        let rb = if method == "GET" {
            anon.get(format!("{url}{path}"))
        } else {
            anon.post(format!("{url}{path}"))
        };
        let resp = rb.bearer_auth("wrong").send().await.unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
    }
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(
        anon.get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, _) = server.get("/tasks").await;
    assert_eq!(status, 200, "the right token is accepted");
}

#[tokio::test]
async fn serve_refuses_a_public_bind_without_a_token() {
    let world = World::new();
    let out = world
        .command(&["serve", "--bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTODEV_API_TOKEN"));
}

/// The human page of a task: HTML, escaped, with gates and timeline.
async fn page(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn a_task_page_shows_the_run_to_people_and_needs_its_signed_link_when_guarded() {
    let mut world = World::new();
    world.simple_claude("f.txt", "x");
    world.extra_env.extend([
        ("AUTODEV_API_TOKEN".to_owned(), "tok-123".to_owned()),
        (
            "AUTODEV_PUBLIC_URL".to_owned(),
            "https://autodev.example.com".to_owned(),
        ),
    ]);
    let server = world.serve();
    let text = "id: PG-1\ntitle: \"Fix <script>alert(1)</script> & more\"\ndescription: Write it.\nrole: backend\nacceptance:\n  tests: [\"test -f f.txt\"]\n";
    let (status, _) = server.post_spec("application/yaml", text).await;
    assert_eq!(status, 201);
    let task = server.ended("PG-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    let link = task.page.as_deref().expect("a page link").to_owned();
    let path = link
        .strip_prefix("https://autodev.example.com")
        .expect("on the public URL");
    assert!(path.starts_with("/view/tasks/PG-1?sig="), "{path}");

    let (status, html) = page(&format!("{}{path}", server.url)).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("Fix &#60;script&#62;alert(1)&#60;/script&#62; &#38; more"),
        "escaped: {html}"
    );
    assert!(!html.contains("<script>alert"));
    assert!(
        html.contains("passed") && html.contains("auto/backend/PG-1"),
        "{html}"
    );
    assert!(html.contains("test -f f.txt"), "the gate: {html}");
    assert!(
        !html.contains("http-equiv=\"refresh\""),
        "an ended task's page stays still"
    );

    let bare = format!("{}/view/tasks/PG-1", server.url);
    assert_eq!(page(&bare).await.0, 401, "no signature");
    assert_eq!(
        page(&format!("{bare}?sig=00112233445566778899aabbccddeeff"))
            .await
            .0,
        401
    );
    let other = path.replace("PG-1", "PG-2");
    assert_eq!(
        page(&format!("{}{other}", server.url)).await.0,
        401,
        "a signature opens its own task only"
    );

    let out = world.command(&["status", "PG-1"]);
    let mut cmd = tokio::process::Command::from(out);
    cmd.env("AUTODEV_URL", &server.url);
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("page:    {link}")), "{stdout}");
}

/// Many submissions at once, some for the same id and some invalid, go through one writer:
/// each id is taken once (the rest get 409), an invalid spec gets 422 without failing the
/// others, and every task accepted has its job and its first event, nothing more.
#[tokio::test]
async fn submissions_at_once_are_each_written_whole_or_refused_alone() {
    let world = World::new();
    let server = std::sync::Arc::new(world.serve_with(&["--workers", "0"]));
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(120));
    let mut asked = Vec::new();
    for i in 0..120 {
        let (server, barrier) = (server.clone(), barrier.clone());
        asked.push(tokio::spawn(async move {
            // Ids 0..100 once, then 10 again; ten specs without a role.
            let body = match i {
                0..100 => spec(&format!("many-{i}"), ""),
                100..110 => spec(&format!("many-{}", i - 100), ""),
                _ => format!("id: bad-{i}\ntitle: t\ndescription: d\n"),
            };
            barrier.wait().await;
            let (status, answer) = server.post_spec("application/yaml", &body).await;
            (i, status, answer)
        }));
    }
    let mut created = std::collections::BTreeSet::new();
    let mut conflicts = 0;
    for a in asked {
        let (i, status, answer) = a.await.unwrap();
        match status {
            201 => assert!(created.insert(answer["task_id"].as_str().unwrap().to_owned())),
            409 => conflicts += 1,
            422 => assert!(i >= 110, "{i}: {answer}"),
            other => panic!("{i}: {other} {answer}"),
        }
    }
    assert_eq!(created.len(), 100);
    assert_eq!(conflicts, 10);
    let pool = world.db().await;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT COUNT(*) FROM tasks").await, 100);
    assert_eq!(
        count("SELECT COUNT(*) FROM Jobs WHERE job_type = 'autodev.tasks'").await,
        100
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM task_events WHERE kind = 'queued'").await,
        100
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM tasks t WHERE NOT EXISTS (SELECT 1 FROM Jobs j WHERE j.id = t.job_id)").await,
        0,
        "every task names its job"
    );
}
