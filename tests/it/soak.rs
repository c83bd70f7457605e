//! The soak run (a benchmark, not a timed test; `scripts/soak` runs it): many issues through
//! App mode while autodev is killed with SIGKILL at random moments, GitHub fails a fifth of
//! its calls, and a tenth of the deliveries come twice at once and again later. It reports
//! what a user would count: tasks lost, and branches, pull requests, check runs and status
//! comments made more than once; and the database's size before and after retention.
//! `SOAK_TASKS` (200), `SOAK_KILLS` (20) and `CHAOS_SEED` set the run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::story::{App, WRITER, story_id, writes};
use crate::support::eventually;
use crate::webhooks::SECRET;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A delivery the way GitHub sends it, tried until the server takes it (GitHub's own
/// redelivery, or an operator's, does the same for a server that was down).
async fn deliver_until_taken(app: &App, id: &str, payload: &Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let sig = autodev::github::webhook::sign(SECRET.as_bytes(), &body);
    loop {
        let sent = reqwest::Client::new()
            .post(format!("{}/webhooks/github", app.server.url))
            .header("X-GitHub-Event", "issues")
            .header("X-GitHub-Delivery", id)
            .header("X-Hub-Signature-256", &sig)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(r) = sent
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Bytes of the database's pages in use (its file keeps freed pages until a VACUUM).
async fn used_bytes(pool: &sqlx::SqlitePool) -> i64 {
    let (pages, free, size): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT page_count FROM pragma_page_count()),
                (SELECT freelist_count FROM pragma_freelist_count()),
                (SELECT page_size FROM pragma_page_size())",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (pages - free) * size
}

#[tokio::test]
#[ignore = "the soak run: scripts/soak"]
async fn soak() {
    let tasks = setting("SOAK_TASKS", 200);
    let kills = setting("SOAK_KILLS", 20);
    let seed = setting("CHAOS_SEED", 1);
    let started = Instant::now();
    let mut app = App::with(&writes("feature.txt", "x"), move |world, fake| {
        world.write_config(
            "providers:\n  order: [claude_cli]\ngithub: {timeout: \"1s\"}\n\
             hygiene: {reconcile_minutes: \"5s\", cleanup_minutes: \"5s\"}\n",
        );
        fake.chaos(20, seed, Duration::from_secs(2));
    })
    .await;

    // The deliveries: one per issue, a tenth of them twice at once and once more later.
    let mut sent = 0u64;
    let mut redeliver = Vec::new();
    let mut killed = 0;
    let kill_every = (tasks / kills.max(1)).max(1);
    for n in 1..=tasks {
        let mut payload = Value::Null;
        let _ = app
            .issue(n)
            .labeled("autodev:backend")
            .by(WRITER)
            .with(|p| payload = p.clone());
        let id = story_id();
        if n % 10 == 0 {
            let (a, b) = futures::join!(
                deliver_until_taken(&app, &id, &payload),
                deliver_until_taken(&app, &id, &payload)
            );
            let _ = (a, b);
            redeliver.push((id.clone(), payload.clone()));
            sent += 2;
        } else {
            deliver_until_taken(&app, &id, &payload).await;
            sent += 1;
        }
        // kill -9 at a moment chosen by the issue count, with a random-ish delay before it.
        if n % kill_every == 0 && killed < kills {
            tokio::time::sleep(Duration::from_millis(50 * (n % 7))).await;
            // SIGKILL to autodev and everything it started, then a new start.
            unsafe {
                libc::killpg(app.server.pid(), libc::SIGKILL);
            }
            let fresh = app.world.serve();
            drop(std::mem::replace(&mut app.server, fresh));
            killed += 1;
        }
    }
    for (id, payload) in &redeliver {
        deliver_until_taken(&app, id, payload).await;
        sent += 1;
    }
    eprintln!(
        "soak: {tasks} issues, {sent} deliveries, {killed} kills, seed {seed}; waiting for the end"
    );

    // Every task ends, and GitHub catches up.
    let pool = app.world.db().await;
    eventually("every task ended", async || {
        let open: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE state IN ('queued', 'running')")
                .fetch_one(&pool)
                .await
                .unwrap();
        if open == 0 { Ok(()) } else { Err(open) }
    })
    .await;
    let played = app.fake.calm();
    app.outbox_idle().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    app.outbox_idle().await;

    let states: Vec<(String, String)> =
        sqlx::query_as("SELECT task_id, state FROM tasks ORDER BY pk")
            .fetch_all(&pool)
            .await
            .unwrap();
    let by_state = states.iter().fold(BTreeMap::new(), |mut m, (_, s)| {
        *m.entry(s.clone()).or_insert(0) += 1;
        m
    });
    let counts = {
        let st = app.fake.state.lock().unwrap();
        let mut pulls: BTreeMap<String, u32> = BTreeMap::new();
        for p in &st.pulls {
            *pulls.entry(p.head_ref.clone()).or_default() += 1;
        }
        let mut checks: BTreeMap<String, u32> = BTreeMap::new();
        for c in &st.check_runs {
            *checks.entry(c.head_sha.clone()).or_default() += 1;
        }
        let mut comments: BTreeMap<String, u32> = BTreeMap::new();
        for c in st
            .comments
            .iter()
            .filter(|c| c.body.contains("autodev:status"))
        {
            *comments.entry(c.issue.to_string()).or_default() += 1;
        }
        let dupes = |m: &BTreeMap<_, u32>| m.values().filter(|n| **n > 1).count();
        json!({
            "pull_requests": st.pulls.len(),
            "duplicate_pull_requests": dupes(&pulls),
            "check_runs": st.check_runs.len(),
            "duplicate_check_runs": dupes(&checks),
            "check_runs_not_concluded": st.check_runs.iter().filter(|c| c.status != "completed").count(),
            "status_comments": comments.len(),
            "duplicate_status_comments": dupes(&comments),
        })
    };
    let errors: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT task_id, last_error FROM tasks WHERE state != 'passed' ORDER BY pk")
            .fetch_all(&pool)
            .await
            .unwrap();
    let lost = tasks as usize - states.len().min(tasks as usize);
    let report = json!({
        "issues": tasks,
        "deliveries": sent,
        "kills": killed,
        "github_faults": played,
        "tasks": states.len(),
        "tasks_by_state": by_state,
        "tasks_not_passed": errors,
        "tasks_lost": lost,
        "branches_on_github": crate::support::git(&app.remote().0, &["branch", "--list", "auto/*"]).lines().count(),
        "github": counts,
        "minutes": started.elapsed().as_secs_f64() / 60.0,
    });

    // Retention: everything made old, then one clean-up.
    let before = used_bytes(&pool).await;
    for sql in [
        "UPDATE task_events SET at = '2000-01-01T00:00:00+00:00'",
        "UPDATE gate_results SET at = '2000-01-01T00:00:00+00:00'",
        "UPDATE deliveries SET received_at = '2000-01-01T00:00:00+00:00'",
        "UPDATE Jobs SET done_at = 946684800 WHERE status = 'Done'",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    eventually("history pruned", async || {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&pool)
            .await
            .unwrap();
        if left == 0 { Ok(()) } else { Err(left) }
    })
    .await;
    let after = used_bytes(&pool).await;
    let mut report = report;
    report["database_bytes_before_retention"] = json!(before);
    report["database_bytes_after_retention"] = json!(after);
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report["tasks_lost"], 0, "{report:#}");
    for doubled in [
        "duplicate_pull_requests",
        "duplicate_check_runs",
        "duplicate_status_comments",
        "check_runs_not_concluded",
    ] {
        assert_eq!(report["github"][doubled], 0, "{report:#}");
    }
}
