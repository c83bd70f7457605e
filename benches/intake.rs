//! The baselines of the intake benchmark (`scripts/bench-intake`), in the same build profile
//! as autodev:
//!
//! - `cargo bench --bench intake -- noop ADDR`: an axum server whose one handler does no
//!   work, for `wrk` to measure what HTTP alone costs here.
//! - `cargo bench --bench intake -- commits SYNCHRONOUS SECONDS`: one-row transactions
//!   committed one after another on a SQLite file in WAL mode with that `synchronous`
//!   setting, as fast as they go: commits a second.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.first().map(String::as_str) {
        Some("noop") => runtime.block_on(noop(args.get(1).map_or("127.0.0.1:18990", |a| a))),
        Some("commits") => {
            let sync = args.get(1).map_or("normal", |a| a);
            let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
            let dir = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
            let n = runtime.block_on(commits(&dir, sync, Duration::from_secs(seconds)));
            println!("{n:.0} commits/s (synchronous={sync})");
        }
        _ => eprintln!("usage: intake noop ADDR | intake commits SYNCHRONOUS SECONDS"),
    }
}

async fn noop(addr: &str) {
    let app = axum::Router::new().fallback(|| async { "{}" });
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    eprintln!(
        "noop listening on http://{}",
        listener.local_addr().unwrap()
    );
    axum::serve(listener, app).await.unwrap();
}

async fn commits(dir: &str, sync: &str, run: Duration) -> f64 {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let dir = tempfile::tempdir_in(dir).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("bench.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::from_str(sync).unwrap());
    let mut conn = options.connect().await.unwrap();
    sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < run {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (body) VALUES (?)")
            .bind("a task of about a hundred bytes, as a spec's row would hold in a real table")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}
