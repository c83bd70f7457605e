//! Every shipped example parses: specs, roles and the documented config.

use std::path::Path;

use autodev::config::{Env, FileConfig, Overrides, Settings};
use autodev::core::roles::Roles;
use autodev::core::spec::{self, SpecFormat};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_roles_specs_and_config_parse() {
    let roles = Roles::load(Some(&root().join("roles"))).expect("roles parse");
    for name in [
        "data_analyst",
        "computational_biologist",
        "fund_manager",
        "sre",
        "backend",
        "frontend",
        "data",
        "ml",
    ] {
        assert!(roles.get(name).is_some(), "role {name} missing");
    }
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(root().join("specs")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let spec = spec::parse(
            &text,
            SpecFormat::from_path(&path),
            &roles,
            &spec::Limits::default(),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen.push((
            spec.id.to_string(),
            spec.role.clone(),
            spec.options.target_dir.clone().unwrap_or_default(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("TSK-1234".into(), "backend".into(), "backend".into()),
            (
                "TSK-CB-101".into(),
                "computational_biologist".into(),
                "pipelines".into()
            ),
            ("TSK-DA-001".into(), "data_analyst".into(), "data".into()),
            ("TSK-FM-07".into(), "fund_manager".into(), "quant".into()),
        ]
    );
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        FileConfig::from_yaml(&text, &path).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

#[test]
fn shipped_config_documents_every_default() {
    // The shipped file must describe the defaults, not different values.
    let path = root().join("config/config.yaml");
    let shipped = FileConfig::from_yaml(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
    let default = FileConfig::default();
    assert_eq!(shipped.providers.order, default.providers.order);
    assert_eq!(
        format!("{:?}", shipped.workers),
        format!("{:?}", default.workers)
    );
    assert_eq!(
        format!("{:?}", shipped.gates),
        format!("{:?}", default.gates)
    );
    assert_eq!(
        format!("{:?}", shipped.agent),
        format!("{:?}", default.agent)
    );
    assert_eq!(
        format!("{:?}", shipped.hygiene),
        format!("{:?}", default.hygiene)
    );
    assert_eq!(
        format!("{:?}", shipped.database),
        format!("{:?}", default.database)
    );
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = Env::from_pairs([
        ("AUTODEV_DATA_DIR", data.to_str().unwrap()),
        ("HOME", "/nonexistent"),
    ]);
    let settings = Settings::load(
        env,
        Overrides {
            config: Some(root().join("config/config.yaml")),
            ..Default::default()
        },
    )
    .unwrap();
    let engine = autodev::engine::Engine::open(settings.clone())
        .await
        .unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&engine.pool)
            .await
            .unwrap();
    for t in ["Jobs", "Workers", "tasks", "task_events", "gate_results"] {
        assert!(tables.iter().any(|n| n == t), "{t} missing from {tables:?}");
    }
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&engine.pool)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    drop(engine);
    // A second start on the same file finds both sets of migrations applied.
    autodev::engine::Engine::open(settings).await.unwrap();
}

/// The App manifest asks for the events autodev acts on, and no other.
#[test]
fn the_app_manifest_subscribes_to_exactly_the_events_autodev_acts_on() {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("app-manifest.json")).unwrap())
            .unwrap();
    let events: Vec<&str> = manifest["default_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(manifest["public"], false);
    // GitHub's own examples of each event autodev has a fixture for: which are acted on.
    let acts_on = |event: &str, fixture: &str| {
        let text =
            std::fs::read_to_string(root().join(format!("tests/fixtures/webhooks/{fixture}.json")))
                .unwrap();
        let mut payload: serde_json::Value = serde_json::from_str(&text).unwrap();
        // As an App receives it, about autodev.
        payload["installation"] = serde_json::json!({"id": 1});
        if payload.get("label").is_some() {
            payload["label"]["name"] = serde_json::json!("autodev:backend");
        }
        if payload.get("comment").is_some() {
            payload["comment"]["body"] = serde_json::json!("/autodev help");
        }
        if payload.get("check_run").is_some() {
            payload["check_run"]["name"] = serde_json::json!("autodev/backend");
        }
        let body = serde_json::to_vec(&payload).unwrap();
        matches!(
            autodev::github::webhook::parse(event, &body),
            Ok(autodev::github::webhook::Parsed::Event(_))
        )
    };
    for (event, fixture) in [
        ("issues", "issues.labeled"),
        ("issue_comment", "issue_comment.created"),
        ("check_run", "check_run.rerequested"),
        ("pull_request", "pull_request.closed"),
        (
            "pull_request_review_comment",
            "pull_request_review_comment.created",
        ),
        ("star", "star.created"),
    ] {
        assert_eq!(
            events.contains(&event),
            acts_on(event, fixture),
            "{event}: subscribed to exactly when acted on"
        );
    }
    for (permission, level) in [
        ("checks", "write"),
        ("contents", "write"),
        ("issues", "write"),
        ("pull_requests", "write"),
        ("metadata", "read"),
    ] {
        assert_eq!(manifest["default_permissions"][permission], level);
    }
}
