//! The agent's sandbox (`agent.sandbox: bwrap`): agents, gates and the tool loop's commands run
//! under bubblewrap, in a PID namespace of their own and with the file system read-only except
//! for the task's worktree, its git directory, the agents' HOMEs, `/tmp` and what
//! `agent.sandbox_writable` adds. Hidden from them: autodev's processes (so its environment,
//! which holds the tokens, cannot be read from `/proc`), the data directory (the database,
//! other tasks' worktrees, mirrors), the usual credential stores in HOME, and the files
//! autodev's own secrets are read from.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::config::{SandboxMode, Settings};
use crate::exec::Job;

/// Directories in HOME that hold credentials, hidden from agents.
const HIDDEN_HOME_DIRS: &[&str] = &[
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".kube",
    ".docker",
    ".config/gh",
    ".config/gcloud",
];
/// Files in HOME that hold credentials, hidden from agents.
const HIDDEN_HOME_FILES: &[&str] = &[".git-credentials", ".netrc", ".pgpass"];
/// Variables naming files that hold autodev's secrets.
const SECRET_FILE_VARS: &[&str] = &[
    "GITHUB_PRIVATE_KEY_PATH",
    "GITHUB_PRIVATE_KEY_FILE",
    "GITHUB_WEBHOOK_SECRET_FILE",
    "GITHUB_TOKEN_FILE",
    "AUTODEV_API_TOKEN_FILE",
    "ANTHROPIC_API_KEY_FILE",
    "OPENAI_API_KEY_FILE",
];

#[derive(Debug)]
pub struct Sandbox {
    bwrap: PathBuf,
    hidden_dirs: Vec<PathBuf>,
    hidden_files: Vec<PathBuf>,
    writable: Vec<PathBuf>,
}

impl Sandbox {
    /// The sandbox the configuration asks for; an error when it asks for one that cannot run
    /// here (better to refuse to start than to run agents unconfined).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Self>> {
        if settings.file.agent.sandbox == SandboxMode::Off {
            return Ok(None);
        }
        let env = &settings.env;
        let bwrap = crate::exec::which("bwrap", env.get("PATH")).context(
            "agent.sandbox is bwrap, but `bwrap` is not on PATH (install bubblewrap, e.g. `apt-get install bubblewrap`)",
        )?;
        let probe = std::process::Command::new(&bwrap)
            .args(["--ro-bind", "/", "/", "--unshare-pid", "--", "true"])
            .output()
            .context("running bwrap")?;
        if !probe.status.success() {
            bail!(
                "agent.sandbox is bwrap, but bwrap cannot make a sandbox here (user namespaces may be disabled): {}",
                String::from_utf8_lossy(&probe.stderr).trim()
            );
        }
        let mut hidden_dirs = vec![settings.data_dir.clone()];
        let mut hidden_files = Vec::new();
        if let Some(home) = env.get("HOME").map(PathBuf::from) {
            hidden_dirs.extend(HIDDEN_HOME_DIRS.iter().map(|d| home.join(d)));
            hidden_files.extend(HIDDEN_HOME_FILES.iter().map(|f| home.join(f)));
        }
        hidden_files.extend(
            SECRET_FILE_VARS
                .iter()
                .filter_map(|v| env.get(v))
                .map(PathBuf::from),
        );
        Ok(Some(Self {
            bwrap,
            hidden_dirs,
            hidden_files,
            writable: settings.file.agent.sandbox_writable.clone(),
        }))
    }

    /// `job`, run inside the sandbox, where `writable` (and the configured extras) may be
    /// written to.
    pub fn wrap(&self, job: Job, writable: &[PathBuf]) -> Job {
        // `/tmp` stays shared and writable, as outside.
        let mut args: Vec<String> = [
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--bind",
            "/tmp",
            "/tmp",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        for dir in self.hidden_dirs.iter().filter(|d| d.is_dir()) {
            args.extend(["--tmpfs".to_owned(), dir.display().to_string()]);
        }
        for path in writable.iter().chain(&self.writable).filter(|p| p.exists()) {
            let p = path.display().to_string();
            args.extend(["--bind".to_owned(), p.clone(), p]);
        }
        for file in self.hidden_files.iter().filter(|f| f.is_file()) {
            args.extend([
                "--ro-bind".to_owned(),
                "/dev/null".to_owned(),
                file.display().to_string(),
            ]);
        }
        // No new session: the whole sandbox stays in the job's process group, so a timeout
        // or a cancel that kills the group kills everything inside.
        args.extend([
            "--unshare-pid".to_owned(),
            "--die-with-parent".to_owned(),
            "--chdir".to_owned(),
            job.cwd.display().to_string(),
            "--".to_owned(),
            job.program.display().to_string(),
        ]);
        args.extend(job.args);
        Job {
            program: self.bwrap.clone(),
            args,
            ..job
        }
    }
}

/// A task's sandbox: the sandbox and the paths this task may write to.
#[derive(Debug, Clone, Copy)]
pub struct Jail<'a> {
    pub sandbox: &'a Sandbox,
    pub writable: &'a [PathBuf],
}

impl Jail<'_> {
    /// `job` inside the sandbox, `extra` writable besides the task's own paths.
    pub fn wrap(&self, job: Job, extra: &[PathBuf]) -> Job {
        let writable: Vec<PathBuf> = self.writable.iter().chain(extra).cloned().collect();
        self.sandbox.wrap(job, &writable)
    }
}

/// Wraps `job` when there is a jail.
pub fn confine(jail: Option<Jail<'_>>, job: Job, extra: &[PathBuf]) -> Job {
    match jail {
        Some(j) => j.wrap(job, extra),
        None => job,
    }
}
