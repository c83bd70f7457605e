//! Group commit. Requests that take work in (`POST /tasks`, webhook deliveries) hand their
//! writes to one writer instead of each opening a transaction of its own. The writer runs
//! whatever has gathered (up to [`MAX_BATCH`]) in one transaction, each request's writes in a
//! savepoint of their own, so one that fails is undone alone, and answers every request once
//! the transaction is committed: nobody hears "done" before their rows would survive a crash.
//! One transaction for many requests is one commit for many (one WAL sync where `synchronous`
//! asks for one), and no request waits on SQLite's busy lock behind another's.

use std::any::Any;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::Connection;
use tokio::sync::{mpsc, oneshot};

use super::*;

/// Requests one transaction takes at most.
pub const MAX_BATCH: usize = 256;

type Written = anyhow::Result<Box<dyn Any + Send>>;

/// One request's writes: run on the writer's connection, inside the batch's transaction.
type Work = Box<dyn for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Written> + Send>;

struct Request {
    work: Work,
    answer: oneshot::Sender<Written>,
}

/// The way to the writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct Batcher {
    requests: mpsc::Sender<Request>,
}

impl Batcher {
    /// Starts the writer on `pool`. It runs until every `Batcher` is dropped. (A thread of its
    /// own was measured: slower, as the machine's cores are what the requests share.)
    pub fn start(pool: SqlitePool) -> Self {
        let (requests, queue) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write_batches(pool, queue));
        Self { requests }
    }

    /// Runs `work` in the next batch; its result once the batch is committed. An error of
    /// `work` undoes its writes only; an error of the batch (its commit) fails every request
    /// in it.
    pub async fn write<T, F>(&self, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, anyhow::Result<T>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            async move { work(conn).await.map(|t| Box::new(t) as Box<dyn Any + Send>) }.boxed()
        });
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

async fn write_batches(pool: SqlitePool, mut queue: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // What gathered while the last batch was written goes in the next: no waiting on a
    // timer, so a lone request is written at once.
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        tracing::trace!(requests = batch.len(), "writing a batch");
        write_batch(&pool, std::mem::take(&mut batch)).await;
    }
}

async fn write_batch(pool: &SqlitePool, batch: Vec<Request>) {
    let (works, answers): (Vec<Work>, Vec<oneshot::Sender<Written>>) =
        batch.into_iter().map(|r| (r.work, r.answer)).unzip();
    let mut written: Vec<Written> = Vec::with_capacity(works.len());
    let committed = run_batch(pool, works, &mut written).await;
    let mut written = written.into_iter();
    for answer in answers {
        let own = written.next();
        let _ = answer.send(match (&committed, own) {
            (Ok(()), Some(own)) => own,
            // Its own failure says more than the batch's.
            (Err(_), Some(Err(own))) => Err(own),
            (Err(e), _) => Err(anyhow::anyhow!("{e:#}")),
            (Ok(()), None) => Err(anyhow::anyhow!("the request was not written")),
        });
    }
}

/// Runs `works` in one transaction, each in a savepoint, pushing each one's result to
/// `written`; `Err` when the transaction could not be had or committed (nothing written).
///
/// The transaction is driven with plain statements, a savepoint's release and the next one's
/// start in one round trip to the connection's thread: per request, that trip is what costs
/// most. A connection that failed mid-way is closed rather than given back to the pool, in
/// whatever state SQLite left it.
async fn run_batch(
    pool: &SqlitePool,
    works: Vec<Work>,
    written: &mut Vec<Written>,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await.context("a connection for writing")?;
    let ran = async {
        sqlx::raw_sql("BEGIN IMMEDIATE; SAVEPOINT request")
            .execute(&mut *conn)
            .await
            .context("starting a write transaction")?;
        for work in works {
            // A request that panics fails alone, not the writer.
            let result = std::panic::AssertUnwindSafe(work(&mut conn))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("writing the request panicked")));
            let next = if result.is_ok() {
                "RELEASE request; SAVEPOINT request"
            } else {
                "ROLLBACK TO request; RELEASE request; SAVEPOINT request"
            };
            written.push(result);
            sqlx::raw_sql(next)
                .execute(&mut *conn)
                .await
                .context("ending a request's savepoint")?;
        }
        sqlx::raw_sql("RELEASE request; COMMIT")
            .execute(&mut *conn)
            .await
            .context("committing a batch of requests")?;
        anyhow::Ok(())
    }
    .await;
    if ran.is_err() {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        let _ = conn.detach().close().await;
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn scratch() -> (tempfile::TempDir, SqlitePool) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let pool = connect(&url, &crate::config::DatabaseConfig::default())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .execute(&pool)
            .await
            .unwrap();
        (dir, pool)
    }

    /// Many requests at once: every good one is written and told so, a failing one is undone
    /// alone and told why.
    #[tokio::test]
    async fn a_failing_request_is_undone_alone() {
        let (_dir, pool) = scratch().await;
        let batcher = Batcher::start(pool.clone());
        let mut asked = Vec::new();
        for n in 0..200i64 {
            let b = batcher.clone();
            asked.push(tokio::spawn(async move {
                b.write(move |conn| {
                    async move {
                        sqlx::query("INSERT INTO t (n) VALUES (?)")
                            .bind(n)
                            .execute(&mut *conn)
                            .await?;
                        // Every seventh fails after it wrote: its row must go.
                        anyhow::ensure!(n % 7 != 3, "request {n} refused");
                        Ok(n)
                    }
                    .boxed()
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
        let (_dir, pool) = scratch().await;
        let batcher = Batcher::start(pool.clone());
        let panicked = batcher
            .write(|_conn| async move { panic!("boom") as anyhow::Result<()> }.boxed())
            .await;
        assert!(panicked.is_err());
        let n = batcher
            .write(|conn| {
                async move {
                    sqlx::query("INSERT INTO t (n) VALUES (1)")
                        .execute(&mut *conn)
                        .await?;
                    Ok(1)
                }
                .boxed()
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
