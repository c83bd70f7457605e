//! The real octocrab-based client against the fake GitHub: App JWT, installation tokens that
//! expire and are refreshed, permissions with a cache, GitHub's error answers
//! classified, and local mode's token-only client.

use std::time::Duration;

use autodev::config::GithubApp;
use autodev::github::api::RepoPath;
use autodev::github::client::{ApiError, GithubClient, Identity, Permission, Retry};
use autodev::github::event::InstallationId;
use secrecy::{ExposeSecret, SecretString};

use crate::fake_github::FakeGithub;

const WEB: RepoPath<'static> = RepoPath {
    owner: "acme",
    name: "web",
};

const INST: InstallationId = InstallationId(77);

fn keypair(dir: &std::path::Path) -> std::path::PathBuf {
    let key = dir.join("app.pem");
    let out = std::process::Command::new("openssl")
        .args(["genrsa", "-out", key.to_str().unwrap(), "2048"])
        .output()
        .unwrap();
    assert!(out.status.success());
    key
}

fn client(fake: &FakeGithub, key: &std::path::Path, app_id: u64) -> GithubClient {
    let app = GithubApp {
        app_id,
        private_key: SecretString::from(std::fs::read_to_string(key).unwrap()),
        webhook_secret: SecretString::from("x".to_owned()),
    };
    GithubClient::new(
        &fake.url,
        Some(&app),
        None,
        Duration::from_secs(60),
        Duration::from_secs(30),
        &std::env::temp_dir(),
    )
    .unwrap()
    .expect("an App client")
}

#[tokio::test]
async fn a_token_only_client_calls_as_the_token_and_has_no_installations() {
    let dir = tempfile::tempdir().unwrap();
    let key = keypair(dir.path());
    let fake = FakeGithub::start(4242, &key).await;
    fake.add_personal_token("ghp_right", "octo-me");
    let token = SecretString::from("ghp_right".to_owned());
    let gh = GithubClient::new(
        &fake.url,
        None,
        Some(&token),
        Duration::from_secs(60),
        Duration::from_secs(30),
        dir.path(),
    )
    .unwrap()
    .expect("a token client");
    assert!(!gh.is_app());
    let pull = gh
        .open_pull_from(Identity::Token, WEB, "auto/backend/T-1")
        .await
        .unwrap();
    assert!(pull.is_none(), "{pull:?}");
    let e = gh
        .open_pull_from(InstallationId(1).into(), WEB, "auto/backend/T-1")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("App mode is not configured"), "{e}");

    let wrong = SecretString::from("ghp_wrong".to_owned());
    let gh = GithubClient::new(
        &fake.url,
        None,
        Some(&wrong),
        Duration::ZERO,
        Duration::from_secs(30),
        dir.path(),
    )
    .unwrap()
    .unwrap();
    let e = gh
        .open_pull_from(Identity::Token, WEB, "auto/backend/T-1")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(
        GithubClient::new(
            &fake.url,
            None,
            None,
            Duration::ZERO,
            Duration::from_secs(30),
            dir.path()
        )
        .unwrap()
        .is_none(),
        "neither App nor token: no client"
    );
}

#[tokio::test]
async fn app_jwt_then_installation_token_then_cached_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let key = keypair(dir.path());
    let fake = FakeGithub::start(4242, &key).await;
    fake.set_permission("acme/web", "alice", "write");
    fake.set_permission("acme/web", "bob", "read");
    let gh = client(&fake, &key, 4242);

    assert_eq!(
        gh.permission(INST, "acme", "web", "alice").await.unwrap(),
        Permission::Write
    );
    assert_eq!(
        gh.permission(INST, "acme", "web", "bob").await.unwrap(),
        Permission::Read
    );
    assert_eq!(
        gh.permission(INST, "acme", "web", "mallory").await.unwrap(),
        Permission::None,
        "404: not a collaborator"
    );
    assert!(Permission::Write.may_command() && !Permission::Read.may_command());
    let asked = fake
        .requests()
        .iter()
        .filter(|r| r.contains("/permission"))
        .count();
    assert_eq!(
        gh.permission(INST, "acme", "web", "alice").await.unwrap(),
        Permission::Write
    );
    assert_eq!(
        fake.requests()
            .iter()
            .filter(|r| r.contains("/permission"))
            .count(),
        asked,
        "cached"
    );
    assert_eq!(fake.tokens_issued(), 1, "one token serves every call");
}

#[tokio::test]
async fn an_expired_token_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let key = keypair(dir.path());
    let fake = FakeGithub::start(4242, &key).await;
    fake.set_permission("acme/web", "alice", "admin");
    fake.set_permission("acme/web", "carol", "write");
    let gh = client(&fake, &key, 4242);
    gh.permission(INST, "acme", "web", "alice").await.unwrap();
    fake.expire_tokens();
    assert_eq!(
        gh.permission(INST, "acme", "web", "carol").await.unwrap(),
        Permission::Write
    );
    assert_eq!(fake.tokens_issued(), 2);

    // Short-lived tokens are refreshed before they run out, for git too.
    fake.state.lock().unwrap().token_ttl = Duration::from_secs(45);
    let gh = client(&fake, &key, 4242);
    let a = gh.installation_token(INST).await.unwrap();
    let b = gh.installation_token(INST).await.unwrap();
    assert_ne!(
        a.expose_secret(),
        b.expose_secret(),
        "a token with under a minute left is renewed"
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_by_the_app_jwt_check() {
    let dir = tempfile::tempdir().unwrap();
    let key = keypair(dir.path());
    let other = tempfile::tempdir().unwrap();
    let wrong = keypair(other.path());
    let fake = FakeGithub::start(4242, &key).await;
    let gh = client(&fake, &wrong, 4242);
    assert!(gh.installation_token(INST).await.is_err());
    let gh = client(&fake, &key, 999);
    assert!(
        gh.installation_token(INST).await.is_err(),
        "wrong App id (issuer)"
    );
    assert_eq!(fake.tokens_issued(), 0);
}

#[tokio::test]
async fn githubs_errors_come_with_retry_advice() {
    let dir = tempfile::tempdir().unwrap();
    let key = keypair(dir.path());
    let fake = FakeGithub::start(4242, &key).await;
    let gh = client(&fake, &key, 4242);
    gh.installation_token(INST).await.unwrap();

    fake.fail_next(500, &[]);
    let e = gh.create_comment(INST, WEB, 1, "x").await.unwrap_err();
    assert_eq!((e.status(), e.retry()), (Some(500), Retry::Backoff));

    fake.fail_next(403, &[("retry-after", "3")]);
    let e = gh.create_comment(INST, WEB, 1, "x").await.unwrap_err();
    assert_eq!(e.retry(), Retry::After(Duration::from_secs(3)));
    assert!(
        matches!(&e, ApiError::Status { message, .. } if message == "scripted failure"),
        "{e}"
    );

    // Neither failure created anything; the next call does, once.
    gh.create_comment(INST, WEB, 1, "x").await.unwrap();
    assert_eq!(fake.comments(1).len(), 1);
}
