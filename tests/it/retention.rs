//! Retention: the scheduled clean-up prunes old history, the homes a crashed run left, and the
//! mirror of a repository the App no longer covers; what is recent or live stays.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::story::{App, REPO, State, WRITER, writes};
use crate::support::eventually;
use crate::webhooks::{deliver, fixture};

/// Sets a file's or directory's modification time to 2000-01-01.
fn make_old(path: &Path) {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800);
    std::fs::File::open(path).unwrap().set_modified(at).unwrap();
}

async fn count(app: &App, sql: &'static str) -> i64 {
    let pool = app.world.db().await;
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    n
}

#[tokio::test]
async fn old_history_stale_homes_and_uninstalled_mirrors_are_removed_and_the_rest_stays() {
    let app = App::with(&writes("feature.txt", "x"), |world, _| {
        world.write_config(
            "providers:\n  order: [claude_cli]\nhygiene: {cleanup_minutes: \"1s\", keep_history_days: 7}\n",
        )
    })
    .await;
    app.issue(1).labeled("autodev:backend").by(WRITER).await;
    let task = app.issue(1).task().ended_as(State::Passed).await;
    eventually("the pull request", async || {
        (app.pulls().len() == 1)
            .then_some(())
            .ok_or(app.pulls().len())
    })
    .await;
    let worktree = task
        .worktree
        .clone()
        .expect("an ended task keeps its worktree");
    assert!(app.mirror().0.exists());

    // Half the history is made old: the task's first events, its gate results, the
    // delivery, and the finished queue jobs.
    let events = count(&app, "SELECT COUNT(*) FROM task_events").await;
    app.world
        .execute(
            "UPDATE task_events SET at = '2000-01-01T00:00:00+00:00'
             WHERE id <= (SELECT MIN(id) + 1 FROM task_events)",
        )
        .await;
    app.world
        .execute("UPDATE gate_results SET at = '2000-01-01T00:00:00+00:00'")
        .await;
    app.world
        .execute("UPDATE deliveries SET received_at = '2000-01-01T00:00:00+00:00'")
        .await;
    let finished_jobs = app
        .world
        .execute("UPDATE Jobs SET done_at = 946684800 WHERE status = 'Done'")
        .await;
    assert!(finished_jobs > 0, "the task's job and its effects are done");
    // Homes a killed process left: the task's (with a prompt file), one of a task that is
    // gone, one just made, and a directory autodev does not name.
    let homes = app.world.data.join("homes");
    let pk = count(&app, "SELECT pk FROM tasks").await;
    let left = homes.join(format!("task-{pk}"));
    let orphan = homes.join("task-999999");
    let fresh = homes.join("task-999998");
    let foreign = homes.join("notes");
    for dir in [&left, &orphan, &fresh, &foreign] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("prompt-1.md"), "the issue's words").unwrap();
    }
    for dir in [&left, &orphan, &foreign] {
        make_old(dir);
    }

    eventually("the old history pruned", async || {
        let old = count(
            &app,
            "SELECT (SELECT COUNT(*) FROM task_events WHERE at < '2001')
                  + (SELECT COUNT(*) FROM gate_results)
                  + (SELECT COUNT(*) FROM deliveries)
                  + (SELECT COUNT(*) FROM Jobs WHERE done_at = 946684800)",
        )
        .await;
        (old == 0).then_some(()).ok_or(old)
    })
    .await;
    eventually("the stale homes removed", async || {
        let gone = !left.exists() && !orphan.exists();
        gone.then_some(()).ok_or((left.exists(), orphan.exists()))
    })
    .await;
    assert!(
        fresh.exists() && foreign.exists(),
        "fresh or foreign homes stay"
    );
    let kept = count(&app, "SELECT COUNT(*) FROM task_events").await;
    assert!(kept >= events - 2, "recent events stay: {kept} of {events}");
    let task = app.issue(1).task().ended().await;
    assert_eq!(task.state, State::Passed, "the task itself stays: {task}");
    assert!(app.mirror().0.exists(), "the repository is still installed");

    // The repository is taken out of the installation: its mirror and the ended task's
    // worktree go.
    let mut removed = fixture("installation_repositories.removed");
    removed["installation"]["id"] = json!(1);
    removed["repositories_removed"] =
        json!([{"id": 1296269, "name": "Hello-World", "full_name": REPO}]);
    let (status, body) = deliver(&app.server, "installation_repositories", "rm-1", &removed).await;
    assert_eq!(status, 202, "{body}");
    eventually("the mirror removed", async || {
        let gone = !app.mirror().0.exists() && !Path::new(&worktree).exists();
        gone.then_some(()).ok_or(app.mirror().0)
    })
    .await;
    let task = app.issue(1).task().ended().await;
    assert_eq!(task.worktree, None, "{task}");
    let metrics = app.server.metrics().await;
    assert!(metrics.contains("autodev_active_worktrees 0"), "{metrics}");
    let pool = app.world.db().await;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(check, "ok");
}
