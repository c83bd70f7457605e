//! The Prometheus registry and every metric, with the names users of the earlier Python
//! system already chart. Label values come from bounded sets only (roles and providers from
//! the configuration, outcomes and routes from fixed lists): nothing a request carries becomes
//! a label as it is, so a forged request cannot grow the registry. Imports nothing of autodev.

use prometheus::{
    CounterVec, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// The name of every metric registered, whether or not it has a series yet.
    names: Vec<String>,
    pub tasks_total: IntCounterVec,
    pub task_duration_seconds: HistogramVec,
    pub provider_requests_total: IntCounterVec,
    pub active_worktrees: IntGauge,
    pub queue_size: IntGauge,
    pub running_tasks: IntGauge,
    pub git_operations_total: IntCounterVec,
    pub webhook_deliveries_total: IntCounterVec,
    pub github_requests_total: IntCounterVec,
    pub github_rate_limit_remaining: IntGaugeVec,
    pub github_rate_limit: IntGaugeVec,
    pub outbox_backlog: IntGauge,
    pub outbox_oldest_seconds: Gauge,
    pub agent_tokens_total: IntCounterVec,
    pub agent_cost_usd_total: CounterVec,
}

/// The webhook events named as themselves in `autodev_webhook_deliveries_total`; any other
/// name is counted as `other`.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "ping",
    "installation",
    "installation_repositories",
    "issues",
    "issue_comment",
    "check_run",
    "check_suite",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "push",
    "status",
    "star",
    "watch",
    "fork",
    "create",
    "delete",
    "workflow_run",
    "workflow_job",
];

/// `event` when it is one of [`WEBHOOK_EVENTS`], else `other`.
pub fn event_label(event: &str) -> &'static str {
    WEBHOOK_EVENTS
        .iter()
        .find(|e| **e == event)
        .copied()
        .unwrap_or("other")
}

/// The rate-limit pools GitHub names in `x-ratelimit-resource`; others count as `other`.
pub fn rate_limit_resource(resource: &str) -> &'static str {
    [
        "core",
        "search",
        "graphql",
        "integration_manifest",
        "code_search",
    ]
    .iter()
    .find(|r| **r == resource)
    .copied()
    .unwrap_or("other")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tasks_total = counter(
            "autodev_tasks_total",
            "Tasks that reached a final state",
            &["role", "status"],
        );
        let task_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "autodev_task_duration_seconds",
                "Wall time of task runs, by how they ended",
            )
            .buckets(vec![
                5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
            ]),
            &["role", "outcome"],
        )
        .expect("valid metric");
        let provider_requests_total = counter(
            "autodev_provider_requests_total",
            "Agent provider invocations by outcome",
            &["provider", "status"],
        );
        let active_worktrees =
            IntGauge::new("autodev_active_worktrees", "Tasks that hold a worktree")
                .expect("valid metric");
        let queue_size = IntGauge::new("autodev_queue_size", "Tasks waiting for a worker")
            .expect("valid metric");
        let running_tasks = IntGauge::new(
            "autodev_running_tasks",
            "Tasks a worker runs now (in any process on the database)",
        )
        .expect("valid metric");
        let git_operations_total = counter(
            "autodev_git_operations_total",
            "Git operations by kind",
            &["operation"],
        );
        let webhook_deliveries_total = counter(
            "autodev_webhook_deliveries_total",
            "Webhook deliveries by event and outcome",
            &["event", "outcome"],
        );
        let github_requests_total = counter(
            "autodev_github_requests_total",
            "GitHub API calls by route, method and outcome (status code, or transport)",
            &["route", "method", "outcome"],
        );
        let github_rate_limit_remaining = IntGaugeVec::new(
            Opts::new(
                "autodev_github_rate_limit_remaining",
                "Requests left in GitHub's rate-limit window, as its last answer said",
            ),
            &["resource"],
        )
        .expect("valid metric");
        let github_rate_limit = IntGaugeVec::new(
            Opts::new(
                "autodev_github_rate_limit",
                "The size of GitHub's rate-limit window, as its last answer said",
            ),
            &["resource"],
        )
        .expect("valid metric");
        let outbox_backlog = IntGauge::new(
            "autodev_outbox_backlog",
            "GitHub effects queued and not yet done",
        )
        .expect("valid metric");
        let outbox_oldest_seconds = Gauge::new(
            "autodev_outbox_oldest_seconds",
            "Age of the oldest GitHub effect not yet done (0 when none waits)",
        )
        .expect("valid metric");
        let agent_tokens_total = counter(
            "autodev_agent_tokens_total",
            "Tokens agents used, by provider, role and direction (input, output)",
            &["provider", "role", "direction"],
        );
        let agent_cost_usd_total = CounterVec::new(
            Opts::new(
                "autodev_agent_cost_usd_total",
                "What agents cost in US dollars, where the provider reports or prices it",
            ),
            &["provider", "role"],
        )
        .expect("valid metric");
        // Which autodev this is, as Prometheus exporters say it: one series, always 1.
        let build_info = IntGaugeVec::new(
            Opts::new(
                "autodev_build_info",
                "The autodev version this process runs",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let mut names = Vec::new();
        for c in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(tasks_total.clone()),
            Box::new(task_duration_seconds.clone()),
            Box::new(provider_requests_total.clone()),
            Box::new(active_worktrees.clone()),
            Box::new(queue_size.clone()),
            Box::new(running_tasks.clone()),
            Box::new(git_operations_total.clone()),
            Box::new(webhook_deliveries_total.clone()),
            Box::new(github_requests_total.clone()),
            Box::new(github_rate_limit_remaining.clone()),
            Box::new(github_rate_limit.clone()),
            Box::new(outbox_backlog.clone()),
            Box::new(outbox_oldest_seconds.clone()),
            Box::new(agent_tokens_total.clone()),
            Box::new(agent_cost_usd_total.clone()),
        ] {
            names.extend(c.desc().iter().map(|d| d.fq_name.clone()));
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            names,
            tasks_total,
            task_duration_seconds,
            provider_requests_total,
            active_worktrees,
            queue_size,
            running_tasks,
            git_operations_total,
            webhook_deliveries_total,
            github_requests_total,
            github_rate_limit_remaining,
            github_rate_limit,
            outbox_backlog,
            outbox_oldest_seconds,
            agent_tokens_total,
            agent_cost_usd_total,
        }
    }

    /// The names of every metric (a labelled one shows in [`Metrics::render`] only once it has
    /// a series).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_outside_are_bounded() {
        assert_eq!(event_label("issues"), "issues");
        assert_eq!(event_label("issues_x"), "other");
        assert_eq!(event_label(""), "other");
        assert_eq!(rate_limit_resource("core"), "core");
        assert_eq!(rate_limit_resource("made_up"), "other");
    }
}
