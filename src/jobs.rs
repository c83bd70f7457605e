//! Job payloads and the one way to queue them: a run of a task, a webhook delivery to act on,
//! a GitHub side effect (the outbox), a maintenance chore. Each payload names its queue and
//! its idempotency key; [`push`] writes it to the durable queue (apalis on SQLite), inside the
//! caller's transaction when given one (a `store::Conn`). What runs a job lives elsewhere
//! (`app::dispatch` dispatches; `run::pipeline`, `bot::handler`, `bot::outbox` and
//! `maintenance` perform); this module imports `core` and the store's connection types only,
//! never what performs a job, nor the engine.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::TaskBuilder;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::core::ids::TaskKey;

/// A payload for one of autodev's queues.
pub trait Job: Serialize {
    /// The queue's name (named, so it does not depend on a Rust type path).
    const QUEUE: &'static str;

    /// Queueing a payload with the same key again is dropped by the queue's unique index.
    fn idempotency_key(&self) -> Option<String>;
}

/// Queues `job` to run after `delay`; the job's id (a ULID, as the queue requires).
pub async fn push<J: Job>(
    conn: &mut crate::store::Conn,
    job: &J,
    delay: Duration,
) -> anyhow::Result<String> {
    push_as(conn, job, JobId::new(), delay).await
}

/// A queue job's id, chosen before the job is queued (so a row can name it as it is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobId(ulid::Ulid);

impl JobId {
    pub fn new() -> Self {
        Self(ulid::Ulid::generate())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// [`push`] with the id chosen beforehand.
pub async fn push_as<J: Job>(
    conn: &mut crate::store::Conn,
    job: &J,
    id: JobId,
    delay: Duration,
) -> anyhow::Result<String> {
    apalis_sqlite::queries::push_tasks(conn, J::QUEUE, &[queued(job, id, delay)?])
        .await
        .map_err(|e| anyhow::anyhow!("queueing a job on {}: {e}", J::QUEUE))?;
    Ok(id.to_string())
}

/// [`push_as`], in a group commit (`store::Batcher`).
pub fn push_written<J: Job>(
    w: &crate::store::Writer<'_>,
    job: &J,
    id: JobId,
    delay: Duration,
) -> anyhow::Result<String> {
    w.push_job(J::QUEUE, &queued(job, id, delay)?)?;
    Ok(id.to_string())
}

/// `job` as the queue stores it.
fn queued<J: Job>(
    job: &J,
    JobId(id): JobId,
    delay: Duration,
) -> anyhow::Result<apalis_sqlite::SqliteTask> {
    let mut builder =
        TaskBuilder::new(serde_json::to_vec(job)?).task_id(apalis::prelude::TaskId::from_ulid(id));
    if let Some(key) = job.idempotency_key() {
        builder = builder.idempotency_key(key);
    }
    if !delay.is_zero() {
        builder = builder.run_after(delay);
    }
    Ok(builder.build())
}

/// Wakes this process's worker of a queue once a job for it is committed, so that it fetches
/// at once instead of at its next poll; workers of other processes find the job at theirs.
/// (Not SQLite's update hook: it fires before the commit, when the job cannot be fetched yet.)
#[derive(Debug, Default)]
pub struct Wakeups(std::sync::Mutex<std::collections::HashMap<&'static str, Arc<Notify>>>);

impl Wakeups {
    fn of(&self, queue: &'static str) -> Arc<Notify> {
        self.0
            .lock()
            .expect("lock")
            .entry(queue)
            .or_default()
            .clone()
    }

    /// Says that a job of `J`'s queue was committed. A wake with no worker waiting is kept
    /// for the next one that waits.
    pub fn wake<J: Job>(&self) {
        self.of(J::QUEUE).notify_one();
    }

    /// What a worker of `queue` polls by: each wake, and every `every` in any case.
    pub fn stream(
        &self,
        queue: &'static str,
        every: Duration,
    ) -> std::pin::Pin<Box<dyn futures::Stream<Item = ()> + Send>> {
        let woken = futures::stream::unfold(self.of(queue), |notify| async move {
            notify.notified().await;
            Some(((), notify))
        });
        let ticks = futures::stream::unfold((), move |()| async move {
            tokio::time::sleep(every).await;
            Some(((), ()))
        });
        Box::pin(futures::stream::select(woken, ticks))
    }
}

/// How many times a delivery or a GitHub effect is tried before it is given up.
pub const MAX_ATTEMPTS: u32 = 8;

/// How many times the reconciler queues a GitHub effect again that the outbox gave up on
/// ([`MAX_ATTEMPTS`] tries each) before it is dropped for good.
pub const MAX_ROUNDS: u32 = 24;

/// A payload that is tried again, after a wait, when it fails for a reason that may pass.
pub trait Retried: Job + Sized {
    /// Tries so far, before this one.
    fn attempt(&self) -> u32;
    /// The same payload, one attempt further.
    fn again(self) -> Self;
}

/// Queues `job`'s next attempt to run after `wait`; `false`, and nothing queued, when it has
/// been tried [`MAX_ATTEMPTS`] times.
pub async fn retry<J: Retried>(
    pool: &crate::store::Pool,
    job: J,
    wait: Duration,
) -> anyhow::Result<bool> {
    if job.attempt() + 1 >= MAX_ATTEMPTS {
        return Ok(false);
    }
    let mut conn = pool.acquire().await?;
    push(&mut conn, &job.again(), wait).await?;
    Ok(true)
}

/// [`Retried`] for a payload with an `attempt` field.
macro_rules! retried {
    ($payload:ty) => {
        impl Retried for $payload {
            fn attempt(&self) -> u32 {
                self.attempt
            }

            fn again(self) -> Self {
                Self {
                    attempt: self.attempt + 1,
                    ..self
                }
            }
        }
    };
}

retried!(HandleDelivery);
retried!(OutboxJob);

/// [`push`] on a connection of its own, now.
pub async fn push_now<J: Job>(pool: &crate::store::Pool, job: &J) -> anyhow::Result<String> {
    let mut conn = pool.acquire().await?;
    push(&mut conn, job, Duration::ZERO).await
}

/// Run task `task` for run number `run` (bumped by each retry). A job carries only the key
/// and the run; the task row is the truth.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RunTask {
    pub task: TaskKey,
    pub run: i64,
}

impl Job for RunTask {
    const QUEUE: &'static str = "autodev.tasks";

    /// At most one job exists per run.
    fn idempotency_key(&self) -> Option<String> {
        Some(format!("task-{}-run-{}", self.task, self.run))
    }
}

/// Act on the delivery with this `X-GitHub-Delivery` id (its parsed event is stored with it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandleDelivery {
    pub delivery: String,
    #[serde(default)]
    pub attempt: u32,
}

impl Job for HandleDelivery {
    const QUEUE: &'static str = "autodev.github";

    /// One job per delivery and attempt.
    fn idempotency_key(&self) -> Option<String> {
        Some(match self.attempt {
            0 => format!("delivery-{}", self.delivery),
            n => format!("delivery-{}-{n}", self.delivery),
        })
    }
}

/// A side effect on GitHub.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    Reaction {
        installation: i64,
        owner: String,
        repo: String,
        issue: u64,
        content: String,
    },
    Reply {
        installation: i64,
        owner: String,
        repo: String,
        issue: u64,
        key: String,
        body: String,
    },
    /// Create or edit the task's status comment from its current state.
    Status { task: TaskKey },
    /// Create or conclude the task's check run on the commit last pushed.
    CheckRun { task: TaskKey },
    /// Open the pull request of a passed task's branch; its reviewers follow as an effect of
    /// their own.
    OpenPr { task: TaskKey },
    /// Ask for reviews of the task's pull request `number` in `owner/repo`: through the
    /// installation, or, without one, with local mode's `GITHUB_TOKEN`. Worked out (CODEOWNERS,
    /// the role's reviewers) when the pull request was opened, and queued with its record.
    Reviewers {
        task: TaskKey,
        installation: Option<i64>,
        owner: String,
        repo: String,
        number: i64,
        users: Vec<String>,
        teams: Vec<String>,
    },
}

impl Effect {
    /// The effect's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Effect::Reaction { .. } => "reaction",
            Effect::Reply { .. } => "reply",
            Effect::Status { .. } => "status",
            Effect::CheckRun { .. } => "check_run",
            Effect::OpenPr { .. } => "open_pr",
            Effect::Reviewers { .. } => "reviewers",
        }
    }

    /// The repository it acts on, where the effect names it (a task's effects find theirs
    /// in the task).
    pub fn task(&self) -> Option<TaskKey> {
        match self {
            Effect::Status { task }
            | Effect::CheckRun { task }
            | Effect::OpenPr { task }
            | Effect::Reviewers { task, .. } => Some(*task),
            Effect::Reaction { .. } | Effect::Reply { .. } => None,
        }
    }
}

/// An [`Effect`] and how many times it was tried.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxJob {
    pub effect: Effect,
    pub attempt: u32,
    /// How many times the reconciler queued it again after the outbox gave up on it.
    #[serde(default)]
    pub rounds: u32,
}

impl OutboxJob {
    /// The first try of `effect`.
    pub fn new(effect: Effect) -> Self {
        Self {
            effect,
            attempt: 0,
            rounds: 0,
        }
    }
}

impl Job for OutboxJob {
    const QUEUE: &'static str = "autodev.outbox";

    /// Effects look before they create, so a copy is harmless; none is dropped.
    fn idempotency_key(&self) -> Option<String> {
        None
    }
}

/// A maintenance chore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chore {
    /// Open pull requests for passed tasks that have none (`autodev open-prs`); queued by
    /// earlier versions as `prize`.
    #[serde(rename = "open_prs", alias = "prize")]
    OpenPrs,
    Cleanup,
    Checkpoint,
    Rebase,
    /// Finish half-done GitHub effects: those the outbox gave up on, and pushes whose record
    /// a stop cut off.
    Reconcile,
}

impl Chore {
    pub fn name(self) -> &'static str {
        match self {
            Chore::OpenPrs => "open-prs",
            Chore::Cleanup => "cleanup",
            Chore::Checkpoint => "checkpoint",
            Chore::Rebase => "rebase",
            Chore::Reconcile => "reconcile",
        }
    }
}

/// A chore for one tick of its schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HygieneJob {
    pub job: Chore,
    pub tick: u64,
}

impl Job for HygieneJob {
    const QUEUE: &'static str = "autodev.hygiene";

    /// Every process computes the same ticks: the chore runs once per tick.
    fn idempotency_key(&self) -> Option<String> {
        Some(format!("{}:{}", self.job.name(), self.tick))
    }
}
