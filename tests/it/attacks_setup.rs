//! Attacks on the setup page (GitHub's manifest flow) and on taking the App up live. Each test
//! here is an attack that worked against an earlier version, and keeps autodev defending.

use serde_json::json;

use crate::fake_github::FakeGithub;
use crate::support::{World, eventually};
use crate::webhooks::fixture;

const PUBLIC: &str = "https://autodev.example";
/// The webhook secret the fake GitHub's conversion hands over.
const MADE_SECRET: &str = "secret-made-by-the-manifest-flow";
const REPO: &str = "Codertocat/Hello-World";
const WRITER: &str = "Codertocat";

async fn get(server: &crate::support::Server, path: &str) -> (u16, String) {
    let r = server
        .client
        .get(format!("{}{path}", server.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Runs the setup flow on `server` as its operator would: the code from the log, the page's
/// state, GitHub's code back on the callback. The App is in use in `server` afterwards.
async fn make_app(server: &crate::support::Server, fake: &FakeGithub) {
    let code = eventually("the setup link in the log", async || {
        let log = server.log.lock().unwrap().clone();
        match log.split("/setup?code=").nth(1) {
            Some(rest) => Ok(rest.split_whitespace().next().unwrap().to_owned()),
            None => Err(log),
        }
    })
    .await;
    let (status, html) = get(server, &format!("/setup?code={code}")).await;
    assert_eq!(status, 200, "{html}");
    let state = html
        .split("state=")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a state in the page")
        .to_owned();
    fake.hand_out_manifest_code("c0ffee42");
    let (status, html) = get(
        server,
        &format!("/setup/callback?code=c0ffee42&state={state}"),
    )
    .await;
    assert_eq!(status, 200, "{html}");
}

/// A signed delivery of `event` (`payload`) with the made App's secret; autodev's status.
async fn deliver(
    server: &crate::support::Server,
    event: &str,
    id: &str,
    payload: &serde_json::Value,
) -> u16 {
    let body = serde_json::to_vec(payload).unwrap();
    let sig = autodev::github::webhook::sign(MADE_SECRET.as_bytes(), &body);
    server
        .client
        .post(format!("{}/webhooks/github", server.url))
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", id)
        .header("X-Hub-Signature-256", sig)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// README: `serve --workers 0` for the API, `worker` processes for the work ("several
/// processes may share one database"). The setup page takes the App up in the `serve`
/// process only; a `worker` started before the App was made has none, yet since this change
/// it runs the GitHub and outbox queues anyway, and a job of those queues with no App "ends at
/// once": every delivery the server accepted (202) is taken by the worker and thrown away,
/// and every GitHub effect with it. An issue author's labelled issue is never acted on,
/// never answered, and the job says Done.
#[tokio::test]
async fn a_worker_started_before_the_app_was_made_swallows_every_delivery() {
    let mut world = World::new();
    let key = crate::webhooks::app_key(&world);
    let fake = FakeGithub::start(4242, &key).await;
    fake.install(1, &[REPO]);
    fake.set_permission(REPO, WRITER, "write");
    world.extra_env.extend([
        ("GITHUB_API_URL".to_owned(), fake.url.clone()),
        ("AUTODEV_PUBLIC_URL".to_owned(), PUBLIC.to_owned()),
    ]);
    // The API alone, and a worker beside it: both start with no App.
    let server = world.serve_with(&["--workers", "0"]);
    let _worker = world.worker();
    make_app(&server, &fake).await;

    // A writer labels an issue; the server takes the delivery.
    let mut payload = fixture("issues.labeled");
    payload["label"]["name"] = json!("autodev:backend");
    payload["installation"] = json!({"id": 1});
    let status = deliver(&server, "issues", "attack-worker-1", &payload).await;
    assert_eq!(status, 202);

    // The delivery's job ends...
    let pool = world.db().await;
    eventually("the delivery's job to end", async || {
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM Jobs WHERE job_type = 'autodev.github'
               AND status NOT IN ('Done', 'Killed', 'Failed')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let all: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE job_type = 'autodev.github'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if all > 0 && pending == 0 {
            Ok(())
        } else {
            Err((all, pending))
        }
    })
    .await;
    pool.close().await;
    // ...and it was acted on: GitHub was asked about the labeller, the issue got its 👀.
    let requests = fake.requests();
    assert!(
        requests.iter().any(|r| r.contains("/permission")),
        "the delivery was taken and dropped by a worker with no App: GitHub never heard of it: {requests:#?}"
    );
}
