//! The durable queue: apalis on SQLite, in the same database as the task rows. A job carries
//! only the task key and the run it was queued for; the task row is the truth.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_sqlite::{Config, SqliteStorage};
use serde::{Deserialize, Serialize};
use sqlx::{Sqlite, Transaction};
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::ids::TaskKey;

/// The queue name of task jobs (named, so it does not depend on a Rust type path).
pub const TASKS_QUEUE: &str = "autodev.tasks";

/// A job: run task `task` for run number `run` (bumped by each retry).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RunTask {
    pub task: TaskKey,
    pub run: i64,
}

/// The job id for a run: deterministic, so queueing the same run twice is refused by the
/// queue's unique index.
pub fn job_id(task: TaskKey, run: i64) -> String {
    format!("task-{task}-run-{run}")
}

/// Queues a run inside the caller's transaction.
pub async fn push(
    tx: &mut Transaction<'_, Sqlite>,
    task: TaskKey,
    run: i64,
) -> anyhow::Result<String> {
    let id = job_id(task, run);
    let args = serde_json::to_vec(&RunTask { task, run })?;
    let job = TaskBuilder::new(args)
        .task_id(apalis::prelude::TaskId::from_string(id.clone()))
        .build();
    apalis_sqlite::queries::push_tasks(&mut **tx, TASKS_QUEUE, &[job])
        .await
        .map_err(|e| anyhow::anyhow!("queueing job {id}: {e}"))?;
    Ok(id)
}

async fn handle(job: RunTask, engine: Data<Arc<Engine>>) -> Result<(), BoxDynError> {
    crate::worker::run_job(&engine, job)
        .await
        .map_err(|e| format!("{e:#}").into())
}

/// Runs task workers until `shutdown` fires.
pub async fn run_workers(engine: Arc<Engine>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let workers = &engine.settings.file.workers;
    let config = Config::default()
        .queue(TASKS_QUEUE)
        .batch_size(workers.concurrency)
        .heartbeat_interval(Duration::from_secs(workers.heartbeat_seconds))
        .missed_heartbeats(workers.missed_heartbeats as usize);
    let storage = SqliteStorage::<RunTask>::new(&engine.pool)
        .with_config(config)
        .poll_with_interval(Duration::from_millis(500));
    let worker = WorkerBuilder::new(engine.owner.clone())
        .backend(storage)
        .data(engine.clone())
        .concurrency(workers.concurrency)
        .build(handle);
    tracing::info!(worker = %engine.owner, concurrency = workers.concurrency, "worker started");
    worker
        .run_until(async move {
            shutdown.cancelled().await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("worker stopped: {e}"))
}
