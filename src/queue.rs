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

/// The queue of webhook deliveries waiting to be acted on.
pub const GITHUB_QUEUE: &str = "autodev.github";

/// A job: act on the delivery with this `X-GitHub-Delivery` id (its parsed event is stored
/// with it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandleDelivery {
    pub delivery: String,
}

/// Queues a delivery inside the caller's transaction; one job per delivery id.
pub async fn push_delivery(
    tx: &mut Transaction<'_, Sqlite>,
    delivery: &str,
) -> anyhow::Result<String> {
    let id = ulid::Ulid::generate();
    let args = serde_json::to_vec(&HandleDelivery {
        delivery: delivery.to_owned(),
    })?;
    let job = TaskBuilder::new(args)
        .task_id(apalis::prelude::TaskId::from_ulid(id))
        .idempotency_key(format!("delivery-{delivery}"))
        .build();
    apalis_sqlite::queries::push_tasks(&mut **tx, GITHUB_QUEUE, &[job])
        .await
        .map_err(|e| anyhow::anyhow!("queueing delivery {delivery}: {e}"))?;
    Ok(id.to_string())
}

/// A job: run task `task` for run number `run` (bumped by each retry).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RunTask {
    pub task: TaskKey,
    pub run: i64,
}

/// The idempotency key of a run: queueing the same run twice is dropped by the queue's unique
/// index, so at most one job exists per run.
pub fn idempotency_key(task: TaskKey, run: i64) -> String {
    format!("task-{task}-run-{run}")
}

/// Queues a run inside the caller's transaction; returns the job id (a ULID, as the queue
/// requires).
pub async fn push(
    tx: &mut Transaction<'_, Sqlite>,
    task: TaskKey,
    run: i64,
) -> anyhow::Result<String> {
    let id = ulid::Ulid::generate();
    let args = serde_json::to_vec(&RunTask { task, run })?;
    let job = TaskBuilder::new(args)
        .task_id(apalis::prelude::TaskId::from_ulid(id))
        .idempotency_key(idempotency_key(task, run))
        .build();
    apalis_sqlite::queries::push_tasks(&mut **tx, TASKS_QUEUE, &[job])
        .await
        .map_err(|e| anyhow::anyhow!("queueing job {id}: {e}"))?;
    Ok(id.to_string())
}

async fn handle(job: RunTask, engine: Data<Arc<Engine>>) -> Result<(), BoxDynError> {
    crate::worker::run_job(&engine, job)
        .await
        .map_err(|e| format!("{e:#}").into())
}

/// Runs task workers until `shutdown` fires. A worker that dies (the database went away, a
/// job that cannot be decoded) is started again under a new name after a pause, so one bad
/// moment does not leave the queue without a worker.
pub async fn run_workers(engine: Arc<Engine>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut generation = 0u32;
    loop {
        let name = if generation == 0 {
            engine.owner.clone()
        } else {
            format!("{}-{generation}", engine.owner)
        };
        let result = run_worker(&engine, name, shutdown.clone()).await;
        if shutdown.is_cancelled() {
            return result;
        }
        tracing::error!(
            "task worker stopped ({}); starting it again in 5s",
            match &result {
                Ok(()) => "no error".to_owned(),
                Err(e) => format!("{e:#}"),
            }
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        generation += 1;
    }
}

async fn run_worker(
    engine: &Arc<Engine>,
    name: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let workers = &engine.settings.file.workers;
    let config = Config::default()
        .queue(TASKS_QUEUE)
        .batch_size(workers.concurrency)
        .heartbeat_interval(Duration::from_secs(workers.heartbeat_seconds))
        .missed_heartbeats(workers.missed_heartbeats as usize);
    let storage = SqliteStorage::<RunTask>::new(&engine.pool)
        .with_config(config)
        .poll_with_interval(Duration::from_millis(500));
    let worker = WorkerBuilder::new(name.clone())
        .backend(storage)
        .data(engine.clone())
        .concurrency(workers.concurrency)
        .build(handle);
    tracing::info!(worker = %name, concurrency = workers.concurrency, "worker started");
    worker
        .run_until(async move {
            shutdown.cancelled().await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("worker stopped: {e}"))
}
