//! `POST /webhooks/github` with GitHub's own example payloads: signatures, dedup (also of
//! concurrent copies), installation records, and what is ignored.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::support::{Server, World};

pub const SECRET: &str = "webhook-secret-for-tests";

pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/webhooks/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A world in GitHub App mode (the private key is generated for the test, never stored).
/// Queued jobs other than maintenance chores (a process queues its reconciler at start).
const NON_CHORE_JOBS: &str = "SELECT COUNT(*) FROM Jobs WHERE job_type != 'autodev.hygiene'";

/// A fresh App private key at `<world root>/app.pem`; its path.
pub fn app_key(world: &World) -> std::path::PathBuf {
    let key = world.root.path().join("app.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-out", key.to_str().unwrap(), "2048"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl genrsa: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

pub fn app_world() -> World {
    let mut world = World::new();
    let key = app_key(&world);
    world.extra_env.extend([
        ("GITHUB_APP_ID".to_owned(), "4242".to_owned()),
        (
            "GITHUB_PRIVATE_KEY_PATH".to_owned(),
            key.display().to_string(),
        ),
        ("GITHUB_WEBHOOK_SECRET".to_owned(), SECRET.to_owned()),
        // Nothing listens here; tests that need GitHub start the fake and point at it.
        ("GITHUB_API_URL".to_owned(), "http://127.0.0.1:9".to_owned()),
    ]);
    world
}

/// Delivers `payload` and expects it accepted (202); autodev's answer.
async fn accepted(server: &Server, event: &str, delivery: &str, payload: &Value) -> Value {
    let (status, body) = deliver(server, event, delivery, payload).await;
    assert_eq!(status, 202, "{body}");
    body
}

pub async fn deliver(
    server: &Server,
    event: &str,
    delivery: &str,
    payload: &Value,
) -> (u16, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let sig = autodev::github::webhook::sign(SECRET.as_bytes(), &body);
    send(server, event, delivery, &body, Some(&sig)).await
}

pub async fn send(
    server: &Server,
    event: &str,
    delivery: &str,
    body: &[u8],
    sig: Option<&str>,
) -> (u16, Value) {
    let mut rb = server
        .client
        .post(format!("{}/webhooks/github", server.url))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = sig {
        rb = rb.header("X-Hub-Signature-256", sig);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn count(pool: &sqlx::SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn labeled(label: &str) -> Value {
    let mut p = fixture("issues.labeled");
    p["label"]["name"] = json!(label);
    p["installation"] = json!({"id": 1});
    p
}

#[tokio::test]
async fn signatures_are_checked_before_anything_is_written() {
    let world = app_world();
    let server = world.serve();
    let pool = world.db().await;
    let body = serde_json::to_vec(&labeled("autodev:backend")).unwrap();
    let (status, body_json) = send(&server, "issues", "d-1", &body, Some("sha256=00")).await;
    assert_eq!(status, 401, "{body_json}");
    let (status, _) = send(&server, "issues", "d-1", &body, None).await;
    assert_eq!(status, 401);
    let sha1_only = "sha1=0123456789abcdef0123456789abcdef01234567";
    let (status, _) = send(&server, "issues", "d-1", &body, Some(sha1_only)).await;
    assert_eq!(status, 401);
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM deliveries").await, 0);
    assert_eq!(count(&pool, NON_CHORE_JOBS).await, 0);

    let (status, _) = send(
        &server,
        "issues",
        "d-2",
        b"{not json",
        Some(&autodev::github::webhook::sign(
            SECRET.as_bytes(),
            b"{not json",
        )),
    )
    .await;
    assert_eq!(status, 400);
    let (status, pong) = deliver(&server, "ping", "d-3", &fixture("ping")).await;
    assert_eq!((status, pong["ok"].as_str()), (200, Some("pong")));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            r#"autodev_webhook_deliveries_total{event="unverified",outcome="unauthorized"} 3"#
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"autodev_webhook_deliveries_total{event="issues",outcome="malformed"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_delivery_is_stored_and_queued_once_even_when_copies_race() {
    let world = app_world();
    let server = Arc::new(world.serve());
    let pool = world.db().await;
    let payload = labeled("autodev:backend");
    accepted(&server, "issues", "race-0", &payload).await;
    let again = deliver(&server, "issues", "race-0", &payload).await;
    assert_eq!(again, (200, json!({"ok": "already received"})));

    // Eight copies of a new delivery, released together.
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (server, barrier, payload) = (server.clone(), barrier.clone(), payload.clone());
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            deliver(&server, "issues", "race-1", &payload).await.0
        }));
    }
    let mut statuses = Vec::new();
    for h in handles {
        statuses.push(h.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 202]);
    assert_eq!(count(&pool, "SELECT COUNT(*) FROM deliveries").await, 2);
    assert_eq!(
        count(
            &pool,
            "SELECT COUNT(*) FROM Jobs WHERE idempotency_key IN ('delivery-race-0', 'delivery-race-1')"
        )
        .await,
        2
    );
    let stored: String = sqlx::query_scalar("SELECT payload FROM deliveries WHERE id = 'race-1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["kind"], "issue_labeled");
    assert_eq!(stored["repo"]["owner"], "Codertocat");
    assert_eq!(stored["issue"]["number"], 1);
}

#[tokio::test]
async fn installations_are_recorded() {
    let world = app_world();
    let server = world.serve();
    let pool = world.db().await;
    let created = fixture("installation.created");
    accepted(&server, "installation", "i-1", &created).await;
    let added = fixture("installation_repositories.added");
    accepted(&server, "installation_repositories", "i-2", &added).await;
    let repos: Vec<String> = sqlx::query_scalar(
        "SELECT repo FROM installation_repos WHERE installation_id = 957387 ORDER BY repo",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(repos, ["codertocat/hello-world", "codertocat/space"]);
    let mut deleted = fixture("installation.deleted");
    deleted["installation"]["id"] = json!(957387);
    accepted(&server, "installation", "i-3", &deleted).await;
    assert_eq!(
        count(&pool, "SELECT active FROM installations WHERE id = 957387").await,
        0
    );
}

#[tokio::test]
async fn what_autodev_does_not_act_on_is_answered_and_counted() {
    let world = app_world();
    let server = world.serve();
    let pool = world.db().await;
    let ignored = |why: &str| json!({ "ignored": why });
    let body = accepted(&server, "star", "s-1", &fixture("star.created")).await;
    assert_eq!(body, ignored("autodev does not act on `star.created`"));
    let body = accepted(&server, "issues", "s-2", &labeled("bug")).await;
    assert_eq!(body, ignored("label `bug` is not an autodev:<role> label"));
    let mut bot = labeled("autodev:backend");
    bot["sender"]["login"] = json!("dependabot[bot]");
    bot["sender"]["type"] = json!("Bot");
    let body = accepted(&server, "issues", "s-3", &bot).await;
    let not_allowed = "`dependabot[bot]` is a bot that is not in github.allowed_bots";
    assert_eq!(body, ignored(not_allowed));
    let mut comment = fixture("issue_comment.created");
    comment["comment"]["body"] = json!("Looks good to me");
    let body = accepted(&server, "issue_comment", "s-4", &comment).await;
    assert_eq!(body, ignored("comment holds no /autodev command"));
    assert_eq!(count(&pool, NON_CHORE_JOBS).await, 0);
    // An event name GitHub never sends, even signed, is counted as `other`: a name from a
    // request never becomes a label of its own.
    for (i, made_up) in ["x_made_up_event", "issues2", "ISSUES"].iter().enumerate() {
        let (status, _) = deliver(&server, made_up, &format!("s-x{i}"), &json!({})).await;
        assert!(status < 500, "{status}");
    }
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"autodev_webhook_deliveries_total{event="star",outcome="ignored"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"event="other""#), "{metrics}");
    for made_up in ["x_made_up_event", "issues2", "ISSUES"] {
        assert!(
            !metrics.contains(made_up),
            "{made_up} became a label:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn without_app_credentials_the_route_says_so() {
    let world = World::new();
    let server = world.serve();
    let answer = deliver(&server, "ping", "n-1", &fixture("ping")).await;
    let why = "GitHub App mode is not configured: set GITHUB_APP_ID, GITHUB_PRIVATE_KEY_PATH and GITHUB_WEBHOOK_SECRET";
    assert_eq!(answer, (503, json!({ "error": why })));
}
