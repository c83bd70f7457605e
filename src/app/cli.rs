//! Command-line interface: clap commands, human output and exit codes. Exit codes: 0 success,
//! 1 the task did not pass / the spec is invalid / the server said no, 2 bad usage or
//! configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::agent::providers;
use crate::config::{Env, Overrides, Settings};
use crate::core::ids::RepoName;
use crate::core::roles::Roles;
use crate::core::spec::{self, SpecFormat};
use crate::engine::{Engine, SubmitError};
use crate::store::{self, LeaseAttempt, TaskState};

#[derive(Debug, Parser)]
#[command(
    name = "autodev",
    version,
    about = "Turns task specs and GitHub issues into branches written by AI coding agents and checked by acceptance gates.",
    after_help = "Environment: AUTODEV_CONFIG, AUTODEV_BIND, AUTODEV_DATA_DIR, AUTODEV_DATABASE_URL, AUTODEV_API_TOKEN, \
AUTODEV_URL, AUTODEV_PUBLIC_URL, AUTODEV_ALLOWED_HOSTS, AUTODEV_LOG, AUTODEV_LOG_FORMAT, REPO_PATH, DEV_BRANCH; GitHub App mode: \
GITHUB_APP_ID, GITHUB_PRIVATE_KEY_PATH (or GITHUB_PRIVATE_KEY), GITHUB_WEBHOOK_SECRET, GITHUB_API_URL; \
local-mode pull requests: GITHUB_TOKEN; API providers: ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL, OPENAI_API_KEY, \
OPENAI_BASE_URL. Secrets may also be given as <NAME>_FILE.\n\
Configuration keys are documented in config/config.yaml; `autodev config check` shows the ones in effect."
)]
pub struct Cli {
    /// autodev's configuration file (default: $XDG_CONFIG_HOME/autodev/config.yaml when present;
    /// never a file of the working directory)
    #[arg(long, global = true, value_name = "FILE", env = "AUTODEV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the database, worktrees and agent homes live (default: ~/.local/share/autodev)
    #[arg(long, global = true, value_name = "DIR", env = "AUTODEV_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The repository tasks work on in local mode (default: the working directory)
    #[arg(long, global = true, value_name = "DIR", env = "REPO_PATH")]
    pub repo_path: Option<PathBuf>,
    /// Log format on standard error (default: text)
    #[arg(long, global = true, value_enum, env = "AUTODEV_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the configuration in effect, each value with where it comes from (a default, the
    /// configuration file, the environment, a flag); secrets are never printed. Exits 2 when
    /// the configuration cannot be read.
    #[command(
        after_help = "Example:\n  AUTODEV_CONFIG=/etc/autodev/config.yaml autodev config check"
    )]
    Check,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API, the workers and the scheduler in one process
    #[command(
        after_help = "Examples:\n  autodev serve                                   # 127.0.0.1:8000, the repository in the working directory\n  REPO_PATH=~/src/web autodev serve --workers 4\n  AUTODEV_API_TOKEN=... autodev serve --bind 0.0.0.0:8000 --workers 0   # API only; `autodev worker` runs tasks\nStops on SIGTERM after draining for workers.drain_seconds (30) plus about 15 s."
    )]
    Serve {
        /// Listen address (default: 127.0.0.1:8000)
        #[arg(long, value_name = "ADDR", env = "AUTODEV_BIND")]
        bind: Option<String>,
        /// Tasks this process runs at once (workers.concurrency); 0 serves the API only and
        /// leaves the work to `autodev worker` processes on the same database
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },
    /// Run workers only (more processes may share one database)
    #[command(
        after_help = "Examples:\n  AUTODEV_DATA_DIR=/var/lib/autodev autodev worker   # beside `autodev serve --workers 0` on the same data directory\n  autodev worker --metrics-bind 0.0.0.0:9100          # Prometheus scrapes http://<host>:9100/metrics"
    )]
    Worker {
        /// Serve /metrics, /healthz and /readyz on this address (none by default: a worker
        /// serves no HTTP otherwise). /metrics needs AUTODEV_API_TOKEN when it is set.
        #[arg(long, value_name = "ADDR", env = "AUTODEV_METRICS_BIND")]
        metrics_bind: Option<String>,
    },
    /// Run one task in the foreground without a server, printing each stage; exits 0 only if it passed
    #[command(
        after_help = "Examples:\n  autodev example sample_task > task.yaml && autodev run task.yaml\n  autodev run task.yaml --rerun      # again, on the task's branch"
    )]
    Run {
        /// Task spec file (YAML, or JSON by the .json extension)
        spec: PathBuf,
        /// Run again a task that already exists and has ended (continues on its branch)
        #[arg(long)]
        rerun: bool,
    },
    /// Send a task spec to a running server (AUTODEV_URL, with AUTODEV_API_TOKEN when it asks for one)
    #[command(
        after_help = "Example:\n  AUTODEV_URL=https://autodev.example.com AUTODEV_API_TOKEN=... autodev submit task.yaml"
    )]
    Submit {
        /// Task spec file (YAML, or JSON by the .json extension)
        spec: PathBuf,
    },
    /// Show a task from a running server (AUTODEV_URL, with AUTODEV_API_TOKEN when it asks for one)
    #[command(
        after_help = "Examples:\n  autodev status TSK-1234\n  autodev status issue-42 --repo octo/web"
    )]
    Status {
        /// Task id, e.g. TSK-1234, or issue-42 for GitHub issue #42
        id: String,
        /// The task's repository (owner/name); needed when the id exists in several
        #[arg(long, value_name = "OWNER/NAME")]
        repo: Option<String>,
        /// Print the server's JSON as it is
        #[arg(long)]
        json: bool,
    },
    /// List tasks from a running server, newest first
    #[command(
        after_help = "Examples:\n  autodev list\n  autodev list --state running\n  autodev list --repo octo/web --limit 20"
    )]
    List {
        /// Only tasks in this state: queued, running, passed, failed, error or cancelled
        #[arg(long)]
        state: Option<String>,
        /// Only tasks of this repository (owner/name, or `local`)
        #[arg(long, value_name = "OWNER/NAME")]
        repo: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print the server's JSON as it is
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running task on a running server
    #[command(after_help = "Example:\n  autodev cancel issue-42 --repo octo/web")]
    Cancel {
        /// Task id
        id: String,
        /// The task's repository (owner/name), when the id exists in several
        #[arg(long, value_name = "OWNER/NAME")]
        repo: Option<String>,
    },
    /// Run an ended task again on a running server (a new run, continuing its branch)
    #[command(after_help = "Example:\n  autodev retry TSK-1234")]
    Retry {
        /// Task id
        id: String,
        /// The task's repository (owner/name), when the id exists in several
        #[arg(long, value_name = "OWNER/NAME")]
        repo: Option<String>,
    },
    /// Check task spec files without running them; exits 1 if any is invalid
    #[command(after_help = "Example:\n  autodev validate specs/*.yaml")]
    Validate {
        /// Task spec files (YAML, or JSON by the .json extension)
        #[arg(required = true)]
        specs: Vec<PathBuf>,
    },
    /// List the roles (built-in, shipped, and from the configuration's roles_dir) and where each comes from
    #[command(after_help = "Example:\n  autodev roles")]
    Roles,
    /// List the providers in the configured order and whether each can run here; exits 1 if none can
    #[command(after_help = "Example:\n  autodev providers")]
    Providers,
    /// Print an example task spec, to start one of your own from (without a name: list them)
    #[command(
        after_help = "Examples:\n  autodev example\n  autodev example sample_task > task.yaml && autodev validate task.yaml"
    )]
    Example {
        /// Which example: sample_task, da_example, fm_example, compbio_example
        name: Option<String>,
    },
    /// autodev's own configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Save a work-in-progress commit of every running task now (refs/autodev/checkpoints/<id>; pushed in App mode)
    #[command(after_help = "Example:\n  autodev checkpoint")]
    Checkpoint,
    /// Open pull requests now for passed tasks that have none: App tasks through the App, local ones by pushing to a GitHub `origin` with GITHUB_TOKEN
    #[command(
        name = "open-prs",
        alias = "prize",
        after_help = "Example:\n  GITHUB_TOKEN=... autodev open-prs   # exits 1 if any could not be opened\n(`prize` is its old name, still accepted.)"
    )]
    OpenPrs,
    /// Without a sandbox: runs the command and, when it ends, ends everything it started
    /// (autodev starts this itself)
    #[command(hide = true)]
    Reap {
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Inside the agent sandbox: passes connections on the sandbox's loopback to autodev's
    /// egress proxy, and runs the command (autodev starts this itself)
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Parses arguments, runs the command, and returns the process exit code.
pub async fn main() -> i32 {
    let cli = Cli::parse();
    // Around a job: no configuration, no logging, just the shim.
    if let Command::Reap { command } = &cli.command {
        return crate::proc::exec::reap(command);
    }
    if let Command::Relay {
        socket,
        port,
        command,
    } = &cli.command
    {
        return crate::proc::egress::relay(socket, *port, command);
    }
    let env = Env::from_process();
    let bind = match &cli.command {
        Command::Serve { bind, .. } => bind.clone(),
        _ => None,
    };
    let overrides = Overrides {
        config: cli.config.clone(),
        bind,
        data_dir: cli.data_dir.clone(),
        repo: cli.repo_path.clone(),
    };
    let settings = match Settings::load(env, overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("autodev: configuration error: {e:#}");
            return 2;
        }
    };
    // `run` prints each step on standard output; its log says only what goes wrong, unless
    // AUTODEV_LOG asks for more.
    let mut settings = settings;
    if matches!(cli.command, Command::Run { .. }) && settings.env.get("AUTODEV_LOG").is_none() {
        settings.log_filter = "warn".into();
    }
    init_logging(&settings, cli.log_format);
    // Jobs this process runs without a sandbox run under `autodev reap`.
    crate::proc::sandbox::use_reaper();
    match dispatch(cli.command, settings).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("autodev: {e:#}");
            2
        }
    }
}

fn init_logging(settings: &Settings, flag: Option<LogFormat>) {
    let format = flag.unwrap_or(match settings.env.get("AUTODEV_LOG_FORMAT") {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    });
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<i32> {
    match command {
        Command::Serve { workers, .. } => {
            let mut settings = settings;
            if let Some(n) = workers {
                settings.file.workers.concurrency = n;
            }
            serve(settings, Http::Api).await
        }
        Command::Worker { metrics_bind } => {
            let metrics = match metrics_bind {
                Some(addr) => Some(addr.parse::<SocketAddr>().with_context(|| {
                    format!("--metrics-bind `{addr}` is not an address such as 0.0.0.0:9100")
                })?),
                None => None,
            };
            serve(settings, Http::Metrics(metrics)).await
        }
        Command::Run { spec, rerun } => run(settings, &spec, rerun).await,
        Command::Submit { spec } => submit(&settings, &spec).await,
        Command::Status { id, repo, json } => status(&settings, &id, repo.as_deref(), json).await,
        Command::List {
            state,
            repo,
            limit,
            json,
        } => list(&settings, state.as_deref(), repo.as_deref(), limit, json).await,
        Command::Cancel { id, repo } => act(&settings, &id, repo.as_deref(), "cancel").await,
        Command::Retry { id, repo } => act(&settings, &id, repo.as_deref(), "retry").await,
        Command::Validate { specs } => validate(&settings, &specs),
        Command::Roles => list_roles(&settings),
        Command::Providers => list_providers(&settings),
        Command::Example { name } => Ok(example(name.as_deref())),
        Command::Config {
            action: ConfigAction::Check,
        } => {
            print!("{}", crate::app::show_config::render(&settings)?);
            Ok(0)
        }
        Command::OpenPrs => open_prs(settings).await,
        Command::Relay { .. } | Command::Reap { .. } => {
            unreachable!("the shims run before configuration is read")
        }
        Command::Checkpoint => {
            let engine = Engine::open(settings).await?;
            let n = crate::maintenance::checkpoint(&engine).await?;
            println!("{n} checkpoint(s) saved");
            Ok(0)
        }
    }
}

/// What HTTP a process serves: all of it (`serve`), or a worker's metrics and probes on an
/// address of their own, if one is given.
enum Http {
    Api,
    Metrics(Option<SocketAddr>),
}

async fn serve(settings: Settings, http: Http) -> anyhow::Result<i32> {
    let addr: SocketAddr = settings.bind.parse().with_context(|| {
        format!(
            "AUTODEV_BIND `{}` is not an address such as 127.0.0.1:8000",
            settings.bind
        )
    })?;
    let api = matches!(http, Http::Api);
    if let Http::Metrics(Some(metrics)) = &http
        && !metrics.ip().is_loopback()
        && settings.api_token.is_none()
    {
        bail!(
            "refusing to serve metrics on {metrics} without AUTODEV_API_TOKEN: set it (Prometheus then sends it as a bearer token), or bind to 127.0.0.1"
        );
    }
    if api && !addr.ip().is_loopback() && settings.api_token.is_none() {
        bail!(
            "refusing to listen on {addr} without AUTODEV_API_TOKEN: anyone who reaches it could run agents. Set AUTODEV_API_TOKEN, or bind to 127.0.0.1"
        );
    }
    crate::git::ops::check_data_dir_outside(&settings.repo_path, &settings.data_dir)?;
    if settings.file.workers.concurrency > 0 && usable_providers(&settings) == 0 {
        tracing::warn!(
            "no configured provider can run here: every task will end `error` until one can (`autodev providers` says what is missing)"
        );
    }
    let engine = Engine::open(settings).await?;
    // Task after task: the next one's checkout is made while an agent works. Only in the
    // sandbox, where no agent can reach a spare that another task's agent will work in.
    if engine.sandbox.is_some() {
        engine.git.make_spares_ahead();
    }
    if api && let Some(code) = engine.setup.code() {
        match &engine.settings.public_url {
            Some(public) => tracing::warn!(
                "no GitHub App is configured: create one at {public}/setup?code={code} (this link works until the App is made)"
            ),
            None => tracing::info!(
                "local mode; to create a GitHub App from autodev's setup page, set AUTODEV_PUBLIC_URL"
            ),
        }
    }
    // The engine's own: open event streams end with it, or the HTTP server would wait for
    // them before the workers drain.
    let shutdown = engine.stopping.clone();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    tokio::spawn(sweep_periodically(engine.clone(), shutdown.clone()));
    tokio::spawn(crate::maintenance::run_schedules(
        engine.clone(),
        shutdown.clone(),
    ));
    let workers = if engine.settings.file.workers.concurrency > 0 {
        Some(tokio::spawn(crate::app::dispatch::run_workers(
            engine.clone(),
            shutdown.clone(),
        )))
    } else {
        tracing::info!("no workers in this process (--workers 0)");
        None
    };
    if let Http::Metrics(Some(addr)) = http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} for /metrics"))?;
        let bound = listener.local_addr()?;
        tracing::info!("worker metrics on http://{bound}/metrics");
        let app = crate::web::api::worker_router(engine.clone(), bound);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!("the metrics server stopped: {e:#}");
            }
        });
    }
    if api {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(
            "autodev listening on http://{} (data in {}, repository {})",
            listener.local_addr()?,
            engine.settings.data_dir.display(),
            engine.settings.repo_path.display()
        );
        let app = crate::web::api::router(engine.clone(), listener.local_addr()?);
        let stop = shutdown.clone();
        // Peers' addresses, so one client cannot take every turn to send a webhook body.
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("HTTP server")?;
    }
    shutdown.cancelled().await;
    if let Some(workers) = workers {
        drain(&engine, workers).await;
    }
    Ok(0)
}

/// How long interrupted runs get to commit (and push) their work and queue their tasks again.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// After SIGTERM: no new job is taken; running tasks get `workers.drain_seconds` to end, then
/// are interrupted (their work kept, their agents stopped, their tasks queued again at once).
async fn drain(engine: &Engine, workers: tokio::task::JoinHandle<anyhow::Result<()>>) {
    let grace = engine.settings.file.workers.drain();
    let running = engine.running_count();
    if running > 0 {
        tracing::info!(
            "waiting up to {}s for {running} running task(s)",
            grace.as_secs()
        );
    }
    let deadline = tokio::time::Instant::now() + grace;
    while engine.running_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let running = engine.running_count();
    if running > 0 {
        tracing::info!("interrupting {running} running task(s); they are queued again");
    }
    engine.interrupt_all();
    match tokio::time::timeout(INTERRUPT_GRACE, workers).await {
        Ok(Ok(Err(e))) => tracing::warn!("{e:#}"),
        Err(_) => tracing::warn!(
            "workers did not stop within {}s of the interruption",
            INTERRUPT_GRACE.as_secs()
        ),
        _ => {}
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Stops agent process groups of workers that died, at start and then every heartbeat.
async fn sweep_periodically(engine: Arc<Engine>, shutdown: CancellationToken) {
    let every =
        std::time::Duration::from_secs(engine.settings.file.workers.heartbeat_seconds.max(1));
    loop {
        // A disk that filled up: room for the reserve again means new work is taken again; no
        // room, and ended tasks' worktrees give theirs.
        // Looked at every sweep, not only when a write of autodev's fails: the queue's own
        // writes (its heartbeats) find a full disk first, and must find the reserve's room.
        if engine.disk.release_if_full() && !engine.disk.restore() {
            match crate::maintenance::free_ended_worktrees(&engine).await {
                Ok(n) if n > 0 => {
                    tracing::warn!("the disk is full: removed {n} ended task(s)' worktrees")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("freeing worktrees on a full disk: {e:#}"),
            }
        }
        if let Err(e) = engine.sweep_leftovers().await {
            tracing::warn!("sweeping left-over agents: {e:#}");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn read_spec(
    settings: &Settings,
    path: &Path,
    roles: &Roles,
) -> anyhow::Result<Result<spec::TaskSpec, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(spec::parse(
        &text,
        SpecFormat::from_path(path),
        roles,
        &settings.file.limits,
    )
    .map_err(|e| format!("{}: {e}", path.display())))
}

async fn run(settings: Settings, path: &Path, rerun: bool) -> anyhow::Result<i32> {
    crate::git::ops::check_data_dir_outside(&settings.repo_path, &settings.data_dir)?;
    let engine = Engine::open(settings).await?;
    let spec = match read_spec(&engine.settings, path, &engine.roles)? {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(1);
        }
    };
    let repo = RepoName::local();
    let key = match engine.insert_for_foreground(&spec, &repo).await {
        Ok(key) => key,
        Err(SubmitError::Duplicate { task_id, .. }) => {
            let row = store::find_task(&engine.pool, &repo, &task_id)
                .await?
                .context("task vanished")?;
            if !rerun {
                eprintln!(
                    "autodev: task `{task_id}` already exists ({}); use another id, or --rerun to run it again on {}",
                    row.state, row.branch
                );
                return Ok(1);
            }
            if store::requeue(&engine.pool, row.pk).await?.is_none() {
                eprintln!(
                    "autodev: task `{task_id}` is {} elsewhere; wait for it to end",
                    row.state
                );
                return Ok(1);
            }
            row.pk
        }
        Err(SubmitError::Other(e)) => return Err(e),
    };
    let row = store::get_task(&engine.pool, key)
        .await?
        .context("task vanished")?;
    println!("task {} ({}) on branch {}", spec.id, spec.role, row.branch);
    let mut live = engine.subscribe();
    let printer = tokio::spawn(async move {
        // Each event once, and a heartbeat while nothing happens (an agent at work).
        const QUIET: std::time::Duration = std::time::Duration::from_secs(30);
        let mut last = std::time::Instant::now();
        loop {
            match tokio::time::timeout(QUIET, live.recv()).await {
                Ok(Ok(ev)) if ev.task == key => {
                    println!("[{}] {}", ev.kind, ev.message);
                    last = std::time::Instant::now();
                }
                Ok(Ok(_)) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) => return,
                Err(_) => println!(
                    "[working] {} since the last step",
                    spec::human_duration(std::time::Duration::from_secs(last.elapsed().as_secs()))
                ),
            }
        }
    });
    let ttl = engine.settings.file.workers.orphan_after();
    let leased =
        match store::acquire_lease(&engine.pool, key, row.run_seq, &engine.owner, ttl).await? {
            LeaseAttempt::Acquired(row) => row,
            other => bail!("could not take the task: {other:?}"),
        };
    let cancel_engine = engine.clone();
    let on_ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("autodev: cancelling (Ctrl-C)");
            let _ = cancel_engine.cancel(key).await;
        }
    });
    let state = crate::run::pipeline::run_leased(&engine, *leased).await?;
    on_ctrl_c.abort();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    printer.abort();
    let row = store::get_task(&engine.pool, key)
        .await?
        .context("task vanished")?;
    println!(
        "{} {}: {} (branch {}, head {})",
        row.task_id,
        row.role,
        row.state,
        row.branch,
        row.head_sha.as_deref().unwrap_or("-")
    );
    if let Some(e) = &row.last_error {
        println!("last error: {e}");
    }
    if state == TaskState::Passed
        && row.repo_name().is_local()
        && engine.settings.github_token.is_some()
        && (engine.settings.file.hygiene.pr_on_pass || row.pr_number.is_some())
    {
        use crate::bot::outbox::{self, PrOutcome};
        match outbox::open_pr_now(&engine, key).await {
            Ok(PrOutcome::Open(n)) => println!("pull request #{n} open for {}", row.branch),
            Ok(PrOutcome::NotOpened(why)) => println!("no pull request: {why}"),
            // Queued already when the task passed: a server or worker tries again.
            Err(e) => println!(
                "no pull request yet: {e} (a running `autodev serve` or `autodev worker` tries again)"
            ),
        }
    }
    Ok(if state == TaskState::Passed { 0 } else { 1 })
}

fn client(settings: &Settings) -> anyhow::Result<(reqwest::Client, reqwest::header::HeaderMap)> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = &settings.api_token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", token.expose_secret())
                .parse()
                .context("AUTODEV_API_TOKEN is not a valid header value")?,
        );
    }
    Ok((reqwest::Client::new(), headers))
}

async fn submit(settings: &Settings, path: &Path) -> anyhow::Result<i32> {
    let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let content_type = match SpecFormat::from_path(path) {
        SpecFormat::Json => "application/json",
        SpecFormat::Yaml => "application/yaml",
    };
    let (client, headers) = client(settings)?;
    let url = format!("{}/tasks", settings.server_url);
    let resp = client
        .post(&url)
        .headers(headers)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .with_context(|| format!("reaching {url} (is `autodev serve` running? AUTODEV_URL)"))?;
    let status = resp.status();
    let json: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_success() {
        println!(
            "queued task {} as job {}",
            json["task_id"].as_str().unwrap_or("?"),
            json["job_id"].as_str().unwrap_or("?")
        );
        Ok(0)
    } else {
        eprintln!(
            "autodev: server answered {status}: {}",
            json["error"].as_str().unwrap_or(&json.to_string())
        );
        Ok(1)
    }
}

/// The API path of task `id`, of `repo` when given.
fn task_path(id: &str, repo: Option<&str>) -> anyhow::Result<String> {
    match repo {
        None | Some("local") => Ok(format!("/tasks/{id}")),
        Some(r) => match r.split_once('/') {
            Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(format!("/repos/{owner}/{name}/tasks/{id}"))
            }
            _ => bail!("--repo `{r}` is not owner/name"),
        },
    }
}

/// Calls the server; its JSON answer, or `None` (having said why) when it did not succeed.
async fn call(
    settings: &Settings,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let (client, headers) = client(settings)?;
    let url = format!("{}{path}", settings.server_url);
    let resp = client
        .request(method, &url)
        .headers(headers)
        .send()
        .await
        .with_context(|| format!("reaching {url} (is `autodev serve` running? AUTODEV_URL)"))?;
    let code = resp.status();
    let json: serde_json::Value = resp.json().await.unwrap_or_default();
    if !code.is_success() {
        eprintln!(
            "autodev: server answered {code}: {}",
            json["error"].as_str().unwrap_or(&json.to_string())
        );
        return Ok(None);
    }
    Ok(Some(json))
}

async fn list(
    settings: &Settings,
    state: Option<&str>,
    repo: Option<&str>,
    limit: u32,
    raw: bool,
) -> anyhow::Result<i32> {
    let mut path = format!("/tasks?limit={limit}");
    if let Some(s) = state {
        path.push_str(&format!("&state={s}"));
    }
    if let Some(r) = repo {
        path.push_str(&format!("&repo={r}"));
    }
    let Some(json) = call(settings, reqwest::Method::GET, &path).await? else {
        return Ok(1);
    };
    if raw {
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(0);
    }
    let tasks = json.as_array().cloned().unwrap_or_default();
    if tasks.is_empty() {
        println!("no tasks");
        return Ok(0);
    }
    println!(
        "{:<24} {:<28} {:<10} {:<12} {:>6} {:>9}",
        "ID", "REPOSITORY", "STATE", "ROLE", "ROUNDS", "COST"
    );
    for t in tasks {
        let s = |k: &str| t[k].as_str().unwrap_or("-").to_owned();
        let cost = t["cost_usd"]
            .as_f64()
            .map(|c| format!("${c:.2}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<28} {:<10} {:<12} {:>6} {:>9}",
            s("id"),
            s("repo"),
            s("state"),
            t["spec"]["role"].as_str().unwrap_or("-"),
            t["rounds"],
            cost
        );
    }
    Ok(0)
}

/// `cancel` or `retry` a task.
async fn act(
    settings: &Settings,
    id: &str,
    repo: Option<&str>,
    action: &str,
) -> anyhow::Result<i32> {
    let path = format!("{}/{action}", task_path(id, repo)?);
    let Some(json) = call(settings, reqwest::Method::POST, &path).await? else {
        return Ok(1);
    };
    // A retry answers with the new job; a cancel with the task.
    let state = json["state"]
        .as_str()
        .unwrap_or(if action == "retry" { "queued" } else { "?" });
    println!("{id}: {state}");
    Ok(0)
}

async fn status(
    settings: &Settings,
    id: &str,
    repo: Option<&str>,
    raw: bool,
) -> anyhow::Result<i32> {
    let Some(json) = call(settings, reqwest::Method::GET, &task_path(id, repo)?).await? else {
        return Ok(1);
    };
    if raw {
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(0);
    }
    let s = |k: &str| json[k].as_str().unwrap_or("-").to_owned();
    println!("{} [{}] {}", s("id"), s("role"), s("title"));
    println!("state:   {}", s("state"));
    println!("branch:  {} (from {})", s("branch"), s("base_branch"));
    println!("rounds:  {}  provider: {}", json["rounds"], s("provider"));
    if let Some(n) = json["pr_number"].as_i64() {
        let state = json["pr_state"].as_str().unwrap_or("open");
        println!("pull request: #{n} ({state})");
    }
    if let Some(page) = json["page"].as_str() {
        println!("page:    {page}");
    }
    if let Some(e) = json["last_error"].as_str() {
        println!("error:   {e}");
    }
    if let Some(events) = json["events"].as_array() {
        println!("timeline:");
        for ev in events {
            println!(
                "  {} [{}] {}",
                ev["at"].as_str().unwrap_or(""),
                ev["kind"].as_str().unwrap_or(""),
                ev["message"].as_str().unwrap_or("")
            );
        }
    }
    Ok(0)
}

fn validate(settings: &Settings, paths: &[PathBuf]) -> anyhow::Result<i32> {
    let roles = Roles::load(settings.roles_dir.as_deref())?;
    let mut bad = 0;
    for path in paths {
        let checked = read_spec(settings, path, &roles)?.and_then(|spec| {
            // A provider the spec asks for must be one this server is configured with.
            match &spec.options.provider_override {
                Some(name) => match providers::chain(&settings.file.providers, Some(name)) {
                    Ok(chain) => {
                        if let Some(Err(why)) = chain.first().map(|p| p.locate(&settings.env)) {
                            println!(
                                "note: {}: provider_override `{name}` cannot run here: {why}",
                                path.display()
                            );
                        }
                        Ok(spec)
                    }
                    Err(e) => Err(format!("{}: provider_override: {e}", path.display())),
                },
                None => Ok(spec),
            }
        });
        match checked {
            Ok(spec) => {
                let branch = roles
                    .get(&spec.role)
                    .map(|r| r.branch_for(&spec.id))
                    .unwrap_or_default();
                println!(
                    "ok: {} — {} ({}), branch {branch}",
                    path.display(),
                    spec.id,
                    spec.role
                );
            }
            Err(e) => {
                println!("invalid: {e}");
                bad += 1;
            }
        }
    }
    Ok(if bad == 0 { 0 } else { 1 })
}

fn list_roles(settings: &Settings) -> anyhow::Result<i32> {
    let roles = Roles::load(settings.roles_dir.as_deref())?;
    for role in roles.iter() {
        let branch = match &role.branch_prefix {
            Some(p) => format!("{p}/<task_id>"),
            None => format!("auto/{}/<task_id>", role.name),
        };
        let reviewers = if role.reviewers.is_empty() {
            "-".to_owned()
        } else {
            role.reviewers.join(", ")
        };
        println!(
            "{:<24} {:<40} reviewers: {:<20} source: {}",
            role.name, branch, reviewers, role.source
        );
    }
    Ok(0)
}

/// The example specs shipped in `specs/`, compiled in.
const EXAMPLES: &[(&str, &str)] = &[
    ("sample_task", include_str!("../../specs/sample_task.yaml")),
    ("da_example", include_str!("../../specs/da_example.yaml")),
    ("fm_example", include_str!("../../specs/fm_example.yaml")),
    (
        "compbio_example",
        include_str!("../../specs/compbio_example.yaml"),
    ),
];

fn example(name: Option<&str>) -> i32 {
    match name {
        None => {
            for (name, text) in EXAMPLES {
                let title = text
                    .lines()
                    .find_map(|l| l.strip_prefix("title: "))
                    .unwrap_or("");
                println!("{name:<18} {title}");
            }
            0
        }
        Some(name) => match EXAMPLES.iter().find(|(n, _)| *n == name) {
            Some((_, text)) => {
                print!("{text}");
                0
            }
            None => {
                let known: Vec<&str> = EXAMPLES.iter().map(|(n, _)| *n).collect();
                eprintln!(
                    "autodev: no example `{name}`; there are {}",
                    known.join(", ")
                );
                2
            }
        },
    }
}

fn list_providers(settings: &Settings) -> anyhow::Result<i32> {
    let chain = providers::chain(&settings.file.providers, None).map_err(|e| anyhow::anyhow!(e))?;
    let mut usable = 0;
    for p in &chain {
        match p.locate(&settings.env) {
            Ok(path) => {
                usable += 1;
                println!("{:<14} usable   {}", p.name, path.display());
            }
            Err(why) => println!("{:<14} missing  {why}", p.name),
        }
    }
    if usable == 0 {
        eprintln!(
            "autodev: no provider can run here: install one of the CLIs, set `binary:`, or set an API key (see `autodev config check`)"
        );
        return Ok(1);
    }
    Ok(0)
}

/// The configured providers that can run here.
fn usable_providers(settings: &Settings) -> usize {
    providers::chain(&settings.file.providers, None)
        .map(|chain| {
            chain
                .iter()
                .filter(|p| p.locate(&settings.env).is_ok())
                .count()
        })
        .unwrap_or(0)
}

async fn open_prs(settings: Settings) -> anyhow::Result<i32> {
    use crate::bot::outbox::{self, Effect, PrOutcome};
    let engine = Engine::open(settings).await?;
    if !engine.app_mode()
        && let Err(why) = crate::bot::origin::local_remote(&engine).await
    {
        eprintln!("autodev: {why}");
        return Ok(1);
    }
    let keys = crate::maintenance::pr_candidates(&engine, true).await?;
    if keys.is_empty() {
        println!("no passed task is waiting for a pull request");
        return Ok(0);
    }
    let mut missing = 0;
    for key in keys {
        let Some(t) = store::get_task(&engine.pool, key).await? else {
            continue;
        };
        match outbox::open_pr_now(&engine, key).await {
            Ok(PrOutcome::Open(n)) => println!("{}: pull request #{n} ({})", t.task_id, t.branch),
            Ok(PrOutcome::NotOpened(why)) => {
                missing += 1;
                println!("{}: {why}", t.task_id);
            }
            Err(e) => {
                missing += 1;
                let again = crate::jobs::OutboxJob {
                    effect: Effect::OpenPr { task: key },
                    attempt: 1,
                    rounds: 0,
                };
                let mut conn = engine.pool.acquire().await?;
                crate::jobs::push(&mut conn, &again, std::time::Duration::from_secs(30)).await?;
                println!(
                    "{}: {e} (queued: a running `autodev serve` or `autodev worker` tries again)",
                    t.task_id
                );
            }
        }
    }
    Ok(if missing == 0 { 0 } else { 1 })
}
