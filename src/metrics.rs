//! The Prometheus registry and every metric, with the names users of the earlier Python
//! system already chart.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub tasks_total: IntCounterVec,
    pub task_duration_seconds: HistogramVec,
    pub provider_requests_total: IntCounterVec,
    pub active_worktrees: IntGauge,
    pub queue_size: IntGauge,
    pub git_operations_total: IntCounterVec,
    pub webhook_deliveries_total: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tasks_total = IntCounterVec::new(
            Opts::new("autodev_tasks_total", "Tasks that reached a final state"),
            &["role", "status"],
        )
        .expect("valid metric");
        let task_duration_seconds = HistogramVec::new(
            HistogramOpts::new("autodev_task_duration_seconds", "Wall time of task runs").buckets(
                vec![
                    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
                ],
            ),
            &["role"],
        )
        .expect("valid metric");
        let provider_requests_total = IntCounterVec::new(
            Opts::new(
                "autodev_provider_requests_total",
                "Agent provider invocations by outcome",
            ),
            &["provider", "status"],
        )
        .expect("valid metric");
        let active_worktrees =
            IntGauge::new("autodev_active_worktrees", "Tasks that hold a worktree")
                .expect("valid metric");
        let queue_size = IntGauge::new("autodev_queue_size", "Tasks waiting for a worker")
            .expect("valid metric");
        let git_operations_total = IntCounterVec::new(
            Opts::new("autodev_git_operations_total", "Git operations by kind"),
            &["operation"],
        )
        .expect("valid metric");
        let webhook_deliveries_total = IntCounterVec::new(
            Opts::new(
                "autodev_webhook_deliveries_total",
                "Webhook deliveries by event and outcome",
            ),
            &["event", "outcome"],
        )
        .expect("valid metric");
        // Which autodev this is, as Prometheus exporters say it: one series, always 1.
        let build_info = prometheus::IntGaugeVec::new(
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
        for c in [
            Box::new(build_info) as Box<dyn prometheus::core::Collector>,
            Box::new(tasks_total.clone()),
            Box::new(task_duration_seconds.clone()),
            Box::new(provider_requests_total.clone()),
            Box::new(active_worktrees.clone()),
            Box::new(queue_size.clone()),
            Box::new(git_operations_total.clone()),
            Box::new(webhook_deliveries_total.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            tasks_total,
            task_duration_seconds,
            provider_requests_total,
            active_worktrees,
            queue_size,
            git_operations_total,
            webhook_deliveries_total,
        }
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
