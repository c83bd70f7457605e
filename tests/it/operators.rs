//! What operators get: an `autodev worker` serving its own metrics and probes, and the
//! Prometheus alert rules and Grafana dashboard in `deploy/`, checked by `promtool` against
//! the metrics autodev really exports.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

/// An `autodev worker --metrics-bind 127.0.0.1:0`; the process and where it serves.
fn worker_with_metrics(world: &World) -> (Proc, String) {
    use std::os::unix::process::CommandExt;
    let mut child = world
        .command(&["worker", "--metrics-bind", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("autodev worker starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("worker metrics on http://").nth(1) {
                let addr = rest.split('/').next().unwrap_or("").to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the worker says where its metrics are");
    (Proc(child), format!("http://{addr}"))
}

#[tokio::test]
async fn a_worker_serves_its_own_metrics_and_probes() {
    let world = World::new();
    world.simple_claude("feature.txt", "x");
    let server = world.serve_with(&["--workers", "0"]);
    let (_worker, url) = worker_with_metrics(&world);
    let (status, body) = server.post_spec("application/yaml", &spec("w-1", "")).await;
    assert_eq!(status, 201, "{body}");
    let task = server.wait_for("w-1", &[State::Passed]).await;
    assert_eq!(task.state, State::Passed);

    let client = reqwest::Client::new();
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The run happened in the worker: its counters are the worker's.
    for line in [
        r#"autodev_tasks_total{role="backend",status="passed"} 1"#,
        r#"autodev_task_duration_seconds_count{outcome="passed",role="backend"} 1"#,
        r#"autodev_provider_requests_total{provider="claude_cli",status="success"} 1"#,
        r#"autodev_agent_cost_usd_total{provider="claude_cli",role="backend"} 0.01"#,
        "autodev_running_tasks 0",
        "autodev_queue_size 0",
        "autodev_outbox_backlog 0",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    assert!(
        metrics.contains(&format!(
            "autodev_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    for probe in ["/healthz", "/readyz"] {
        let status = client
            .get(format!("{url}{probe}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{probe}");
    }
    // It serves nothing else: no task API on a worker's address.
    let status = client
        .get(format!("{url}/tasks"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404);
}

/// The metric names a PromQL expression uses (`autodev_…`, with a histogram's suffixes taken
/// back to the histogram's name).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("autodev_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_owned();
        names.push(base);
    }
    names
}

/// Every alert and every dashboard panel asks only for metrics autodev exports; `promtool`
/// finds the rules well formed, their tests pass, and every panel's query parses.
#[tokio::test]
async fn alert_rules_and_the_grafana_dashboard_ask_for_metrics_autodev_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(root.join("alerts.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = Vec::new();
    let rules_yaml: serde_yaml::Value = serde_yaml::from_str(&rules).unwrap();
    for group in rules_yaml["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    let alerts = exprs.len();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(
        alerts >= 4,
        "stuck queue, failing provider, rate limit, outbox"
    );
    assert!(exprs.len() > alerts + 8, "the dashboard has panels");

    // What autodev exports: every metric it registers (a labelled one shows in /metrics only
    // once it has a series), and those a fresh server already shows are among them.
    let names = autodev::metrics::Metrics::new().names().to_vec();
    let world = World::new();
    let server = world.serve_with(&["--workers", "0"]);
    let exported = server.metrics().await;
    for line in exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = line.split(' ').next().unwrap();
        assert!(
            names.iter().any(|n| n == name),
            "{name} is not in {names:?}"
        );
    }
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                names.contains(&name),
                "`{expr}` asks for {name}, which autodev does not export: {names:?}"
            );
        }
    }

    let Some(promtool) = which("promtool") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs promtool (Debian's prometheus package)"
        );
        eprintln!(
            "skipped the promtool checks: promtool is not installed (apt-get install prometheus)"
        );
        return;
    };
    run_promtool(
        &promtool,
        &["check", "rules"],
        &root.join("alerts.yml"),
        &root,
    );
    run_promtool(
        &promtool,
        &["test", "rules"],
        &root.join("alerts.test.yml"),
        &root,
    );
    // The panels' queries, as recording rules: promtool parses each.
    let dir = tempfile::tempdir().unwrap();
    let mut recorded = String::from("groups:\n  - name: grafana-panels\n    rules:\n");
    for (i, expr) in exprs[alerts..].iter().enumerate() {
        recorded.push_str(&format!(
            "      - record: panel_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let path = dir.path().join("panels.yml");
    std::fs::write(&path, recorded).unwrap();
    run_promtool(&promtool, &["check", "rules"], &path, &root);
}

/// Runs `promtool <args> <file>` in `dir`; fails the test with what it said unless it passed.
fn run_promtool(
    promtool: &std::path::Path,
    args: &[&str],
    file: &std::path::Path,
    dir: &std::path::Path,
) {
    let out = std::process::Command::new(promtool)
        .args(args)
        .arg(file)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?} {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
