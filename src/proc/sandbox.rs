//! The agent's sandbox (`agent.sandbox: bwrap`): agents, gates and the tool loop's commands run
//! under bubblewrap, in PID, IPC and network namespaces of their own, with the file system
//! read-only except for the task's worktree (whose `.git` is the task's own repository, minus
//! the parts git executes from or follows), the agents' HOMEs, a private `/tmp` and what
//! `agent.sandbox_writable` adds; the object store the task's repository borrows is readable.
//! Hidden from them: autodev's processes (so its environment, which holds the tokens, cannot be
//! read from `/proc`), the data directory (the database, other tasks' worktrees, mirrors), the
//! usual credential stores in HOME, and the files autodev's own secrets are read from.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::{SandboxMode, Settings};
use crate::proc::exec::Job;

/// What App mode says at start and on `/readyz` when told to run agents unconfined.
pub const UNCONFINED_WARNING: &str = "agent.sandbox is off: agents and gates run unconfined as autodev's own user, on the words of whoever opened the issue; they can read every file that user can";

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
/// Files in HOME that hold credentials, hidden from agents: the agent CLIs' logins too (each
/// run's HOME has its own copy of its own CLI's).
const HIDDEN_HOME_FILES: &[&str] = &[
    ".git-credentials",
    ".netrc",
    ".pgpass",
    ".claude.json",
    ".claude/.credentials.json",
    ".codex/auth.json",
    ".gemini/oauth_creds.json",
    ".gemini/google_accounts.json",
    ".config/cursor/auth.json",
];
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

/// What network a sandboxed job has.
#[derive(Debug, Clone, Copy)]
pub enum Net<'a> {
    /// None: a namespace of its own with only a loopback.
    None,
    /// A namespace of its own, where `autodev relay` puts the egress proxy at this Unix socket
    /// on the loopback (`egress::RELAY_PORT`), with the proxy variables set.
    Proxy(&'a Path),
}

#[derive(Debug)]
pub struct Sandbox {
    bwrap: PathBuf,
    /// autodev's own program, which relays the egress proxy inside the sandbox.
    relay: PathBuf,
    hidden_dirs: Vec<PathBuf>,
    hidden_files: Vec<PathBuf>,
    writable: Vec<PathBuf>,
}

/// `path` with links resolved when it exists (bwrap mounts onto real paths), else as given.
fn real(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}

impl Sandbox {
    /// The sandbox the configuration asks for; an error when it asks for one that cannot run
    /// here (better to refuse to start than to run agents unconfined). `auto` in App mode,
    /// where outsiders' issues reach agents, is such a request; in local mode it goes on
    /// without a sandbox, with a warning.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Option<Self>> {
        match settings.file.agent.sandbox {
            SandboxMode::Off => {
                if settings.github.is_some() {
                    tracing::warn!("{}", UNCONFINED_WARNING);
                }
                Ok(None)
            }
            SandboxMode::Bwrap => Self::make(settings).map(Some),
            SandboxMode::Auto => match Self::make(settings) {
                Ok(sandbox) => Ok(Some(sandbox)),
                Err(e) if settings.github.is_some() => Err(e.context(
                    "GitHub App mode runs agents on outsiders' words, so it needs the sandbox; \
                     fix the cause, or set `agent: {sandbox: off}` to run agents unconfined",
                )),
                Err(e) => {
                    tracing::warn!(
                        "agents run without a sandbox ({e:#}); they can read what your user can"
                    );
                    Ok(None)
                }
            },
        }
    }

    fn make(settings: &Settings) -> anyhow::Result<Self> {
        let env = &settings.env;
        let bwrap = crate::proc::exec::which("bwrap", env.get("PATH")).context(
            "the agent sandbox needs `bwrap`, which is not on PATH (install bubblewrap, e.g. `apt-get install bubblewrap`)",
        )?;
        let mut hidden_dirs = vec![real(&settings.data_dir), real(&settings.worktrees_dir)];
        let mut hidden_files = Vec::new();
        if let Some(home) = env.get("HOME").map(PathBuf::from) {
            hidden_dirs.extend(HIDDEN_HOME_DIRS.iter().map(|d| real(&home.join(d))));
            hidden_files.extend(HIDDEN_HOME_FILES.iter().map(|f| real(&home.join(f))));
        }
        hidden_files.extend(
            SECRET_FILE_VARS
                .iter()
                .filter_map(|v| env.get(v))
                .map(|f| real(Path::new(f))),
        );
        // A database kept outside the data directory is hidden too.
        if let Some(path) = settings
            .database_url
            .strip_prefix("sqlite://")
            .map(|p| p.split('?').next().unwrap_or(p))
        {
            let db = real(Path::new(path));
            for suffix in ["", "-wal", "-shm"] {
                hidden_files.push(PathBuf::from(format!("{}{suffix}", db.display())));
            }
        }
        let writable: Vec<PathBuf> = settings
            .file
            .agent
            .sandbox_writable
            .iter()
            .map(|p| real(p))
            .collect();
        for w in &writable {
            if let Some(h) = hidden_dirs
                .iter()
                .chain(&hidden_files)
                .find(|h| h.starts_with(w))
            {
                bail!(
                    "agent.sandbox_writable lists {}, which holds {}, hidden from agents",
                    w.display(),
                    h.display()
                );
            }
        }
        let relay = std::env::current_exe()
            .map(|p| real(&p))
            .context("finding autodev's own program (it relays the egress proxy)")?;
        let sandbox = Self {
            bwrap,
            relay,
            hidden_dirs,
            hidden_files,
            writable,
        };
        // Tried once with the very arguments jobs get: refused mounts show here, not later.
        let probe = sandbox.wrap(
            Job {
                program: PathBuf::from("/bin/true"),
                args: Vec::new(),
                cwd: PathBuf::from("/"),
                env: Vec::new(),
                stdin: None,
                timeout: std::time::Duration::from_secs(30),
                output_limit: 0,
                fd3: None,
            },
            &[],
            &[],
            Net::None,
        );
        let mut command = std::process::Command::new(&probe.program);
        command.args(&probe.args).env_clear();
        let fd3 = match &probe.fd3 {
            Some(options) => Some(crate::proc::exec::pass_fd3(&mut command, options)?),
            None => None,
        };
        let out = command.output().context("running bwrap")?;
        drop(fd3);
        if !out.status.success() {
            bail!(
                "bwrap cannot make the agent sandbox here (user namespaces or mounts may be refused): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(sandbox)
    }

    /// `job`, run inside the sandbox, where `writable` (and the configured extras) may be
    /// written to and `readable` read, wherever they are.
    pub fn wrap(&self, job: Job, writable: &[PathBuf], readable: &[PathBuf], net: Net<'_>) -> Job {
        let mut job = job;
        let mut args: Vec<String> = Vec::new();
        let mut add = |parts: &[&str]| args.extend(parts.iter().map(|p| (*p).to_owned()));
        // A private /tmp and IPC namespace: no other process's sockets (ssh-agent, say).
        add(&["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]);
        add(&["--tmpfs", "/tmp", "--unshare-ipc"]);
        // Host services listen on Unix sockets under /run (session and system buses,
        // container engines, databases), which a network namespace does not cut off.
        if Path::new("/run").is_dir() {
            add(&["--tmpfs", "/run"]);
        }
        // Where /var/run is a directory of its own (not a link to /run), its Docker socket.
        let var_run_own = std::fs::symlink_metadata("/var/run").is_ok_and(|m| m.is_dir());
        if var_run_own && Path::new("/var/run/docker.sock").exists() {
            add(&["--ro-bind", "/dev/null", "/var/run/docker.sock"]);
        }
        let s = |p: &Path| p.display().to_string();
        // The program by its full path: a bare name (`sh`) is looked up on the job's PATH,
        // as the kernel would not.
        let path_var = job
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let program = crate::proc::exec::which(&job.program.to_string_lossy(), path_var)
            .map(|p| real(&p))
            .unwrap_or_else(|| job.program.clone());
        // Its directory, wherever it lives (a private /tmp would hide it), bound before the
        // hidden paths: bound after them, a program in HOME would uncover HOME's secrets.
        if let Some(dir) = program.parent().filter(|d| d.is_absolute()) {
            add(&["--ro-bind", &s(dir), &s(dir)]);
        }
        // A network of its own: only a loopback, and on it the relay to the egress proxy.
        add(&["--unshare-net"]);
        if let Net::Proxy(_) = net
            && let Some(dir) = self.relay.parent()
        {
            add(&["--ro-bind", &s(dir), &s(dir)]);
        }
        for dir in self.hidden_dirs.iter().filter(|d| d.is_dir()) {
            add(&["--tmpfs", &s(dir)]);
        }
        let writable: Vec<PathBuf> = writable
            .iter()
            .chain(&self.writable)
            .filter(|p| p.exists())
            .map(|p| real(p))
            .collect();
        // What the task reads where it is hidden (the object store its repository borrows,
        // under the data directory), as autodev names it; before what
        // may be written, which a read-only bind must not cover.
        for path in readable.iter().filter(|p| p.exists()).map(|p| real(p)) {
            add(&["--ro-bind", &s(&path), &s(&path)]);
        }
        for path in &writable {
            add(&["--bind", &s(path), &s(path)]);
        }
        // The egress proxy's socket, and nothing else of where it lives.
        if let Net::Proxy(socket) = net {
            add(&["--bind", &s(socket), &s(socket)]);
        }
        // A task's own repository (its worktree's `.git`): what git would execute or follow
        // stays read-only (config, hooks, info, and `objects/info`, which lists the borrowed
        // object stores), and each directory holding such a path is a mount point of its own,
        // which cannot be moved aside and rebuilt. Only what is itself
        // and where it says: bwrap follows links on both sides of a bind, so a link planted
        // there would mount whatever it points at (a hidden path) back into sight.
        let plain = |p: &Path| {
            std::fs::symlink_metadata(p).is_ok_and(|m| !m.file_type().is_symlink())
                && p.canonicalize().is_ok_and(|c| c == p)
        };
        for path in &writable {
            // Whatever the agent did to it in an earlier job (a deleted `HEAD` does not make
            // it something else): autodev made it, and its parts are bound as they are.
            let git_dir = path.join(".git");
            if plain(&git_dir) && git_dir.is_dir() {
                let objects = git_dir.join("objects");
                for dir in [&git_dir, &objects].into_iter().filter(|d| plain(d)) {
                    add(&["--bind", &s(dir), &s(dir)]);
                }
                for p in ["config", "hooks", "info", "objects/info"]
                    .iter()
                    .map(|p| git_dir.join(p))
                    .filter(|p| plain(p))
                {
                    add(&["--ro-bind", &s(&p), &s(&p)]);
                }
            }
            // A worktree's `.git` file (earlier versions), which says where its git directory is.
            if plain(&git_dir) && git_dir.is_file() {
                add(&["--ro-bind", &s(&git_dir), &s(&git_dir)]);
            }
        }
        let under_hidden_dir = |f: &PathBuf| self.hidden_dirs.iter().any(|d| f.starts_with(d));
        for file in self
            .hidden_files
            .iter()
            .filter(|f| f.is_file() && !under_hidden_dir(f))
        {
            add(&["--ro-bind", "/dev/null", &s(file)]);
        }
        // A session of its own (no typing into autodev's terminal). The outer bwrap stays in
        // the job's process group, and `--die-with-parent` takes the sandbox down with it, so
        // a timeout or a cancel that kills the group still ends everything inside.
        // No capability inside, even when autodev runs as root: no unmounting what hides the
        // secrets, no remounting the file system writable.
        add(&[
            "--cap-drop",
            "ALL",
            "--unshare-pid",
            "--die-with-parent",
            "--new-session",
            "--chdir",
            &s(&job.cwd),
        ]);
        // The options go on file descriptor 3, not the command line: inside, the sandbox's
        // first process is bwrap, and its command line would name every hidden path.
        let mut options = Vec::new();
        for arg in &args {
            options.extend_from_slice(arg.as_bytes());
            options.push(0);
        }
        let mut command = vec!["--args".to_owned(), "3".to_owned(), "--".to_owned()];
        if let Net::Proxy(socket) = net {
            command.extend([
                s(&self.relay),
                "relay".to_owned(),
                "--socket".to_owned(),
                s(socket),
                "--port".to_owned(),
                crate::proc::egress::RELAY_PORT.to_string(),
                "--".to_owned(),
            ]);
            job.env
                .retain(|(k, _)| !k.to_ascii_lowercase().ends_with("_proxy"));
            job.env.extend(crate::proc::egress::proxy_env());
        }
        command.push(s(&program));
        command.extend(std::mem::take(&mut job.args));
        Job {
            program: self.bwrap.clone(),
            args: command,
            fd3: Some(options),
            ..job
        }
    }
}

/// A task's sandbox: the sandbox, the paths this task may write to, and its network.
#[derive(Debug, Clone, Copy)]
pub struct Jail<'a> {
    pub sandbox: &'a Sandbox,
    pub paths: &'a TaskPaths,
    pub net: Net<'a>,
}

/// What a task's jobs may reach besides what every sandbox has.
#[derive(Debug, Clone, Default)]
pub struct TaskPaths {
    /// Written to: the task's worktree (its `.git` is the task's own repository).
    pub writable: Vec<PathBuf>,
    /// Read where it would be hidden: the object store the task's repository borrows.
    pub readable: Vec<PathBuf>,
}

impl Jail<'_> {
    /// `job` inside the sandbox, `extra` writable besides the task's own paths and the job's
    /// own HOME (its `HOME`, which autodev makes for each run and each kind of job: an
    /// agent's, the gates'), and no other job's.
    pub fn wrap(&self, job: Job, extra: &[PathBuf]) -> Job {
        let home = job
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "HOME")
            .map(|(_, v)| PathBuf::from(v));
        let writable: Vec<PathBuf> = self
            .paths
            .writable
            .iter()
            .chain(extra)
            .cloned()
            .chain(home)
            .collect();
        self.sandbox
            .wrap(job, &writable, &self.paths.readable, self.net)
    }
}

/// autodev's own program, as the shim for jobs run without a sandbox; set once by the
/// processes that run tasks.
static REAPER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes this process run its unsandboxed jobs under `<autodev> reap`.
pub fn use_reaper() {
    if let Ok(program) = std::env::current_exe() {
        let _ = REAPER.set(real(&program));
    }
}

/// Wraps `job` in the jail when there is one. Without, it runs under `autodev reap` (when
/// this process set it up), which ends whatever the job leaves behind when it ends: the
/// sandbox's PID namespace does that inside.
pub fn confine(jail: Option<Jail<'_>>, job: Job, extra: &[PathBuf]) -> Job {
    match (jail, REAPER.get()) {
        (Some(j), _) => j.wrap(job, extra),
        (None, Some(shim)) => {
            let mut args = vec!["reap".to_owned(), "--".to_owned()];
            args.push(job.program.display().to_string());
            args.extend(job.args);
            Job {
                program: shim.clone(),
                args,
                ..job
            }
        }
        (None, None) => job,
    }
}
