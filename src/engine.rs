//! The engine: configuration, database, roles, metrics and git shared by the server, the
//! workers and the CLI, and the few operations every entry point needs (submit, cancel, retry,
//! the timeline).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::core::blot::Secrets;
use crate::core::ids::{RepoName, TaskKey};
use crate::core::roles::Roles;
use crate::core::spec::TaskSpec;
use crate::git::ops::Git;
use crate::jobs::{self, RunTask};
use crate::metrics::Metrics;
use crate::proc::exec;
use crate::store::{self, TaskRow, TaskState};

/// A timeline entry as it happens, for `autodev run` to print.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub task: TaskKey,
    pub kind: String,
    pub message: String,
}

pub struct Engine {
    pub settings: Settings,
    pub pool: store::Pool,
    pub roles: Roles,
    pub metrics: Metrics,
    pub git: Git,
    /// The GitHub client: the App's in App mode, `GITHUB_TOKEN`'s in local mode. Replaced
    /// once, when the setup page creates the App (see [`Engine::github`]).
    github: std::sync::RwLock<Option<Arc<crate::github::client::GithubClient>>>,
    /// The App's credentials (its webhook secret checks deliveries), when there is an App.
    app: std::sync::RwLock<Option<crate::config::GithubApp>>,
    /// The one-time code that opens the setup page, while there is no App.
    pub setup: crate::github::manifest::SetupState,
    /// The agents' sandbox, when `agent.sandbox` asks for one.
    pub sandbox: Option<crate::proc::sandbox::Sandbox>,
    /// Identifies this process in task leases and as a queue worker: unique per start, so a
    /// quick restart never collides with the name of the process it replaces.
    pub owner: String,
    /// Whether each queue this process serves has a live worker (for `/readyz`).
    pub workers: WorkerHealth,
    live: broadcast::Sender<LiveEvent>,
    running: Mutex<HashMap<TaskKey, CancellationToken>>,
    /// Set once the process is shutting down and its running tasks are being interrupted.
    interrupting: std::sync::atomic::AtomicBool,
    /// Room kept on the data directory's disk, given back when it fills up.
    pub disk: crate::proc::reserve::Reserve,
    /// Wakes this process's queue workers when a job for them is committed.
    pub wakeups: jobs::Wakeups,
    /// The writer that group-commits intake (tasks submitted, webhook deliveries).
    pub batcher: store::Batcher,
    /// What is blotted out of text people see (see [`Engine::secrets`]).
    secrets: std::sync::RwLock<Arc<Secrets>>,
    /// Cancelled when the process begins to stop (SIGTERM): what waits on it (the HTTP
    /// server, open event streams, the workers) winds down.
    pub stopping: CancellationToken,
}

/// The HOMEs of one run, removed when dropped.
#[derive(Debug)]
pub struct Homes(pub std::path::PathBuf);

impl Homes {
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Homes {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!("removing {}: {e}", self.0.display());
        }
    }
}

/// The queues a process serves and whether each has a live worker now.
#[derive(Debug, Default)]
pub struct WorkerHealth(Mutex<std::collections::BTreeMap<&'static str, bool>>);

impl WorkerHealth {
    pub fn set(&self, queue: &'static str, alive: bool) {
        self.0.lock().expect("lock").insert(queue, alive);
    }

    /// The queues served whose worker is not running.
    pub fn dead(&self) -> Vec<&'static str> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, alive)| !**alive)
            .map(|(q, _)| *q)
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    pub job_id: String,
    pub task_id: String,
    #[serde(skip)]
    pub key: TaskKey,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("task `{task_id}` already exists in {repo}")]
    Duplicate { repo: RepoName, task_id: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// A queued task, cancelled at once.
    Cancelled,
    /// A running task: its worker was told to stop.
    Stopping,
    AlreadyEnded(TaskState),
    Missing,
}

impl Engine {
    /// Opens the database (applying migrations) and loads roles.
    pub async fn open(settings: Settings) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
        let pool = store::connect(&settings.database_url, &settings.file.database).await?;
        {
            // Two processes starting at once must not both apply migrations.
            let _lock =
                crate::proc::lock::FileLock::acquire(settings.data_dir.join("migrate.lock"))
                    .await?;
            store::migrate(&pool).await?;
        }
        let roles = Roles::load(settings.roles_dir.as_deref())?;
        let metrics = Metrics::new();
        let git = Git::new(
            metrics.git_operations_total.clone(),
            &settings.file.agent.git_user_name,
            &settings.file.agent.git_user_email,
        )
        .with_read_timeout(settings.file.agent.read_timeout)
        .with_spares(&settings.worktrees_dir.join(".spare"));
        let (live, _) = broadcast::channel(1024);
        let github = github_client(&settings, settings.github.as_ref(), &metrics)?;
        let sandbox = crate::proc::sandbox::Sandbox::from_settings(&settings)?;
        let disk = crate::proc::reserve::Reserve::new(
            &settings.data_dir,
            settings.file.database.reserve_mb * 1024 * 1024,
        );
        let batcher = store::Batcher::start(&settings.database_url, &settings.file.database)?;
        let engine = Arc::new(Self {
            disk,
            sandbox,
            github: std::sync::RwLock::new(github),
            app: std::sync::RwLock::new(settings.github.clone()),
            setup: crate::github::manifest::SetupState::new(settings.github.is_none()),
            owner: unique_owner_name(),
            settings,
            pool,
            roles,
            metrics,
            git,
            live,
            workers: WorkerHealth::default(),
            running: Mutex::new(HashMap::new()),
            interrupting: std::sync::atomic::AtomicBool::new(false),
            wakeups: jobs::Wakeups::default(),
            secrets: std::sync::RwLock::default(),
            stopping: CancellationToken::new(),
            batcher,
        });
        engine.set_secrets(Vec::new());
        Ok(engine)
    }

    /// What a sandboxed agent or gate working in `worktree` may reach besides its own HOME:
    /// the worktree (whose `.git` is the task's own repository) to write, the objects of
    /// `home_git` (the repository the branch lives in, which that repository borrows) to read.
    /// Nothing without a sandbox.
    pub fn task_paths(
        &self,
        worktree: &std::path::Path,
        home_git: &std::path::Path,
    ) -> crate::proc::sandbox::TaskPaths {
        if self.sandbox.is_none() {
            return crate::proc::sandbox::TaskPaths::default();
        }
        // Each job adds its own HOME (see `sandbox::Jail::wrap`).
        crate::proc::sandbox::TaskPaths {
            writable: vec![worktree.to_owned()],
            readable: vec![home_git.join("objects")],
        }
    }

    /// Runs a git that reads a task's files (see `ops::Git::snapshot`) in the task's
    /// sandbox, able to write only `home_git` (its objects) and `scratch` (its index, its
    /// HOME), when there is a sandbox; as it is otherwise.
    pub fn confine_reader(
        &self,
        paths: &crate::proc::sandbox::TaskPaths,
        home_git: &std::path::Path,
        scratch: &std::path::Path,
        job: crate::proc::exec::Job,
    ) -> crate::proc::exec::Job {
        let Some(jail) = self.jail(paths, crate::proc::sandbox::Net::None) else {
            return job;
        };
        let mut job = job;
        // Not the operator's HOME: a job's HOME is writable in its sandbox.
        job.env.retain(|(k, _)| k != "HOME");
        job.env.push(("HOME".into(), scratch.display().to_string()));
        jail.wrap(job, &[home_git.to_owned(), scratch.to_owned()])
    }

    /// A fresh directory for the HOMEs of one run of a task (`homes/<name>`): its agents' and
    /// its gates'. Nothing in it outlives the run ([`Homes`] removes it), so nothing one task
    /// writes there reaches another.
    pub fn fresh_homes(&self, name: &str) -> anyhow::Result<Homes> {
        let path = self.settings.data_dir.join("homes").join(name);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale homes {}", path.display()))?;
        }
        std::fs::create_dir_all(path.join("gates"))
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Homes(path))
    }

    /// The sandbox of a task that may reach `paths` and whose network is `net`, if there is
    /// a sandbox.
    pub fn jail<'a>(
        &'a self,
        paths: &'a crate::proc::sandbox::TaskPaths,
        net: crate::proc::sandbox::Net<'a>,
    ) -> Option<crate::proc::sandbox::Jail<'a>> {
        self.sandbox
            .as_ref()
            .map(|sandbox| crate::proc::sandbox::Jail {
                sandbox,
                paths,
                net,
            })
    }

    /// The hosts sandboxed agents may reach: `agent.egress`, else the configured providers'
    /// API and login hosts, and the base URLs they are pointed at.
    pub fn agent_egress(&self) -> Vec<String> {
        let config = &self.settings.file;
        if let Some(list) = &config.agent.egress {
            return list.clone();
        }
        let mut hosts: Vec<String> = Vec::new();
        for name in &config.providers.order {
            let Some(entry) = config.providers.entry(name) else {
                continue;
            };
            let kind = entry
                .kind
                .or_else(|| crate::config::kind_from_name(name))
                .unwrap_or(crate::config::CliKind::Generic);
            hosts.extend(
                crate::proc::egress::provider_hosts(kind)
                    .iter()
                    .map(|h| (*h).to_owned()),
            );
            if let Some(entry) = entry
                .base_url
                .as_deref()
                .and_then(crate::proc::egress::url_entry)
            {
                hosts.push(entry);
            }
        }
        for var in ["ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"] {
            if let Some(entry) = self
                .settings
                .env
                .get(var)
                .and_then(crate::proc::egress::url_entry)
            {
                hosts.push(entry);
            }
        }
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// The settings a run of `spec` uses: the server's, the role's, the repository's
    /// `.github/autodev.yml` at `rev` of `repo` (its base), then the spec's own; see `trust`.
    /// `Err` says why the run cannot start (a broken repository file, an unknown role).
    pub async fn task_settings(
        &self,
        spec: &TaskSpec,
        source: crate::core::trust::SpecSource,
        repo: &std::path::Path,
        rev: &str,
    ) -> Result<crate::core::trust::Resolved, String> {
        let role = self
            .roles
            .get(&spec.role)
            .ok_or_else(|| format!("role `{}` is no longer defined", spec.role))?;
        let mut file = None;
        for path in crate::core::trust::REPO_FILE_PATHS {
            let text = self
                .git
                .read_at(repo, rev, path)
                .await
                .map_err(|e| format!("reading {path}: {e:#}"))?;
            if let Some(text) = text {
                file = Some(crate::core::trust::parse_repo_file(path, &text)?);
                break;
            }
        }
        let config = &self.settings.file;
        let policy = crate::core::trust::ServerPolicy {
            allowed_overrides: &config.allowed_overrides.0,
            limits: &config.limits,
            default_timeout: config.agent.task_timeout,
            gates: crate::core::trust::GateCommands {
                lint: config.gates.lint.clone(),
                typecheck: config.gates.typecheck.clone(),
            },
        };
        Ok(crate::core::trust::resolve(
            &policy,
            &spec.role,
            &role.defaults,
            file.as_ref(),
            &spec.options,
            source,
        ))
    }

    /// What every push of `repo` (`owner/name`) checks: no change to `.github/workflows/` in
    /// any commit after `base`, unless `github.allow_workflow_changes` allows the repository.
    pub fn push_guard<'a>(&self, repo: &'a str, base: &'a str) -> crate::git::ops::PushGuard<'a> {
        crate::git::ops::PushGuard {
            repo,
            base,
            workflows_allowed: self
                .settings
                .file
                .github
                .allow_workflow_changes
                .allowed_for(repo),
        }
    }

    /// GitHub App mode is configured (webhooks, installations, check runs).
    pub fn app_mode(&self) -> bool {
        self.github().is_some_and(|g| g.is_app())
    }

    /// The GitHub client, if there is one now.
    pub fn github(&self) -> Option<Arc<crate::github::client::GithubClient>> {
        self.adopt_stored_app();
        self.github.read().expect("lock").clone()
    }

    /// The App's credentials, if there is an App now.
    pub fn app(&self) -> Option<crate::config::GithubApp> {
        self.adopt_stored_app();
        self.app.read().expect("lock").clone()
    }

    /// Without an App, takes up the one the setup page stored, whichever process of this data
    /// directory ran the page (a `worker` started before it, say).
    fn adopt_stored_app(&self) {
        if self.app.read().expect("lock").is_some() {
            return;
        }
        match crate::config::StoredApp::load(&self.settings.data_dir) {
            Ok(Some(stored)) => {
                if let Err(e) = self.install_app(stored.credentials()) {
                    tracing::warn!("taking up the stored GitHub App: {e:#}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e:#}"),
        }
    }

    /// Takes up `app` (made by the setup page) at once: deliveries are checked with its
    /// secret and GitHub is called as it, without a restart.
    pub fn install_app(&self, app: crate::config::GithubApp) -> anyhow::Result<()> {
        let client = github_client(&self.settings, Some(&app), &self.metrics)?;
        if self.sandbox.is_none() {
            tracing::warn!("{}", crate::proc::sandbox::UNCONFINED_WARNING);
        }
        tracing::info!("GitHub App {} taken up", app.app_id);
        *self.github.write().expect("lock") = client;
        *self.app.write().expect("lock") = Some(app);
        Ok(())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.live.subscribe()
    }

    /// Stores a task and its first queue job in one transaction.
    pub async fn submit(
        self: &Arc<Self>,
        spec: &TaskSpec,
        repo: &RepoName,
    ) -> Result<Submitted, SubmitError> {
        let role = self
            .roles
            .get(&spec.role)
            .with_context(|| format!("unknown role `{}`", spec.role))?;
        let spec_json = serde_json::to_string(spec).context("encoding spec")?;
        let branch = role.branch_for(&spec.id);
        let engine = self.clone();
        let (repo_name, task_id) = (repo.clone(), spec.id.to_string());
        let (role_name, title) = (spec.role.clone(), spec.title.clone());
        // The task, its job and its timeline's first event, in one commit shared with the
        // other requests of the moment (`store::Batcher`).
        let written = self
            .batcher
            .write(move |w| {
                // The job's id is chosen first, so the task's row names it as it is written:
                // one statement fewer.
                let job_id = jobs::JobId::new();
                let job_name = job_id.to_string();
                let new = store::NewTask {
                    repo: &repo_name,
                    task_id: &task_id,
                    role: &role_name,
                    title: &title,
                    spec_json: &spec_json,
                    branch: &branch,
                    job_id: Some(&job_name),
                };
                let Some(key) = w.insert_task(&new)? else {
                    return Ok(None);
                };
                let job = RunTask { task: key, run: 1 };
                let job_id = jobs::push_written(w, &job, job_id, std::time::Duration::ZERO)?;
                let queued = format!("queued as job {job_id} for branch {branch}");
                engine.record_written(w, key, 1, crate::store::EventKind::Queued, &queued)?;
                anyhow::Ok(Some((key, job_id, queued)))
            })
            .await?;
        let Some((key, job_id, queued)) = written else {
            return Err(SubmitError::Duplicate {
                repo: repo.clone(),
                task_id: spec.id.to_string(),
            });
        };
        self.wakeups.wake::<RunTask>();
        self.announce(key, 1, crate::store::EventKind::Queued, &queued);
        Ok(Submitted {
            job_id,
            task_id: spec.id.to_string(),
            key,
        })
    }

    /// Stores a task without a queue job, for `autodev run`, which runs it in the foreground.
    pub async fn insert_for_foreground(
        &self,
        spec: &TaskSpec,
        repo: &RepoName,
    ) -> Result<TaskKey, SubmitError> {
        let role = self
            .roles
            .get(&spec.role)
            .with_context(|| format!("unknown role `{}`", spec.role))?;
        let spec_json = serde_json::to_string(spec).context("encoding spec")?;
        let branch = role.branch_for(&spec.id);
        let new = store::NewTask {
            repo,
            task_id: spec.id.as_str(),
            role: &spec.role,
            title: &spec.title,
            spec_json: &spec_json,
            branch: &branch,
            job_id: None,
        };
        match store::insert_task(&self.pool, &new).await? {
            Some(key) => Ok(key),
            None => Err(SubmitError::Duplicate {
                repo: repo.clone(),
                task_id: spec.id.to_string(),
            }),
        }
    }

    pub async fn cancel(&self, key: TaskKey) -> anyhow::Result<CancelOutcome> {
        // A running task whose worker is gone is ended at once below: what that worker left
        // running is stopped first.
        if let Some(t) = store::get_task(&self.pool, key).await?
            && t.state == TaskState::Running
            && t.lease_until.is_none_or(|until| until <= store::now_ms())
            && !self.running.lock().expect("lock").contains_key(&key)
            && self.stop_leftovers(&t).await
        {
            self.record(
                key,
                t.run_seq,
                crate::store::EventKind::Recovered,
                "stopped agent processes left by a worker that died",
            )
            .await;
        }
        let before = store::request_cancel(&self.pool, key).await?;
        Ok(match before {
            None => CancelOutcome::Missing,
            Some(TaskState::Queued) => {
                let task = store::get_task(&self.pool, key).await?;
                if let Some(t) = task {
                    self.record(
                        key,
                        t.run_seq,
                        crate::store::EventKind::Cancelled,
                        "cancelled before it started",
                    )
                    .await;
                    self.metrics
                        .tasks_total
                        .with_label_values(&[&t.role, "cancelled"])
                        .inc();
                }
                CancelOutcome::Cancelled
            }
            Some(TaskState::Running) => {
                // The worker polls the flag; one in this process hears at once.
                if let Some(token) = self.running.lock().expect("lock").get(&key) {
                    token.cancel();
                }
                CancelOutcome::Stopping
            }
            Some(state) => CancelOutcome::AlreadyEnded(state),
        })
    }

    /// Queues an ended task again; it continues on the same branch. `Ok(None)` while it is
    /// queued or running.
    pub async fn retry(&self, key: TaskKey) -> anyhow::Result<Option<String>> {
        let mut tx = store::begin_write(&self.pool).await?;
        let Some(run_seq) = store::requeue(&mut *tx, key).await? else {
            return Ok(None);
        };
        let job_id = jobs::push(
            &mut tx,
            &RunTask {
                task: key,
                run: run_seq,
            },
            std::time::Duration::ZERO,
        )
        .await?;
        store::set_job_id(&mut *tx, key, &job_id).await?;
        let queued = format!("retry queued as job {job_id}");
        self.record_in(
            &mut tx,
            key,
            run_seq,
            crate::store::EventKind::Queued,
            &queued,
        )
        .await?;
        tx.commit().await?;
        self.wakeups.wake::<RunTask>();
        self.announce(key, run_seq, crate::store::EventKind::Queued, &queued);
        Ok(Some(job_id))
    }

    /// Adds to a task's timeline (database, live listeners, log), with the status comment's
    /// update when the event changes what it shows. A failure to record is logged, not fatal:
    /// the task's state is what matters.
    pub async fn record(&self, key: TaskKey, run_seq: i64, kind: store::EventKind, message: &str) {
        let written = async {
            let mut tx = store::begin_write(&self.pool).await?;
            self.record_in(&mut tx, key, run_seq, kind, message).await?;
            tx.commit().await?;
            anyhow::Ok(())
        };
        match written.await {
            // The status comment's update, when the event queued one.
            Ok(()) if self.app_mode() => self.wakeups.wake::<jobs::OutboxJob>(),
            Ok(()) => {}
            Err(e) => {
                self.note_disk_full(&e);
                tracing::warn!(task = %key, "could not record event: {e:#}");
            }
        }
        self.announce(key, run_seq, kind, message);
    }

    /// Writes a timeline event in `tx`, and queues with it, in App mode, the update of the
    /// task's status comment when the event changes what it shows. [`Engine::announce`] it
    /// once `tx` is committed.
    pub async fn record_in(
        &self,
        tx: &mut store::Conn,
        key: TaskKey,
        run_seq: i64,
        kind: store::EventKind,
        message: &str,
    ) -> anyhow::Result<()> {
        let message = self.secrets().blot(message);
        store::add_event(&mut *tx, key, run_seq, kind, &message).await?;
        if self.app_mode()
            && kind.changes_status()
            && store::get_task(&mut *tx, key)
                .await?
                .is_some_and(|t| t.issue_number.is_some())
        {
            let effect = jobs::OutboxJob::new(jobs::Effect::Status { task: key });
            jobs::push(tx, &effect, std::time::Duration::ZERO).await?;
        }
        Ok(())
    }

    /// [`Engine::record_in`], in a group commit (`store::Batcher`).
    pub fn record_written(
        &self,
        w: &store::Writer<'_>,
        key: TaskKey,
        run_seq: i64,
        kind: store::EventKind,
        message: &str,
    ) -> anyhow::Result<()> {
        let message = self.secrets().blot(message);
        w.add_event(key, run_seq, kind, &message)?;
        if self.app_mode() && kind.changes_status() && w.task_issue(key)?.is_some() {
            let effect = jobs::OutboxJob::new(jobs::Effect::Status { task: key });
            jobs::push_written(w, &effect, jobs::JobId::new(), std::time::Duration::ZERO)?;
        }
        Ok(())
    }

    /// Tells the log and live listeners (pages, `autodev run`) of an event recorded.
    pub fn announce(&self, key: TaskKey, run_seq: i64, kind: store::EventKind, message: &str) {
        let kind_name = kind.as_str();
        tracing::info!(task = %key, run = run_seq, kind = kind_name, "{message}");
        let _ = self.live.send(LiveEvent {
            task: key,
            kind: kind_name.to_owned(),
            message: message.to_owned(),
        });
    }

    /// The values blotted out of what people see (timeline, gate output, errors, output
    /// tails): secret-looking variables of autodev's environment, the App's key and webhook
    /// secret, and what [`Engine::set_secrets`] added last (the agents' login files).
    pub fn secrets(&self) -> Arc<Secrets> {
        self.secrets.read().expect("lock").clone()
    }

    /// Sets the secrets to blot out: the environment's and the App's, and `more`.
    pub fn set_secrets(&self, more: Vec<String>) {
        let mut values = self.settings.env.secret_values();
        if let Some(token) = &self.settings.api_token {
            use secrecy::ExposeSecret;
            values.push(token.expose_secret().to_owned());
        }
        if let Some(app) = self.app.read().expect("lock").as_ref() {
            use secrecy::ExposeSecret;
            values.extend(crate::core::blot::secret_lines(
                app.private_key.expose_secret(),
            ));
            values.push(app.webhook_secret.expose_secret().to_owned());
        }
        values.extend(more);
        *self.secrets.write().expect("lock") = Arc::new(Secrets::new(values));
    }

    /// Registers a running task's cancel token so a cancel in this process acts at once.
    pub fn track_running(&self, key: TaskKey, token: CancellationToken) {
        self.running.lock().expect("lock").insert(key, token);
    }

    /// How many tasks this process runs now.
    pub fn running_count(&self) -> usize {
        self.running.lock().expect("lock").len()
    }

    /// Stops every task this process runs, for a shutdown: each run keeps its work and queues
    /// its task again (see `run::pipeline`).
    pub fn interrupt_all(&self) {
        self.interrupting
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for token in self.running.lock().expect("lock").values() {
            token.cancel();
        }
    }

    /// Whether the process is interrupting its runs for a shutdown.
    pub fn interrupting(&self) -> bool {
        self.interrupting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether this process runs task `key` now.
    pub fn is_running(&self, key: TaskKey) -> bool {
        self.running.lock().expect("lock").contains_key(&key)
    }

    pub fn untrack_running(&self, key: TaskKey) {
        self.running.lock().expect("lock").remove(&key);
    }

    /// Stops agent process groups left by workers that died (their lease ran out).
    pub async fn sweep_leftovers(&self) -> anyhow::Result<usize> {
        let mut killed = 0;
        // Only leases that ran out a while ago, of other processes: a worker whose renewal is
        // merely late keeps its agent.
        let grace = self.settings.file.workers.orphan_after();
        for task in store::expired_leases(&self.pool, grace).await? {
            let ours = task.lease_owner.as_deref() == Some(self.owner.as_str())
                || self.running.lock().expect("lock").contains_key(&task.pk);
            if ours {
                continue;
            }
            let found = self.stop_leftovers(&task).await;
            if found {
                killed += 1;
                self.record(
                    task.pk,
                    task.run_seq,
                    crate::store::EventKind::Recovered,
                    "stopped agent processes left by a worker that died",
                )
                .await;
            }
            if let Some(marker) = task.agent_marker.as_deref() {
                store::clear_agent_process_if(&self.pool, task.pk, marker).await?;
            }
        }
        Ok(killed)
    }

    /// Stops what a dead worker's run of `task` left running: its recorded process group, or
    /// the processes carrying its run's marker. Whether anything was found.
    pub async fn stop_leftovers(&self, task: &TaskRow) -> bool {
        match (
            task.agent_pgid,
            task.agent_marker.as_deref(),
            &task.lease_owner,
        ) {
            (Some(pgid), Some(marker), _) => exec::kill_leftover_group(pgid as i32, marker).await,
            // Started, but its group not yet recorded when the worker died.
            (None, Some(marker), _) => exec::kill_marked(marker).await,
            (None, None, Some(owner)) if *owner != self.owner => {
                exec::kill_marked(&exec::run_marker(owner, task.pk, task.run_seq)).await
            }
            _ => false,
        }
    }

    /// Whether `e` comes from a full disk; if so, and the disk is full in fact, its reserve
    /// is given back, so that what runs can end and be recorded (and new work waits for room).
    pub fn note_disk_full(&self, e: &anyhow::Error) -> bool {
        let full = store::is_disk_full(e);
        if full {
            self.disk.release_if_full();
            // What was checked out ahead is room to give back first.
            self.git.drop_spares();
        }
        full
    }

    /// Removes the worktree of task `key` if it has ended (checked again under its repository's
    /// lock: a retry may have taken it), records `why`, and says whether it did. The branch
    /// stays; a retry makes a new worktree from it.
    pub async fn remove_ended_worktree(&self, key: TaskKey, why: &str) -> anyhow::Result<bool> {
        let Some(task) = store::get_task(&self.pool, key).await? else {
            return Ok(false);
        };
        let repo = task.repo_name();
        let _lock = crate::proc::lock::FileLock::acquire(self.repo_lock(&repo)).await?;
        let task = match store::get_task(&self.pool, key).await? {
            Some(t) if t.state.is_terminal() => t,
            _ => return Ok(false),
        };
        let Some(path) = task.worktree.as_deref() else {
            return Ok(false);
        };
        self.git
            .remove_worktree(&self.home_repo(&repo), std::path::Path::new(path))
            .await?;
        store::clear_worktree(&self.pool, key).await?;
        self.record(
            key,
            task.run_seq,
            store::EventKind::Cleanup,
            &format!("removed worktree {path}{why}"),
        )
        .await;
        Ok(true)
    }

    /// Sets the gauges that reflect state rather than events, from the database (which every
    /// process shares), never by scanning directories.
    pub async fn refresh_gauges(&self) {
        match store::gauges(&self.pool).await {
            Ok(g) => {
                let m = &self.metrics;
                m.queue_size.set(g.queued);
                m.running_tasks.set(g.running);
                m.active_worktrees.set(g.worktrees);
                m.outbox_backlog.set(g.outbox_backlog);
                let queued_at = g
                    .outbox_oldest
                    .and_then(|id| ulid::Ulid::from_string(&id).ok())
                    .map(|id| id.timestamp_ms() as i64);
                m.outbox_oldest_seconds
                    .set(queued_at.map_or(0.0, |at| (store::now_ms() - at).max(0) as f64 / 1000.0));
            }
            Err(e) => tracing::warn!("reading the gauges: {e:#}"),
        }
    }

    /// The repository a task's branch lives in: the user's own in local mode, else the
    /// repository's mirror.
    pub fn home_repo(&self, repo: &RepoName) -> std::path::PathBuf {
        if repo.is_local() {
            self.settings.repo_path.clone()
        } else {
            self.mirror_path(repo)
        }
    }

    /// The bare mirror of a GitHub repository.
    pub fn mirror_path(&self, repo: &RepoName) -> std::path::PathBuf {
        self.settings
            .data_dir
            .join("mirrors")
            .join(format!("{}.git", repo.dir_name()))
    }

    /// The lock file that serializes git bookkeeping (fetch, worktree add, push) on one
    /// repository across threads and processes.
    pub fn repo_lock(&self, repo: &RepoName) -> std::path::PathBuf {
        self.settings
            .data_dir
            .join("locks")
            .join(format!("{}.lock", repo.dir_name()))
    }

    pub fn worktree_path(&self, repo: &RepoName, task_id: &str) -> std::path::PathBuf {
        self.settings
            .worktrees_dir
            .join(repo.dir_name())
            .join(task_id)
    }
}

/// The GitHub client for `app` and the settings' `GITHUB_TOKEN`, if either is there.
fn github_client(
    settings: &Settings,
    app: Option<&crate::config::GithubApp>,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<crate::github::client::GithubClient>>> {
    Ok(crate::github::client::GithubClient::new(
        &settings.github_api_url,
        app,
        settings.github_token.as_ref(),
        std::time::Duration::from_secs(settings.file.github.permission_cache_seconds),
        settings.file.github.timeout,
        &settings.data_dir.join("locks"),
    )?
    .map(|client| Arc::new(client.counted(metrics))))
}

impl Engine {
    /// Whether `holder` (another process's owner name) is a process of this host that is no
    /// longer running. A holder on another host is never known to be gone.
    pub fn holder_gone(&self, holder: &str) -> bool {
        let mut parts = holder.rsplitn(3, '-');
        let (Some(_nonce), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let mine = self.owner.rsplitn(3, '-').nth(2);
        match (pid.parse::<i32>(), mine) {
            (Ok(pid), Some(mine)) if host == mine && pid > 0 => !exec::process_exists(pid),
            _ => false,
        }
    }
}

fn unique_owner_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "autodev-{host}-{}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff
    )
}
