//! What a run works in, prepared before its first round: the code's source (the repository or
//! the mirror), the worktree on the task branch, the run's homes and egress, the provider
//! chain and the planned gates; and how autodev reads the agent's work back (`Reading`).
//! Part of `run`: imports what `pipeline` does, never `maintenance`, `web` or `app`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::pipeline::{EndAs, Ended, Run};
use crate::agent::providers;
use crate::core::faults::crash_point;
use crate::core::spec::TaskSpec;
use crate::engine::{Engine, Homes};
use crate::git::ops;
use crate::proc::exec;
use crate::proc::lock::FileLock;
use crate::proc::sandbox::TaskPaths;
use crate::run::gates;
use crate::store::{self, TaskRow, TaskState};

/// Everything the rounds of a run share, prepared once.
pub(super) struct Workspace {
    pub worktree: ops::Worktree,
    /// The worktree's `target_dir`: where the agent and the gates start.
    pub workdir: PathBuf,
    /// The repository the branch lives in, where autodev's own git reads the agent's work.
    pub home_git: PathBuf,
    pub paths: TaskPaths,
    pub reading: Reading,
    /// The run's HOMEs (its agents', its gates'), removed when the run ends.
    pub homes: Homes,
    pub egress: RunEgress,
    pub providers: Vec<providers::Provider>,
    pub planned: Vec<gates::PlannedGate>,
    pub gate_env: Vec<(String, String)>,
    pub gates_config: crate::config::GatesConfig,
    /// The environment mark of every process the run starts, for crash recovery.
    pub marker: String,
    /// Records the agent's process group as it starts.
    pub record: Box<dyn Fn(Option<i32>) -> futures::future::BoxFuture<'static, ()> + Send + Sync>,
    /// Whose words the task carries, when they are not the operator's.
    pub untrusted: Option<String>,
    /// What the worktree holds before the first round, when that is known without reading it
    /// (its files were just checked out).
    checked_out: std::sync::Mutex<Option<ops::Snapshot>>,
}

impl Workspace {
    pub async fn prepare(run: &Run<'_>) -> Result<Self, Ended> {
        let (engine, row, task) = (run.engine, run.row, &run.settings);
        let settings = &engine.settings;
        let source = &run.source;
        let path = engine.worktree_path(&row.repo_name(), &row.task_id);
        let worktree = {
            let _lock = FileLock::acquire(engine.repo_lock(&row.repo_name())).await?;
            crate::core::faults::disk_full_point("worktree-disk-full")
                .map_err(anyhow::Error::from)
                .end_as(TaskState::Error, "preparing the worktree")?;
            engine
                .git
                .prepare_worktree(&source.repo, &path, &row.branch, &source.base_sha)
                .await
                .end_as(TaskState::Error, "preparing the worktree")?
        };
        crash_point("worktree-created");
        store::mark_running(
            &engine.pool,
            row.pk,
            row.run_seq,
            &engine.owner,
            &source.base,
            &source.base_sha,
            &path.to_string_lossy(),
        )
        .await?;
        run.note(
            store::EventKind::Worktree,
            &format!(
                "worktree {} on {} ({} from {} at {}{})",
                worktree.path.display(),
                worktree.branch,
                if worktree.reused_branch {
                    "continuing the existing branch"
                } else {
                    "new branch"
                },
                source.base,
                super::pipeline::short(&source.base_sha),
                if worktree.made_ahead {
                    "; checked out ahead"
                } else {
                    ""
                }
            ),
        )
        .await;
        let workdir = worktree.path.join(&task.target_dir);
        std::fs::create_dir_all(&workdir)
            .with_context(|| format!("creating target_dir {}", workdir.display()))?;
        let homes = engine.fresh_homes(&format!("task-{}", row.pk))?;
        let home_git = engine.git.common_dir(&source.repo).await?;
        let paths = engine.task_paths(&worktree.path, &home_git);
        let egress = RunEgress::start(engine, homes.path(), row.pk, row.run_seq)?;
        let providers =
            providers::chain(&settings.file.providers, task.provider_override.as_deref())
                .end_as(TaskState::Error, "")?;
        let mut gate_env = providers::base_env(
            &settings.env,
            &homes.path().join("gates"),
            &settings.file.agent.env,
        );
        let path_env = gate_env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let mut gates_config = settings.file.gates.clone();
        gates_config.lint = task.gates.lint.clone();
        gates_config.typecheck = task.gates.typecheck.clone();
        let planned = gates::plan(
            &task.acceptance,
            &gates_config,
            &workdir,
            &worktree.path,
            path_env,
        );
        let marker = exec::run_marker(&engine.owner, row.pk, row.run_seq);
        if let Some((k, v)) = marker.split_once('=') {
            // Gates run code the agent wrote: they are marked like the agent for crash recovery.
            gate_env.push((k.to_owned(), v.to_owned()));
        }
        // Recorded before anything is started: a crash between starting an agent and recording
        // its group still leaves the marker to find it by, in this run or after a retry.
        store::set_agent_process(&engine.pool, row.pk, row.run_seq, None, Some(&marker)).await?;
        let reading = Reading::new(engine, row);
        // Nothing has run in a fresh checkout: it holds the tree of its commit, and its index
        // (autodev's, written by the checkout) knows every file.
        let checked_out = match worktree.checked_out {
            true => match worktree.seed_index(&reading.index) {
                Ok(()) => Some(ops::Snapshot {
                    tree: engine.git.tree_of(&home_git, &worktree.head).await?,
                    tip: worktree.head.clone(),
                    unread: None,
                }),
                Err(e) => {
                    tracing::debug!("seeding the reading index: {e:#}");
                    None
                }
            },
            false => None,
        };
        Ok(Self {
            checked_out: std::sync::Mutex::new(checked_out),
            reading,
            record: process_recorder(engine, row, &marker, &home_git, &source.base_sha),
            // An issue's title and text are its author's words, whoever that is.
            untrusted: row
                .issue_number
                .map(|n| format!("the author of GitHub issue #{n} in {}", row.repo)),
            worktree,
            workdir,
            home_git,
            paths,
            homes,
            egress,
            providers,
            planned,
            gate_env,
            gates_config,
            marker,
        })
    }

    /// What the worktree holds as a round starts: as it was checked out, before the first
    /// round of a fresh worktree, else read as [`Workspace::snapshot`] does.
    pub async fn round_start(&self, engine: &Engine) -> anyhow::Result<ops::Snapshot> {
        let known = self
            .checked_out
            .lock()
            .expect("the checkout's snapshot is never poisoned")
            .take();
        match known {
            Some(snap) => Ok(snap),
            None => self.snapshot(engine).await,
        }
    }

    /// The agent's work as it stands: its branch and its files, read by autodev's own git in
    /// the task's sandbox.
    pub async fn snapshot(&self, engine: &Engine) -> anyhow::Result<ops::Snapshot> {
        let scratch = self
            .reading
            .index
            .parent()
            .unwrap_or(&engine.settings.data_dir)
            .to_owned();
        let confine =
            |job: exec::Job| engine.confine_reader(&self.paths, &self.home_git, &scratch, job);
        self.reading
            .snapshot(&self.home_git, &self.worktree, &confine)
            .await
    }
}

/// Writes the agent's process group to the task's row as the agent starts; and then, while
/// the agent works, has the next task's repository made ahead at the base this one started
/// from (`git::spare`).
fn process_recorder(
    engine: &Engine,
    row: &TaskRow,
    marker: &str,
    home_git: &std::path::Path,
    start: &str,
) -> Box<dyn Fn(Option<i32>) -> futures::future::BoxFuture<'static, ()> + Send + Sync> {
    let pool = engine.pool.clone();
    let (key, run_seq) = (row.pk, row.run_seq);
    let marker = marker.to_owned();
    let (git, home_git, start) = (engine.git.clone(), home_git.to_owned(), start.to_owned());
    Box::new(move |pgid: Option<i32>| {
        let pool = pool.clone();
        let marker = marker.clone();
        if pgid.is_some() {
            git.make_spare(&home_git, &start);
        }
        Box::pin(async move {
            if pgid.is_some() {
                crash_point("agent-started");
            }
            if let Err(e) =
                store::set_agent_process(&pool, key, run_seq, pgid.map(i64::from), Some(&marker))
                    .await
            {
                tracing::warn!("recording the agent process: {e:#}");
            }
        })
    })
}

/// Where a task's code comes from.
pub(super) struct Source {
    /// The repository (local mode) or mirror (App mode) that worktrees are added to.
    pub repo: std::path::PathBuf,
    pub base: String,
    pub base_sha: String,
    /// App mode: the installation token for fetch and push.
    pub token: Option<secrecy::SecretString>,
}

impl Source {
    pub async fn resolve(engine: &Engine, row: &TaskRow, spec: &TaskSpec) -> anyhow::Result<Self> {
        let settings = &engine.settings;
        if row.repo_name().is_local() {
            let repo = settings.repo_path.clone();
            ops::check_data_dir_outside(&repo, &settings.data_dir)?;
            let wanted = spec
                .options
                .base_branch
                .as_deref()
                .or(settings.dev_branch.as_deref());
            let (base, base_sha) = engine.git.resolve_base(&repo, wanted).await?;
            // Where its pull request will go, taken before the agent can touch the config.
            if engine.settings.github_token.is_some()
                && let Ok(remote) = crate::bot::origin::local_remote(engine).await
            {
                // An `origin` that moved since the last task (an agent can edit the
                // repository's config) is pointed out on the timeline.
                if row.clone_url.is_none()
                    && let Some(before) = store::last_local_remote(&engine.pool, row.pk).await?
                    && before != remote.push_url
                {
                    engine
                        .record(
                            row.pk,
                            row.run_seq,
                            store::EventKind::Github,
                            &format!(
                                "`origin` now leads to {}; the task before pushed to {before}",
                                remote.push_url
                            ),
                        )
                        .await;
                }
                store::set_local_remote(&engine.pool, row.pk, &remote.push_url).await?;
            }
            return Ok(Self {
                repo,
                base,
                base_sha,
                token: None,
            });
        }
        let gh = engine
            .github()
            .context("this task comes from GitHub, but GitHub App mode is not configured")?;
        let installation = row
            .installation_id
            .context("the task has no installation")?;
        let url = row
            .clone_url
            .as_deref()
            .context("the task has no clone URL")?;
        let base = spec
            .options
            .base_branch
            .clone()
            .context("the task has no base branch")?;
        let token = gh
            .installation_token(crate::github::event::InstallationId(installation))
            .await?;
        let repo = engine.mirror_path(&row.repo_name());
        let _lock = FileLock::acquire(engine.repo_lock(&row.repo_name())).await?;
        let base_sha = engine.git.fetch_mirror(&repo, url, &token, &base).await?;
        Ok(Self {
            repo,
            base,
            base_sha,
            token: Some(token),
        })
    }
}

/// How autodev reads a running task's work: the agent's branch fetched into a ref of its own,
/// the files gathered with an index of autodev's (outside the sandbox), both dropped at the end.
pub(super) struct Reading {
    key: crate::core::ids::TaskKey,
    fetch_ref: String,
    index: std::path::PathBuf,
    git: ops::Git,
}

impl Reading {
    fn new(engine: &Engine, row: &TaskRow) -> Self {
        Self {
            key: row.pk,
            fetch_ref: format!("refs/autodev/agent/{}", row.task_id),
            index: engine
                .settings
                .data_dir
                .join("tmp")
                .join(format!("task-{}.index", row.pk)),
            git: engine.git.clone(),
        }
    }

    async fn snapshot(
        &self,
        home_git: &std::path::Path,
        worktree: &ops::Worktree,
        confine: &ops::Confine<'_>,
    ) -> anyhow::Result<ops::Snapshot> {
        if let Some(dir) = self.index.parent() {
            std::fs::create_dir_all(dir)?;
        }
        self.git
            .snapshot(
                home_git,
                &worktree.path,
                &worktree.branch,
                Some(&self.fetch_ref),
                &self.index,
                Some(confine),
            )
            .await
    }

    pub async fn finish(&self, home_git: &std::path::Path) {
        if let Err(e) = self.git.delete_ref(home_git, &self.fetch_ref).await {
            tracing::debug!("deleting {}: {e:#}", self.fetch_ref);
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.index);
        // The checkpointer's (see `maintenance::checkpoint`).
        let _ = std::fs::remove_file(
            self.index
                .with_file_name(format!("checkpoint-{}.index", self.key)),
        );
    }
}

/// Egress for one run, in the sandbox: the agent reaches its providers' hosts
/// (`agent.egress`), the gates only `gates.egress` (no network at all when it is empty); each
/// host refused goes on the task's timeline, once.
pub struct RunEgress {
    agent: Option<crate::proc::egress::Proxy>,
    gates: Option<crate::proc::egress::Proxy>,
    refusals: Option<tokio::task::JoinHandle<()>>,
}

impl RunEgress {
    pub fn start(
        engine: &Arc<Engine>,
        homes: &std::path::Path,
        key: crate::core::ids::TaskKey,
        run_seq: i64,
    ) -> anyhow::Result<Self> {
        if engine.sandbox.is_none() {
            return Ok(Self {
                agent: None,
                gates: None,
                refusals: None,
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = |file: &str, who, allowed| {
            crate::proc::egress::Proxy::start(&homes.join(file), who, allowed, tx.clone())
                .with_context(|| format!("starting the {who} egress proxy"))
        };
        let agent = Some(start("egress-agent.sock", "agent", engine.agent_egress())?);
        let gates_list = engine.settings.file.gates.egress.clone();
        let gates = match gates_list.is_empty() {
            true => None,
            false => Some(start("egress-gates.sock", "gates", gates_list)?),
        };
        drop(tx);
        let engine = engine.clone();
        let refusals = tokio::spawn(async move {
            // Each host once, and not more than a timeline can hold.
            const MAX_REPORTED: usize = 20;
            let mut seen = std::collections::HashSet::new();
            while let Some(refusal) = rx.recv().await {
                if seen.len() > MAX_REPORTED || !seen.insert(refusal.clone()) {
                    continue;
                }
                let (who, host) = refusal;
                let message = if seen.len() > MAX_REPORTED {
                    format!(
                        "more refused connections; only the first {MAX_REPORTED} hosts are listed"
                    )
                } else {
                    format!("refused the {who}'s connection to {host}")
                };
                engine
                    .record(key, run_seq, store::EventKind::Egress, &message)
                    .await;
            }
        });
        Ok(Self {
            agent,
            gates,
            refusals: Some(refusals),
        })
    }

    pub fn agent_net(&self) -> crate::proc::sandbox::Net<'_> {
        match &self.agent {
            Some(p) => crate::proc::sandbox::Net::Proxy(p.socket()),
            None => crate::proc::sandbox::Net::None,
        }
    }

    pub fn gates_net(&self) -> crate::proc::sandbox::Net<'_> {
        match &self.gates {
            Some(p) => crate::proc::sandbox::Net::Proxy(p.socket()),
            None => crate::proc::sandbox::Net::None,
        }
    }

    /// Stops the proxies and waits (briefly) until every refusal is on the timeline.
    pub async fn finish(&mut self) {
        self.agent.take();
        self.gates.take();
        if let Some(refusals) = self.refusals.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), refusals).await;
        }
    }
}
