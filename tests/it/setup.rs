//! Creating the GitHub App from autodev's setup page (GitHub's manifest flow), against the fake
//! GitHub: the page opens only with the code autodev logs, hands GitHub the manifest with a
//! fresh state, takes the App back once, stores it (0600) and uses it without a restart.

use std::os::unix::fs::PermissionsExt;

use crate::fake_github::FakeGithub;
use crate::support::{World, eventually};

const PUBLIC: &str = "https://autodev.example";
const MADE_SECRET: &str = "secret-made-by-the-manifest-flow";

/// A signed ping with `secret`; the status autodev answers.
async fn ping(server: &crate::support::Server, secret: &str) -> u16 {
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1,"hook":{"type":"App"}}"#;
    let sig = autodev::github::webhook::sign(secret.as_bytes(), body);
    server
        .client
        .post(format!("{}/webhooks/github", server.url))
        .header("X-GitHub-Event", "ping")
        .header("X-GitHub-Delivery", uuid_like())
        .header("X-Hub-Signature-256", sig)
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn uuid_like() -> String {
    crate::story::story_id()
}

async fn get(server: &crate::support::Server, path: &str) -> (u16, String) {
    let r = server
        .client
        .get(format!("{}{path}", server.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of `name="..." value="..."`-style `attr` after `marker` in `html`.
fn after<'a>(html: &'a str, marker: &str) -> &'a str {
    let rest = &html[html
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {html}"))
        + marker.len()..];
    &rest[..rest.find('"').unwrap()]
}

#[tokio::test]
async fn the_setup_page_makes_the_app_from_its_manifest_and_autodev_uses_it_at_once() {
    let mut world = World::new();
    let key = crate::webhooks::app_key(&world);
    let fake = FakeGithub::start(4242, &key).await;
    world.extra_env.extend([
        ("GITHUB_API_URL".to_owned(), fake.url.clone()),
        ("AUTODEV_PUBLIC_URL".to_owned(), PUBLIC.to_owned()),
    ]);
    let server = world.serve();
    // No App yet: deliveries are refused, and the log says where to make one.
    assert_eq!(ping(&server, MADE_SECRET).await, 503);
    let code = eventually("the setup link in the log", async || {
        let log = server.log.lock().unwrap().clone();
        match log.split("/setup?code=").nth(1) {
            Some(rest) => Ok(rest.split_whitespace().next().unwrap().to_owned()),
            None => Err(log),
        }
    })
    .await;
    assert!(
        server
            .log
            .lock()
            .unwrap()
            .contains(&format!("{PUBLIC}/setup?code=")),
        "the link is the public one"
    );

    // Only with the code.
    assert_eq!(get(&server, "/setup").await.0, 404);
    assert_eq!(get(&server, "/setup?code=guess").await.0, 404);
    let (status, html) = get(&server, &format!("/setup?code={code}")).await;
    assert_eq!(status, 200, "{html}");
    let action = after(&html, "action=\"").replace("&amp;", "&");
    let new_app = format!("{}/settings/apps/new?state=", fake.url);
    assert!(action.starts_with(&new_app), "{action}");
    let state = action[new_app.len()..].to_owned();
    let manifest: serde_json::Value =
        serde_json::from_str(&after(&html, "name=\"manifest\" value=\"").replace("&quot;", "\""))
            .unwrap();
    assert_eq!(
        manifest["hook_attributes"]["url"],
        format!("{PUBLIC}/webhooks/github")
    );
    assert_eq!(manifest["redirect_url"], format!("{PUBLIC}/setup/callback"));
    assert_eq!(manifest["public"], false);
    // An organisation's page posts to the organisation's new-App page; a made-up login is refused.
    let (status, html) = get(&server, &format!("/setup?code={code}&org=octo-org")).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(&format!(
            "{}/organizations/octo-org/settings/apps/new?state=",
            fake.url
        )),
        "{html}"
    );
    assert_eq!(
        get(&server, &format!("/setup?code={code}&org=a/b")).await.0,
        400
    );

    // GitHub sends the person back: only with a state this server handed out.
    fake.hand_out_manifest_code("c0ffee42");
    assert_eq!(
        get(&server, "/setup/callback?code=c0ffee42&state=made-up")
            .await
            .0,
        400
    );
    let (status, html) = get(
        &server,
        &format!("/setup/callback?code=c0ffee42&state={state}"),
    )
    .await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("https://github.com/apps/autodev-test/installations/new"),
        "{html}"
    );
    // Once.
    assert_eq!(
        get(
            &server,
            &format!("/setup/callback?code=c0ffee42&state={state}")
        )
        .await
        .0,
        400
    );
    let stored = world.data.join("github-app.json");
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // In use without a restart: deliveries signed with the App's secret are taken.
    assert_eq!(ping(&server, MADE_SECRET).await, 200);
    assert_eq!(ping(&server, "another secret").await, 401);
    assert_eq!(
        get(&server, &format!("/setup?code={code}")).await.0,
        404,
        "the code is spent"
    );

    // And after a restart, from the data directory.
    drop(server);
    let server = world.serve();
    assert_eq!(ping(&server, MADE_SECRET).await, 200);
    assert!(!server.log.lock().unwrap().contains("/setup?code="));
}
