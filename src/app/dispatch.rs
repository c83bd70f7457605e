//! Dispatch: apalis workers on SQLite (in the same database as the task rows) for the four
//! queues whose payloads `jobs` defines, each job handed to what performs it, a panic in a
//! handler ending that job only, and dead workers started again.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_sqlite::{Config, SqliteStorage};
use tokio_util::sync::CancellationToken;

use crate::app::stopping::Stoppable;
use crate::engine::Engine;
use crate::jobs::{HandleDelivery, HygieneJob, Job as _, OutboxJob, RunTask};

/// Runs a job's handler; a panic in it ends that job only (logged, not retried: it would panic
/// again), never the worker.
async fn unpanicked(
    what: String,
    job: impl std::future::Future<Output = Result<(), BoxDynError>> + Send + 'static,
) -> Result<(), BoxDynError> {
    match apart(job).await {
        Ok(result) => result,
        Err(panic) => {
            tracing::error!("{what} panicked: {panic}");
            Ok(())
        }
    }
}

/// Runs `job` on a tokio task of its own and waits for it; `Err` holds what a panic in it said.
///
/// apalis asks the database for the next job each time anything in its worker's task wakes,
/// and a job run inside that task wakes it at every step (each statement, each process it
/// waits on): a hundred needless queries a task, each taking SQLite's write lock. On a task of
/// its own a job wakes only itself, and the worker looks for jobs when one ends, one is queued
/// or its poll interval passes. Dropping the wait (the worker stopping) ends the job as well.
async fn apart<F>(job: F) -> Result<F::Output, String>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio_util::task::AbortOnDropHandle::new(tokio::spawn(job)).await {
        Ok(output) => Ok(output),
        Err(e) if e.is_panic() => Err(panic_message(e.into_panic().as_ref())),
        Err(e) => Err(e.to_string()),
    }
}

async fn handle_delivery(
    job: HandleDelivery,
    engine: Data<Arc<Engine>>,
) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    let what = format!("delivery {}", job.delivery);
    let span = tracing::info_span!("delivery", delivery = %job.delivery);
    unpanicked(what, handle_delivery_inner(job, engine).instrument(span)).await
}

async fn handle_delivery_inner(
    job: HandleDelivery,
    engine: Data<Arc<Engine>>,
) -> Result<(), BoxDynError> {
    let wait = crate::bot::handler::handle(&engine, &job.delivery)
        .await
        .map_err(|e| -> BoxDynError { format!("{e:#}").into() })?;
    if let Some(wait) = wait {
        let delivery = job.delivery.clone();
        if !crate::jobs::retry(&engine.pool, job, wait).await? {
            tracing::error!(
                %delivery,
                "giving up after {} attempts",
                crate::jobs::MAX_ATTEMPTS
            );
        }
    }
    Ok(())
}

async fn handle_outbox(job: OutboxJob, engine: Data<Arc<Engine>>) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    let what = format!("GitHub side effect {:?}", job.effect);
    let span = tracing::info_span!(
        "effect",
        effect = job.effect.kind(),
        task_pk = job.effect.task().map(|k| k.0),
        attempt = job.attempt,
    );
    let effect = async move {
        crate::bot::outbox::run(&engine, job)
            .await
            .map_err(|e| format!("{e:#}").into())
    };
    unpanicked(what, effect.instrument(span)).await
}

async fn handle_hygiene(job: HygieneJob, engine: Data<Arc<Engine>>) -> Result<(), BoxDynError> {
    let what = format!("hygiene job {:?}", job.job);
    unpanicked(what, async move {
        crate::maintenance::run(&engine, job)
            .await
            .map_err(|e| format!("{e:#}").into())
    })
    .await
}

async fn handle(job: RunTask, engine: Data<Arc<Engine>>) -> Result<(), BoxDynError> {
    let running = Arc::clone(&engine);
    let run = apart(async move { crate::run::pipeline::run_job(&running, job).await }).await;
    match run {
        Ok(result) => result.map_err(|e| format!("{e:#}").into()),
        // A panic ends this run only: the task is finished as `error`, and the worker goes on.
        Err(panic) => {
            crate::run::pipeline::finish_after_panic(&engine, job, &panic).await;
            Ok(())
        }
    }
}

/// What a panic said, as text.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// How often a worker looks for jobs that no wake-up announced (jobs queued by another
/// process, or delayed ones coming due).
const POLL_EVERY: Duration = Duration::from_millis(500);

/// One apalis worker on `$queue` for job type `$args`, handled by `$handler`, until `$shutdown`.
macro_rules! run_queue_worker {
    ($engine:expr, $name:expr, $queue:expr, $args:ty, $handler:expr, $concurrency:expr, $shutdown:expr) => {{
        let workers = &$engine.settings.file.workers;
        let config = Config::default()
            .queue($queue)
            .batch_size($concurrency)
            .heartbeat_interval(Duration::from_secs(workers.heartbeat_seconds))
            .missed_heartbeats(workers.missed_heartbeats as usize);
        let storage = SqliteStorage::<$args>::new(&$engine.pool)
            .with_config(config)
            .poll_with_stream($engine.wakeups.stream($queue, POLL_EVERY));
        let (storage, stopper) = Stoppable::new(storage);
        let worker = WorkerBuilder::new($name.clone())
            .backend(storage)
            .data($engine.clone())
            .concurrency($concurrency)
            .build($handler);
        tracing::info!(worker = %$name, queue = $queue, concurrency = $concurrency, "worker started");
        worker
            .run_with_ctx(stopper.when($shutdown.clone()))
            .await
            .map_err(|e| anyhow::anyhow!("worker {} stopped: {e}", $name))
    }};
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tasks,
    Github,
    Outbox,
    Hygiene,
}

/// Runs the workers until `shutdown` fires: tasks and hygiene always, in App mode the webhook
/// deliveries, and the GitHub side effects whenever there is a GitHub client (App mode, or
/// local mode with `GITHUB_TOKEN`). A worker that dies (the database went away, a job
/// that cannot be decoded) is started again under a new name after a pause, so one bad moment
/// does not leave a queue without a worker.
pub async fn run_workers(engine: Arc<Engine>, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Every queue, whatever the mode now: an App made on the setup page starts to deliver at
    // once, and jobs of a queue with nothing to do for them end at once.
    let kinds = vec![Kind::Tasks, Kind::Hygiene, Kind::Github, Kind::Outbox];
    let runs = kinds
        .into_iter()
        .map(|kind| supervise(engine.clone(), kind, shutdown.clone()));
    for result in futures::future::join_all(runs).await {
        result?;
    }
    Ok(())
}

async fn supervise(
    engine: Arc<Engine>,
    kind: Kind,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut generation = 0u32;
    loop {
        let name = match generation {
            0 => format!("{}-{}", engine.owner, kind.suffix()),
            g => format!("{}-{}-{g}", engine.owner, kind.suffix()),
        };
        engine.workers.set(kind.queue(), true);
        // Its own task: whatever happens inside (a panic included) ends that task, not the
        // other queues' workers.
        let run = tokio::spawn(run_worker(
            engine.clone(),
            kind,
            name.clone(),
            shutdown.clone(),
        ))
        .await;
        engine.workers.set(kind.queue(), false);
        let result = match run {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(anyhow::anyhow!(
                "worker {name} panicked: {}",
                panic_message(e.into_panic().as_ref())
            )),
            Err(e) => Err(anyhow::anyhow!("worker {name} was stopped: {e}")),
        };
        if shutdown.is_cancelled() {
            return result;
        }
        let why = match &result {
            Ok(()) => "no error".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        tracing::error!("{kind:?} worker stopped ({why}); starting it again in 5s");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
        generation += 1;
    }
}

impl Kind {
    fn suffix(self) -> &'static str {
        match self {
            Kind::Tasks => "tasks",
            Kind::Github => "github",
            Kind::Outbox => "outbox",
            Kind::Hygiene => "hygiene",
        }
    }

    fn queue(self) -> &'static str {
        match self {
            Kind::Tasks => RunTask::QUEUE,
            Kind::Github => HandleDelivery::QUEUE,
            Kind::Outbox => OutboxJob::QUEUE,
            Kind::Hygiene => HygieneJob::QUEUE,
        }
    }
}

async fn run_worker(
    engine: Arc<Engine>,
    kind: Kind,
    name: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("queue::run_worker", |_| Err(anyhow::anyhow!(
        "failpoint dispatch::run_worker"
    )));
    let concurrency = engine.settings.file.workers.concurrency;
    match kind {
        Kind::Tasks => run_queue_worker!(
            engine,
            name,
            RunTask::QUEUE,
            RunTask,
            handle,
            concurrency,
            shutdown
        ),
        Kind::Github => run_queue_worker!(
            engine,
            name,
            HandleDelivery::QUEUE,
            HandleDelivery,
            handle_delivery,
            2,
            shutdown
        ),
        Kind::Outbox => run_queue_worker!(
            engine,
            name,
            OutboxJob::QUEUE,
            OutboxJob,
            handle_outbox,
            2,
            shutdown
        ),
        Kind::Hygiene => run_queue_worker!(
            engine,
            name,
            HygieneJob::QUEUE,
            HygieneJob,
            handle_hygiene,
            1,
            shutdown
        ),
    }
}
