//! Stopping a queue worker without leaving SQLite's write lock taken: a backend wrapper
//! ([`Stoppable`]) and the handle that stops its worker ([`Stopper`]).
//!
//! apalis-sqlite fetches jobs, beats its heartbeat and acknowledges jobs each in a transaction
//! of its own, driven by the worker polling its backend. A worker told to stop while jobs still
//! run polls its backend no more until they end, so a fetch caught between its `UPDATE` and its
//! `COMMIT` keeps the database's write lock for as long as they run, and every write of theirs
//! (an interrupted task queueing itself again) waits on a lock that is waiting on them, until
//! `busy_timeout` fails both. The [`Stopper`] stops the worker, then closes the backend itself:
//! what was in flight is finished or dropped (rolled back), and jobs fetched but not begun are
//! queued again. The worker's own close, once its jobs have ended, acknowledges them as before.
//!
//! Owns nothing else; imports nothing of autodev's.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use apalis::prelude::*;
use apalis_core::backend::{BackendConfig, WireFormatBackend};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// A backend a [`Stopper`] can close while its worker still runs jobs.
pub struct Stoppable<B: BackendConfig + WireFormatBackend> {
    shared: Arc<Mutex<Shared<B>>>,
    // Kept beside the backend: the traits hand out references to them.
    config: B::Config,
    codec: B::Codec,
}

struct Shared<B> {
    backend: B,
    /// The worker has begun to close the backend: the [`Stopper`] leaves it alone from then.
    closed_by_worker: bool,
}

/// Stops the worker of a [`Stoppable`] backend and closes what the backend had in flight.
pub struct Stopper<B>(Arc<Mutex<Shared<B>>>);

impl<B> Clone for Stopper<B> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // A panic inside the backend's poll leaves its state as it was: still usable.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B> Stoppable<B>
where
    B: BackendConfig + WireFormatBackend,
    B::Config: Clone,
    B::Codec: Clone,
{
    pub fn new(backend: B) -> (Self, Stopper<B>) {
        let config = backend.config().clone();
        let codec = backend.codec().clone();
        let shared = Arc::new(Mutex::new(Shared {
            backend,
            closed_by_worker: false,
        }));
        (
            Self {
                shared: shared.clone(),
                config,
                codec,
            },
            Stopper(shared),
        )
    }
}

impl<B: Backend + Send + 'static> Stopper<B> {
    /// What `Worker::run_with_ctx` runs beside the worker: it stops the worker when `shutdown`
    /// fires.
    pub fn when(
        self,
        shutdown: CancellationToken,
    ) -> impl FnMut(WorkerContext) -> BoxFuture<'static, Result<(), WorkerError>> {
        move |worker| {
            let (stopper, shutdown) = (self.clone(), shutdown.clone());
            Box::pin(async move {
                shutdown.cancelled().await;
                stopper.stop(&worker).await;
                Ok(())
            })
        }
    }

    /// Stops `worker` (it takes no new job and ends once its running jobs have) and closes its
    /// backend now, unless the worker has begun to close it itself.
    pub async fn stop(&self, worker: &WorkerContext) {
        if let Err(e) = worker.stop() {
            tracing::debug!(worker = worker.name(), "stopping the worker: {e}");
        }
        let closed = std::future::poll_fn(|cx| {
            let mut shared = lock(&self.0);
            if shared.closed_by_worker {
                return Poll::Ready(Ok(()));
            }
            shared.backend.poll_close(cx, worker)
        })
        .await;
        if let Err(e) = closed {
            tracing::warn!(worker = worker.name(), "closing the worker's queue: {e}");
        }
    }
}

impl<B> Backend for Stoppable<B>
where
    B: Backend + BackendConfig + WireFormatBackend,
{
    type Task = B::Task;
    type Error = B::Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        let mut shared = lock(&self.shared);
        // Stopped between the worker's look and this call: nothing new is begun (the
        // `Stopper` may be closing the backend); polled again, the worker sees it stopped.
        if worker.is_shutting_down() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        shared.backend.poll_ready(cx, worker)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        let mut shared = lock(&self.shared);
        if worker.is_shutting_down() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        shared.backend.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        let mut shared = lock(&self.shared);
        shared.closed_by_worker = true;
        shared.backend.poll_close(cx, worker)
    }
}

impl<B> BackendConfig for Stoppable<B>
where
    B: BackendConfig + WireFormatBackend,
{
    type Args = B::Args;
    type Id = B::Id;
    type Kind = B::Kind;
    type Config = B::Config;
    type Layer = B::Layer;

    fn config(&self) -> &Self::Config {
        &self.config
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> Self::Layer {
        lock(&self.shared).backend.middleware(worker)
    }
}

impl<B> WireFormatBackend for Stoppable<B>
where
    B: BackendConfig + WireFormatBackend,
{
    type Compact = B::Compact;
    type Codec = B::Codec;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use apalis::prelude::*;
    use apalis_sqlite::{Config, SqliteStorage};
    use sqlx::SqlitePool;
    use tokio::sync::{Notify, oneshot};
    use tokio_util::sync::CancellationToken;

    use super::Stoppable;
    use crate::config::DatabaseConfig;
    use crate::store;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Probe(u32);

    impl crate::jobs::Job for Probe {
        const QUEUE: &'static str = "probe";

        fn idempotency_key(&self) -> Option<String> {
            None
        }
    }

    /// What the probe jobs see: job 1 says it started, waits to be let go, then writes.
    struct Gate {
        pool: SqlitePool,
        started: Notify,
        go: Notify,
        wrote: std::sync::Mutex<Option<oneshot::Sender<anyhow::Result<()>>>>,
        ran: std::sync::Mutex<Vec<u32>>,
    }

    async fn probe(job: Probe, gate: Data<Arc<Gate>>) -> Result<(), BoxDynError> {
        gate.ran.lock().unwrap().push(job.0);
        if job.0 == 1 {
            gate.started.notify_one();
            gate.go.notified().await;
            let new = store::NewTask {
                repo: &crate::core::ids::RepoName::local(),
                task_id: "written-while-stopping",
                role: "backend",
                title: "a write of a job its worker was told to stop",
                spec_json: "{}",
                branch: "auto/backend/written-while-stopping",
                job_id: None,
            };
            let wrote = store::insert_task(&gate.pool, &new).await.map(|_| ());
            if let Some(tell) = gate.wrote.lock().unwrap().take() {
                let _ = tell.send(wrote);
            }
        }
        Ok(())
    }

    /// A worker on queue `probe` as dispatch runs one, woken by `ticks` only.
    fn worker(
        pool: &SqlitePool,
        gate: &Arc<Gate>,
        name: &str,
        ticks: futures::channel::mpsc::UnboundedReceiver<()>,
        shutdown: &CancellationToken,
    ) -> tokio::task::JoinHandle<Result<(), WorkerError>> {
        let config = Config::default()
            .queue("probe")
            .batch_size(2)
            .heartbeat_interval(Duration::from_secs(1))
            // Jobs of a worker that vanished are taken back after a minute only: a job left
            // locked by the stopped worker would be seen.
            .missed_heartbeats(60);
        let storage = SqliteStorage::<Probe>::new(pool)
            .with_config(config)
            .poll_with_stream(ticks);
        let (storage, stopper) = Stoppable::new(storage);
        let worker = WorkerBuilder::new(name)
            .backend(storage)
            .data(gate.clone())
            .concurrency(2)
            .build(probe);
        tokio::spawn(worker.run_with_ctx(stopper.when(shutdown.clone())))
    }

    /// A fetch caught by the stop between its `UPDATE` and its `COMMIT` (here: its `UPDATE`
    /// waits on a lock held elsewhere) must not keep the write lock while the worker waits for
    /// its running job: that job's own write would wait on it until `busy_timeout`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_stopped_while_a_job_runs_leaves_the_database_unlocked() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("autodev.db").display());
        let config = DatabaseConfig {
            busy_timeout_ms: 3_000,
            ..DatabaseConfig::default()
        };
        let pool = store::connect(&url, &config).await.unwrap();
        store::migrate(&pool).await.unwrap();
        let (wrote, written) = oneshot::channel();
        let gate = Arc::new(Gate {
            pool: pool.clone(),
            started: Notify::new(),
            go: Notify::new(),
            wrote: std::sync::Mutex::new(Some(wrote)),
            ran: std::sync::Mutex::new(Vec::new()),
        });
        let mut sink =
            SqliteStorage::<Probe>::new(&pool).with_config(Config::default().queue("probe"));
        sink.push(Probe(1)).await.unwrap();

        let (tick, ticks) = futures::channel::mpsc::unbounded();
        let shutdown = CancellationToken::new();
        let run = worker(&pool, &gate, "probe-first", ticks, &shutdown);
        tick.unbounded_send(()).unwrap();
        gate.started.notified().await;
        // The worker has marked the job running, found no other, and waits for a tick.
        tokio::time::sleep(Duration::from_millis(300)).await;

        // A second job, written in a transaction that holds the write lock while a fetch
        // begins and waits for it; the worker is stopped, then the lock let go.
        let mut held = store::begin_write(&pool).await.unwrap();
        crate::jobs::push(&mut held, &Probe(2), Duration::ZERO)
            .await
            .unwrap();
        tick.unbounded_send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        held.commit().await.unwrap();
        // The fetch's `UPDATE` has its turn (SQLite's busy handler waits 100 ms at most).
        tokio::time::sleep(Duration::from_millis(300)).await;

        // The running job writes, and the worker ends once it has.
        gate.go.notify_one();
        let wrote = tokio::time::timeout(Duration::from_secs(30), written)
            .await
            .expect("the job wrote or failed")
            .unwrap();
        assert!(wrote.is_ok(), "the running job's write failed: {wrote:?}");
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the worker ended")
            .unwrap()
            .unwrap();
        assert_eq!(
            *gate.ran.lock().unwrap(),
            [1],
            "the stopped worker began no job"
        );

        // The second job was left to the next worker, not locked by the stopped one.
        let (tick, ticks) = futures::channel::mpsc::unbounded();
        let shutdown = CancellationToken::new();
        let run = worker(&pool, &gate, "probe-second", ticks, &shutdown);
        tick.unbounded_send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !gate.ran.lock().unwrap().contains(&2) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "job 2 was not run: left locked by the stopped worker"
            );
            tick.unbounded_send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        run.await.unwrap().unwrap();
    }
}
