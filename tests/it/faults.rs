//! Faults: the process dies at a boundary between a side effect and its record (a crash point
//! of a `--features failpoints` build), restarts, and the work ends once, as recorded.

use crate::github_app::{App, app_with_setup};
use crate::support::{CLAUDE_OK, git};

/// Whether this build has crash points; if not, the test says it was skipped.
fn crash_points() -> bool {
    if !cfg!(feature = "failpoints") {
        eprintln!("skipped: needs a build with `--features failpoints` (.ci/run has it)");
    }
    cfg!(feature = "failpoints")
}

/// An agent whose every run changes the file, so that a run after a restart has work to do.
fn changing_agent() -> String {
    format!("cat >/dev/null\ndate +%s%N > feature.txt\necho '{CLAUDE_OK}'")
}

/// App mode with `FAILPOINTS` set to `scenario` for the first server only.
async fn app_crashing_at(scenario: &str) -> App {
    let scenario = scenario.to_owned();
    app_with_setup(&changing_agent(), move |world, _| {
        world.extra_env.push(("FAILPOINTS".into(), scenario));
    })
    .await
}

#[tokio::test]
async fn a_crash_between_a_push_and_its_record_is_reconciled_from_github() {
    if !crash_points() {
        return;
    }
    let app = app_crashing_at("push-done=return").await;
    app.label("autodev:backend", "Codertocat").await;
    let App {
        mut world,
        fake,
        git: remote,
        server,
    } = app;
    server.crashed().await;
    let bare = remote.root.join("codertocat/hello-world.git");
    let pushed_before = git(&bare, &["rev-parse", "auto/backend/issue-1"]);

    // Restarted without the crash point: the task's lease runs out, a second run starts on
    // the branch, and its push replaces the one the first run never recorded.
    world.extra_env.retain(|(k, _)| k != "FAILPOINTS");
    let server = world.serve();
    let t = server
        .wait_for(
            "issue-1",
            &["passed", "failed", "error", "cancelled"],
            std::time::Duration::from_secs(90),
        )
        .await;
    let events = t["events"].to_string();
    assert_eq!(t["state"], "passed", "{t:#}");
    assert_eq!(t["runs"], 2, "{t:#}");
    let head = git(&bare, &["rev-parse", "auto/backend/issue-1"]);
    assert_eq!(t["pushed_sha"], head.as_str(), "{t:#}");
    assert_eq!(t["head_sha"], head.as_str(), "{t:#}");
    assert!(
        events.contains(&format!(
            "found {} on auto/backend/issue-1",
            &pushed_before[..10]
        )),
        "{t:#}"
    );
    // The second run built on the first: the crashed run's push is in the branch's history.
    assert_eq!(
        git(
            &bare,
            &["merge-base", "--is-ancestor", &pushed_before, &head]
        ),
        ""
    );
    // One check run, on the pushed head, concluded.
    fake.wait_until("the check run of the final head, concluded", |st| {
        st.check_runs
            .iter()
            .any(|c| c.head_sha == head && c.conclusion.as_deref() == Some("success"))
    })
    .await;
    let runs = fake.state.lock().unwrap().check_runs.clone();
    assert_eq!(runs.len(), 1, "{runs:#?}");
}
