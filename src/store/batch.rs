//! Group commit. Requests that take work in (`POST /tasks`, webhook deliveries) hand their
//! writes to one writer instead of each opening a transaction of its own. The writer runs
//! whatever has gathered (up to [`MAX_BATCH`]) in one transaction, each request's writes in a
//! savepoint of their own, so one that fails is undone alone, and answers every request once
//! the transaction is committed: nobody hears "done" before their rows would survive a crash.
//! One transaction for many requests is one commit for many (one WAL sync where `synchronous`
//! asks for one), and no request waits on SQLite's busy lock behind another's.
//!
//! The writer is a thread with a connection of its own (rusqlite, on the SQLite library sqlx
//! links, with the pool's pragmas). A batch's statements run there one after another: on the
//! pool, every statement was a round trip to the connection's thread, and those trips were
//! most of what intake cost.
//!
//! The writer never copies the write-ahead log back into the database itself (SQLite's
//! automatic checkpoint, which stalled every request of the moment once every thousand
//! pages): a checkpointer thread with a third connection does, told by the writer when the
//! log has grown, while the writer goes on. Only a log the checkpointer cannot keep short
//! (eight times that) is checkpointed by the writer too.

use std::any::Any;
use std::path::PathBuf;

use sqlx::sqlite::SqliteSynchronous;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// Requests one transaction takes at most.
pub const MAX_BATCH: usize = 256;

/// Pages in the write-ahead log at which the checkpointer is told to copy them back (SQLite's
/// own default for its automatic checkpoint).
const CHECKPOINT_PAGES: i32 = 1000;

/// Pages at which the writer checkpoints itself: the checkpointer has not kept up.
const WRITER_CHECKPOINT_PAGES: i32 = 8 * CHECKPOINT_PAGES;

thread_local! {
    /// Pages in the write-ahead log after the writer's last commit ([`note_wal`]).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// The writer connection's WAL hook: it replaces SQLite's automatic checkpoint.
fn note_wal(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

type Written = anyhow::Result<Box<dyn Any + Send>>;

/// One request's writes: run on the writer's connection, inside the batch's transaction.
type Work = Box<dyn FnOnce(&Writer<'_>) -> Written + Send>;

struct Request {
    work: Work,
    answer: oneshot::Sender<Written>,
}

/// The way to the writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct Batcher {
    requests: mpsc::Sender<Request>,
}

/// The writer's connection, inside a batch's transaction: what a request may write.
/// Statements are prepared once and kept (`statement`).
pub struct Writer<'c> {
    conn: &'c rusqlite::Connection,
}

impl Writer<'_> {
    /// `sql`, prepared once per connection.
    pub(super) fn statement(&self, sql: &str) -> anyhow::Result<rusqlite::CachedStatement<'_>> {
        Ok(self.conn.prepare_cached(sql)?)
    }

    /// Queues `task` on `queue` as apalis's own `push_tasks` does (its
    /// `queries/task/sink.sql`, and its defaults): the table is apalis's, and its workers
    /// fetch what is written here as their own.
    pub fn push_job(&self, queue: &str, task: &apalis_sqlite::SqliteTask) -> anyhow::Result<()> {
        let id = task
            .task_id()
            .map(|id| id.to_string())
            .unwrap_or_else(|| ulid::Ulid::generate().to_string());
        let run_at = task
            .run_at()
            .unwrap_or_else(|| Utc::now().timestamp().max(0) as u64) as i64;
        let max_attempts = task.max_attempts().unwrap_or(25) as i64;
        let priority = task.priority().unwrap_or_default() as i64;
        let meta = serde_json::to_string(task.metadata()).unwrap_or_default();
        self.statement(
            "INSERT INTO Jobs VALUES (?1, ?2, ?3, 'Pending', 0, ?4, ?5, NULL, NULL, NULL, NULL,
               ?6, ?7, ?8)
             ON CONFLICT (job_type, idempotency_key) DO NOTHING",
        )?
        .execute(rusqlite::params![
            task.args,
            id,
            queue,
            max_attempts,
            run_at,
            priority,
            meta,
            task.idempotency_key()
        ])
        .with_context(|| format!("queueing a job on {queue}"))?;
        Ok(())
    }
}

/// A time as sqlx writes a `DateTime<Utc>` (RFC 3339), so rows from either are alike.
pub(super) fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

impl Batcher {
    /// Starts the writer on the database at `url` (its tables made: after [`migrate`]). It
    /// runs until every `Batcher` is dropped.
    pub fn start(url: &str, config: &DatabaseConfig) -> anyhow::Result<Self> {
        let opening = Opening::new(url, config)?;
        let conn = opening.open()?;
        let checkpointer = opening.open()?;
        let (checkpoint, checkpoints) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("autodev-checkpoints".into())
            .spawn(move || {
                // Ends with the writer, which holds the other end.
                let mut warned = None;
                while checkpoints.recv().is_ok() {
                    checkpoint_wal(&checkpointer, &mut warned);
                }
            })
            .context("starting the database checkpointer")?;
        let (requests, queue) = mpsc::channel(MAX_BATCH * 4);
        std::thread::Builder::new()
            .name("autodev-writer".into())
            .spawn(move || write_batches(opening, conn, queue, checkpoint))
            .context("starting the database writer")?;
        Ok(Self { requests })
    }

    /// Runs `work` in the next batch; its result once the batch is committed. An error of
    /// `work` undoes its writes only; an error of the batch (its commit) fails every request
    /// in it.
    pub async fn write<T, F>(&self, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Writer<'_>) -> anyhow::Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let work: Work = Box::new(move |w| work(w).map(|t| Box::new(t) as Box<dyn Any + Send>));
        self.requests
            .send(Request { work, answer })
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))?;
        let written = answered
            .await
            .map_err(|_| anyhow::anyhow!("the database writer has stopped"))??;
        Ok(*written
            .downcast::<T>()
            .expect("a request's answer has the type it asked for"))
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

/// How the writer's connection is opened: the pool's file and pragmas (`connect`).
struct Opening {
    path: PathBuf,
    synchronous: &'static str,
    busy_timeout: std::time::Duration,
}

impl Opening {
    fn new(url: &str, config: &DatabaseConfig) -> anyhow::Result<Self> {
        let options =
            SqliteConnectOptions::from_str(url).with_context(|| format!("database URL `{url}`"))?;
        let synchronous = match SqliteSynchronous::from_str(&config.synchronous)
            .map_err(|e| anyhow::anyhow!("database.synchronous: {e}"))?
        {
            SqliteSynchronous::Off => "OFF",
            SqliteSynchronous::Normal => "NORMAL",
            SqliteSynchronous::Full => "FULL",
            SqliteSynchronous::Extra => "EXTRA",
        };
        Ok(Self {
            path: options.get_filename().to_owned(),
            synchronous,
            busy_timeout: std::time::Duration::from_millis(config.busy_timeout_ms),
        })
    }

    fn open(&self) -> anyhow::Result<rusqlite::Connection> {
        let opened = || -> rusqlite::Result<rusqlite::Connection> {
            let conn = rusqlite::Connection::open_with_flags(
                &self.path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(self.busy_timeout)?;
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA foreign_keys = ON",
                self.synchronous
            ))?;
            conn.set_prepared_statement_cache_capacity(64);
            // SQLite's automatic checkpoint off: the checkpointer does it (`note_wal`).
            conn.wal_hook(Some(note_wal));
            Ok(conn)
        };
        opened().with_context(|| format!("opening database {}", self.path.display()))
    }
}

/// Copies what it can of the write-ahead log into the database, waiting for nobody (a
/// passive checkpoint); the log starts over at the next write once all of it is copied.
fn checkpoint_wal(conn: &rusqlite::Connection, warned: &mut Option<std::time::Instant>) {
    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match done {
        Ok((pages, copied)) => tracing::trace!(pages, copied, "checkpointed"),
        // Once a minute at most: on a full disk every checkpoint fails.
        Err(e) if warned.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60)) => {
            *warned = Some(std::time::Instant::now());
            tracing::warn!("checkpointing the database's write-ahead log: {e}");
        }
        Err(e) => tracing::debug!("checkpointing the database's write-ahead log: {e}"),
    }
}

fn write_batches(
    opening: Opening,
    conn: rusqlite::Connection,
    mut queue: mpsc::Receiver<Request>,
    checkpoint: std::sync::mpsc::SyncSender<()>,
) {
    let mut conn = Some(conn);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The log's size at which the writer checkpoints by itself next: once more for each
    // `WRITER_CHECKPOINT_PAGES` it grows (readers may hold it long), not after every batch.
    let mut own_checkpoint_at = WRITER_CHECKPOINT_PAGES;
    let mut warned = None;
    // What gathered while the last batch was written goes in the next: no waiting on a
    // timer, so a lone request is written at once.
    while queue.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        tracing::trace!(requests = batch.len(), "writing a batch");
        // A connection a failed batch left in doubt was closed; a new one for this batch.
        let opened = match conn.take() {
            Some(c) => Ok(c),
            None => opening.open(),
        };
        let (works, answers): (Vec<Work>, Vec<oneshot::Sender<Written>>) =
            std::mem::take(&mut batch)
                .into_iter()
                .map(|r| (r.work, r.answer))
                .unzip();
        let mut written: Vec<Written> = Vec::with_capacity(works.len());
        let committed = match opened {
            Ok(c) => {
                let ran = run_batch(&c, works, &mut written);
                if ran.is_err() {
                    let _ = c.execute_batch("ROLLBACK");
                }
                if ran.is_ok() {
                    let pages = WAL_PAGES.get();
                    if pages >= CHECKPOINT_PAGES {
                        // Full: a checkpoint is already asked for.
                        let _ = checkpoint.try_send(());
                    }
                    if pages < WRITER_CHECKPOINT_PAGES {
                        own_checkpoint_at = WRITER_CHECKPOINT_PAGES;
                    } else if pages >= own_checkpoint_at {
                        checkpoint_wal(&c, &mut warned);
                        own_checkpoint_at = pages.saturating_add(WRITER_CHECKPOINT_PAGES);
                    }
                }
                // Kept only when SQLite says no transaction is left open on it.
                if ran.is_ok() || c.is_autocommit() {
                    conn = Some(c);
                } else {
                    tracing::warn!(
                        "closing the database writer's connection to {}: a transaction is \
                         still open on it",
                        opening.path.display()
                    );
                }
                ran
            }
            Err(e) => Err(e),
        };
        // A batch a full disk failed fails its every request as a full disk (each answers
        // 507, not 500), though SQLite said so to one statement of one request only.
        let full = committed.as_ref().err().is_some_and(is_disk_full)
            || written
                .iter()
                .any(|w| w.as_ref().err().is_some_and(is_disk_full));
        let batch_failed = |e: &anyhow::Error| match full {
            true => anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOSPC))
                .context(format!("{e:#}")),
            false => anyhow::anyhow!("{e:#}"),
        };
        let mut written = written.into_iter();
        for answer in answers {
            let own = written.next();
            let _ = answer.send(match (&committed, own) {
                (Ok(()), Some(own)) => own,
                // Its own failure says more than the batch's.
                (Err(_), Some(Err(own))) => Err(own),
                (Err(e), _) => Err(batch_failed(e)),
                (Ok(()), None) => Err(anyhow::anyhow!("the request was not written")),
            });
        }
    }
}

/// Runs `works` in one transaction on `conn`, each in a savepoint, pushing each one's result
/// to `written`; `Err` when the transaction could not be had or committed (nothing written).
fn run_batch(
    conn: &rusqlite::Connection,
    works: Vec<Work>,
    written: &mut Vec<Written>,
) -> anyhow::Result<()> {
    let step = |sql: &str| -> anyhow::Result<()> {
        conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    };
    step("BEGIN IMMEDIATE").context("starting a write transaction")?;
    let writer = Writer { conn };
    for work in works {
        step("SAVEPOINT request").context("starting a request's savepoint")?;
        // A request that panics fails alone, not the writer.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&writer)))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("writing the request panicked")));
        let failed = result.is_err();
        // Kept before the savepoint's end, which fails too when SQLite has rolled back the
        // whole transaction (a full disk can make it): the request's own error says why.
        written.push(result);
        if failed {
            step("ROLLBACK TO request").context("undoing a request's writes")?;
        }
        step("RELEASE request").context("ending a request's savepoint")?;
    }
    step("COMMIT").context("committing a batch of requests")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scratch() -> (tempfile::TempDir, SqlitePool, Batcher) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let config = DatabaseConfig::default();
        let pool = connect(&url, &config).await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER PRIMARY KEY, at TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        let batcher = Batcher::start(&url, &config).unwrap();
        (dir, pool, batcher)
    }

    /// A request the writer is running until the sender is told: what is asked meanwhile
    /// gathers into the next batch.
    async fn hold(
        batcher: &Batcher,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let (started, has_started) = oneshot::channel();
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let holding = tokio::spawn({
            let batcher = batcher.clone();
            async move {
                batcher
                    .write(move |_| {
                        started.send(()).ok();
                        gate.recv().ok();
                        Ok(())
                    })
                    .await
            }
        });
        has_started.await.unwrap();
        (go, holding)
    }

    /// Many requests at once: every good one is written and told so, a failing one is undone
    /// alone and told why.
    #[tokio::test]
    async fn a_failing_request_is_undone_alone() {
        let (_dir, pool, batcher) = scratch().await;
        let mut asked = Vec::new();
        for n in 0..200i64 {
            let b = batcher.clone();
            asked.push(tokio::spawn(async move {
                b.write(move |w| {
                    w.statement("INSERT INTO t (n) VALUES (?)")?.execute([n])?;
                    // Every seventh fails after it wrote: its row must go.
                    anyhow::ensure!(n % 7 != 3, "request {n} refused");
                    Ok(n)
                })
                .await
            }));
        }
        let mut refused = 0;
        for (n, a) in asked.into_iter().enumerate() {
            match a.await.unwrap() {
                Ok(got) => assert_eq!(got, n as i64),
                Err(e) => {
                    assert_eq!(n % 7, 3, "{e:#}");
                    assert!(format!("{e:#}").contains("refused"), "{e:#}");
                    refused += 1;
                }
            }
        }
        let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(&pool)
            .await
            .unwrap();
        let want: Vec<i64> = (0..200).filter(|n| n % 7 != 3).collect();
        assert_eq!(rows, want);
        assert_eq!(refused, 200 - want.len());
    }

    #[tokio::test]
    async fn a_panicking_request_fails_alone() {
        let (_dir, pool, batcher) = scratch().await;
        let panicked = batcher
            .write(|w| {
                w.statement("INSERT INTO t (n) VALUES (7)")?.execute([])?;
                panic!("boom") as anyhow::Result<()>
            })
            .await;
        assert!(panicked.is_err());
        let n = batcher
            .write(|w| {
                w.statement("INSERT INTO t (n) VALUES (1)")?.execute([])?;
                Ok(1)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
        let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM t")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(rows, [1], "the panicked request's row is undone");
    }

    /// A batch whose commit fails (here: a deferred foreign key, checked at COMMIT) fails
    /// every request in it and writes none, and the writer goes on with the next batch.
    #[tokio::test]
    async fn a_failed_commit_fails_its_batch_and_the_writer_goes_on() {
        let (_dir, pool, batcher) = scratch().await;
        sqlx::query("CREATE TABLE c (p INTEGER REFERENCES t (n) DEFERRABLE INITIALLY DEFERRED)")
            .execute(&pool)
            .await
            .unwrap();
        // A request that waits holds the writer, so the next two gather into one batch.
        let (go, holding) = hold(&batcher).await;
        let mut orphan = Box::pin(batcher.write(|w| {
            w.statement("INSERT INTO c (p) VALUES (999)")?.execute([])?;
            Ok(())
        }));
        let mut good = Box::pin(batcher.write(|w| {
            w.statement("INSERT INTO t (n) VALUES (1)")?.execute([])?;
            Ok(())
        }));
        // One poll each hands the request to the writer's queue.
        assert!(futures::poll!(&mut orphan).is_pending());
        assert!(futures::poll!(&mut good).is_pending());
        go.send(()).unwrap();
        let (holding, orphan, good) = (holding.await.unwrap(), orphan.await, good.await);
        holding.unwrap();
        let e = orphan.unwrap_err();
        assert!(format!("{e:#}").contains("committing a batch"), "{e:#}");
        assert!(
            good.is_err(),
            "a request in a batch that was not committed is not told done"
        );
        batcher
            .write(|w| {
                w.statement("INSERT INTO t (n) VALUES (2)")?.execute([])?;
                Ok(())
            })
            .await
            .unwrap();
        let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM t")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(rows, [2]);
    }

    /// When a full disk fails a batch, every request in it hears of a full disk, not only
    /// the one whose statement SQLite told: here SQLite's rollback of the whole transaction
    /// (which a full disk can cause) under one request, beside a good one.
    #[tokio::test]
    async fn a_batch_a_full_disk_failed_fails_every_request_as_full() {
        let (_dir, pool, batcher) = scratch().await;
        let (go, holding) = hold(&batcher).await;
        let mut full = Box::pin(batcher.write(|w| {
            w.statement("INSERT INTO t (n) VALUES (1)")?.execute([])?;
            w.statement("ROLLBACK")?.execute([])?;
            Err::<(), _>(
                anyhow::Error::new(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    None,
                ))
                .context("inserting task"),
            )
        }));
        let mut good = Box::pin(batcher.write(|w| {
            w.statement("INSERT INTO t (n) VALUES (2)")?.execute([])?;
            Ok(())
        }));
        assert!(futures::poll!(&mut full).is_pending());
        assert!(futures::poll!(&mut good).is_pending());
        go.send(()).unwrap();
        holding.await.unwrap().unwrap();
        let (full, good) = (full.await.unwrap_err(), good.await.unwrap_err());
        assert!(is_disk_full(&full), "{full:#}");
        assert!(is_disk_full(&good), "{good:#}");
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }

    /// A time the writer stamps reads back through sqlx as the same instant, in the text
    /// form sqlx itself writes (rows ordered by time compare alike from either).
    #[tokio::test]
    async fn the_writer_stamps_time_as_sqlx_does() {
        let (_dir, pool, batcher) = scratch().await;
        let at = Utc::now();
        batcher
            .write(move |w| {
                w.statement("INSERT INTO t (n, at) VALUES (1, ?)")?
                    .execute([stamp(at)])?;
                Ok(())
            })
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (n, at) VALUES (2, ?)")
            .bind(at)
            .execute(&pool)
            .await
            .unwrap();
        let texts: Vec<String> = sqlx::query_scalar("SELECT at FROM t ORDER BY n")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(texts[0], texts[1]);
        let read: DateTime<Utc> = sqlx::query_scalar("SELECT at FROM t WHERE n = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(read, at);
    }

    /// What the writer commits reaches the database file, not only its write-ahead log: the
    /// checkpointer copies it back once the log has grown.
    #[tokio::test]
    async fn the_log_is_checkpointed_into_the_database() {
        let (dir, _pool, batcher) = scratch().await;
        let db = dir.path().join("t.db");
        let before = std::fs::metadata(&db).unwrap().len();
        // About 2,500 pages of log, one commit at a time.
        for n in 0..600i64 {
            batcher
                .write(move |w| {
                    w.statement("INSERT INTO t (n, at) VALUES (?, ?)")?
                        .execute(rusqlite::params![n, "x".repeat(16 * 1024)])?;
                    Ok(())
                })
                .await
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut size = before;
        while size < 4 << 20 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            size = std::fs::metadata(&db).unwrap().len();
        }
        assert!(
            size >= 4 << 20,
            "the database file holds {size} bytes (it held {before}): nothing was checkpointed"
        );
    }

    /// The writer's connection has the pool's pragmas.
    #[tokio::test]
    async fn the_writer_has_the_pools_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let config = DatabaseConfig {
            synchronous: "full".into(),
            busy_timeout_ms: 1234,
            ..DatabaseConfig::default()
        };
        let _pool = connect(&url, &config).await.unwrap();
        let batcher = Batcher::start(&url, &config).unwrap();
        let pragmas = batcher
            .write(|w| {
                let one = |sql: &str| -> anyhow::Result<String> {
                    Ok(w.statement(sql)?
                        .query_row([], |r| r.get::<_, rusqlite::types::Value>(0))
                        .map(|v| format!("{v:?}"))?)
                };
                Ok([
                    one("PRAGMA journal_mode")?,
                    one("PRAGMA synchronous")?,
                    one("PRAGMA foreign_keys")?,
                    one("PRAGMA busy_timeout")?,
                ])
            })
            .await
            .unwrap();
        assert_eq!(
            pragmas,
            [
                r#"Text("wal")"#,
                "Integer(2)", // FULL
                "Integer(1)",
                "Integer(1234)"
            ]
        );
    }

    /// Every column of the queue's table, as SQL text, for the job `id`.
    async fn job_row(pool: &SqlitePool, id: &str) -> Vec<String> {
        let columns = [
            "job",
            "id",
            "job_type",
            "status",
            "attempts",
            "max_attempts",
            "run_at",
            "last_result",
            "lock_at",
            "lock_by",
            "done_at",
            "priority",
            "metadata",
            "idempotency_key",
        ];
        let mut values = Vec::new();
        for c in columns {
            let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT quote({c}) FROM Jobs WHERE id = ?"
            )))
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
            values.push(format!("{c}={v}"));
        }
        values
    }

    /// A job the writer queues is the row apalis's own push writes, column for column
    /// (`run_at` to the second it was written), with a delay and an idempotency key too.
    #[tokio::test]
    async fn a_job_the_writer_queues_is_the_row_apalis_writes() {
        use apalis::prelude::{TaskBuilder, TaskId};
        let (dir, pool, _key) = scratch_store().await;
        let url = format!("sqlite://{}", dir.path().join("autodev.db").display());
        let batcher = Batcher::start(&url, &DatabaseConfig::default()).unwrap();
        let tasks = || {
            [
                TaskBuilder::new(b"{\"a\":1}".to_vec()),
                TaskBuilder::new(b"{\"b\":2}".to_vec())
                    .idempotency_key("effect-2")
                    .run_after(std::time::Duration::from_secs(90)),
            ]
        };
        for (n, (ours, theirs)) in tasks().into_iter().zip(tasks()).enumerate() {
            let id = ulid::Ulid::generate();
            let theirs = theirs.task_id(TaskId::from_ulid(id)).build();
            let mut conn = pool.acquire().await.unwrap();
            apalis_sqlite::queries::push_tasks(&mut *conn, "q", &[theirs])
                .await
                .unwrap();
            drop(conn);
            let by_apalis = job_row(&pool, &id.to_string()).await;
            sqlx::query("DELETE FROM Jobs")
                .execute(&pool)
                .await
                .unwrap();
            let ours = ours.task_id(TaskId::from_ulid(id)).build();
            batcher
                .write(move |w| w.push_job("q", &ours))
                .await
                .unwrap();
            let by_writer = job_row(&pool, &id.to_string()).await;
            for (a, w) in by_apalis.iter().zip(&by_writer) {
                if let (Some(a), Some(w)) = (a.strip_prefix("run_at="), w.strip_prefix("run_at=")) {
                    let (a, w) = (a.parse::<i64>().unwrap(), w.parse::<i64>().unwrap());
                    assert!((a - w).abs() <= 1, "job {n}: run_at {a} against {w}");
                } else {
                    assert_eq!(a, w, "job {n}");
                }
            }
            sqlx::query("DELETE FROM Jobs")
                .execute(&pool)
                .await
                .unwrap();
        }
    }
}
