//! Git for tasks: base branch resolution; a repository of its own per task (its worktree's
//! `.git`, borrowing the objects of the repository the task's branch lives in); snapshots
//! that read the agent's work from outside with autodev's own git; commits, pushes and the
//! workflow guard. Reads of autodev's own repositories, their refs, commits and a task
//! repository's few files go through git2, in this process: starting a git costs more than
//! the work. Checkouts, the reading of a worktree's files, fetches and pushes use the git CLI,
//! which checks out large trees much faster than libgit2 and runs the repository's filters
//! (e.g. LFS) the way the user's own git would. Owns no task state: it never imports the
//! database or the engine.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};
use prometheus::IntCounterVec;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncWriteExt;

/// Runs git and counts each operation in `autodev_git_operations_total`.
#[derive(Clone)]
pub struct Git {
    ops: IntCounterVec,
    user_name: String,
    user_email: String,
    read_timeout: std::time::Duration,
    /// The repositories whose stale `git worktree` entries this process has pruned.
    pruned: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
    /// Task repositories made ahead, when kept.
    spares: Option<std::sync::Arc<super::spare::Spares>>,
}

/// What a task's working tree holds at one moment (see [`Git::snapshot`]).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The tip of the task repository's branch.
    pub tip: String,
    /// The tree of all its files.
    pub tree: String,
    /// Why the tip is the branch autodev keeps, not the one read from the task's repository.
    pub unread: Option<String>,
}

impl Snapshot {
    /// The same tip and the same files (however each was read).
    pub fn same_as(&self, other: &Snapshot) -> bool {
        self.tip == other.tip && self.tree == other.tree
    }
}

/// The most paths an agent's branch may change for autodev to take its history (a few tree
/// objects can name millions of paths); past that, its files are taken without it.
pub const MAX_CHANGED_PATHS: usize = 1_000_000;

/// The least free room on the worktrees' disk for a task repository to be made ahead.
const SPARE_ROOM: u64 = 1024 * 1024 * 1024;

/// Puts a job (a git reading the task's files) where the task's own jobs run: its sandbox.
pub type Confine<'a> = dyn Fn(crate::proc::exec::Job) -> crate::proc::exec::Job + Send + Sync + 'a;

/// A prepared task worktree.
#[derive(Debug, Clone)]
pub struct Worktree {
    pub path: PathBuf,
    pub branch: String,
    /// True when the branch already existed (a retry continues from it).
    pub reused_branch: bool,
    pub head: String,
    /// Its files were checked out from `head` just now (not kept from an earlier run), and
    /// its repository's index describes them.
    pub checked_out: bool,
    /// It was made ahead of the task (see `spare`).
    pub made_ahead: bool,
}

impl Worktree {
    /// Copies the task repository's index, as the checkout left it (before any agent ran), to
    /// `index`, for autodev's own reading of the files: its stat data spares hashing them all
    /// again. The copy keeps the original's modification time, which git's check for files
    /// changed in the same instant the index was written compares against.
    pub fn seed_index(&self, index: &Path) -> anyhow::Result<()> {
        let from = self.path.join(".git/index");
        if !std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_file()) {
            bail!("{} is not a file", from.display());
        }
        let written = std::fs::metadata(&from)
            .and_then(|m| m.modified())
            .with_context(|| format!("reading {}", from.display()))?;
        if let Some(dir) = index.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&from, index).with_context(|| format!("copying {}", from.display()))?;
        std::fs::File::options()
            .write(true)
            .open(index)
            .and_then(|f| f.set_modified(written))
            .with_context(|| format!("dating {}", index.display()))
    }
}

/// Whether a failed push looks like the network (worth trying again), not a refusal.
pub fn push_may_pass_later(message: &str) -> bool {
    const PASSING: &[&str] = &[
        "Could not resolve host",
        "Failed to connect",
        "Connection refused",
        "Connection reset",
        "Connection timed out",
        "Operation timed out",
        "timed out",
        "The requested URL returned error: 5",
        "RPC failed",
        "early EOF",
        "unexpected disconnect",
        "remote end hung up",
    ];
    PASSING.iter().any(|p| message.contains(p))
}

impl Git {
    pub fn new(ops: IntCounterVec, user_name: &str, user_email: &str) -> Self {
        Self {
            ops,
            user_name: user_name.to_owned(),
            user_email: user_email.to_owned(),
            read_timeout: crate::config::READ_TIMEOUT,
            pruned: Default::default(),
            spares: None,
        }
    }

    /// Has a task repository made ahead for each repository tasks start from, from now on (a
    /// process that serves task after task).
    pub fn make_spares_ahead(&self) {
        if let Some(spares) = &self.spares
            && let Err(e) = spares.want()
        {
            tracing::warn!(
                "no task repositories are made ahead ({}): {e}",
                spares.root().display()
            );
        }
    }

    /// Removes the task repositories made ahead, which give their room back.
    pub fn drop_spares(&self) {
        if let Some(spares) = &self.spares {
            spares.clear();
        }
    }

    /// Keeps task repositories made ahead (see `spare`) under `root`, once asked to
    /// ([`Git::make_spares_ahead`]).
    pub fn with_spares(mut self, root: &Path) -> Self {
        self.spares = Some(std::sync::Arc::new(super::spare::Spares::new(root)));
        self
    }

    /// Runs `read` on the repository at `dir` through git2, on a blocking thread:
    /// no process to start, for reads of repositories autodev keeps (never a task's own).
    async fn read<T, F>(&self, op: &str, dir: &Path, read: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&git2::Repository) -> anyhow::Result<T> + Send + 'static,
    {
        self.ops.with_label_values(&[op]).inc();
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            // The repository at `dir`, never one above it.
            let repo = git2::Repository::open(&dir)
                .with_context(|| format!("{} is not a git repository", dir.display()))?;
            read(&repo)
        })
        .await?
    }

    /// The bound on each step of reading an agent's work (see [`Git::snapshot`]).
    pub fn with_read_timeout(mut self, limit: std::time::Duration) -> Self {
        self.read_timeout = limit;
        self
    }

    /// `git -C dir args...`; stdout on success, an error with stderr otherwise.
    async fn run(
        &self,
        op: &str,
        dir: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<String> {
        self.ops.with_label_values(&[op]).inc();
        let out = self.output(dir, args, stdin).await?;
        if !out.status.success() {
            bail!(
                "`git {}` in {} failed: {}",
                args.join(" "),
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn output(
        &self,
        dir: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<std::process::Output> {
        self.output_with(dir, args, stdin, None).await
    }

    /// Runs git; with `token`, HTTP requests to `url` carry it as Basic credentials,
    /// handed to this git process through `GIT_CONFIG_*` variables: never on a command line,
    /// in a remote URL or in any `.git/config`.
    async fn output_with(
        &self,
        dir: &Path,
        args: &[&str],
        stdin: Option<&str>,
        auth: Option<(&str, &SecretString)>,
    ) -> anyhow::Result<std::process::Output> {
        self.output_full(dir, args, stdin, auth, None).await
    }

    /// Runs git with everything optional: input, a token, and an index file of its own (so
    /// that the worktree's real index is never touched).
    async fn output_full(
        &self,
        dir: &Path,
        args: &[&str],
        stdin: Option<&str>,
        auth: Option<(&str, &SecretString)>,
        index: Option<&Path>,
    ) -> anyhow::Result<std::process::Output> {
        self.output_tree(dir, None, args, stdin, auth, index).await
    }

    /// Runs git in the git directory `dir`; with `work_tree`, on that directory's files (a
    /// task's, whose own `.git` autodev's git never reads).
    async fn output_tree(
        &self,
        dir: &Path,
        work_tree: Option<&Path>,
        args: &[&str],
        stdin: Option<&str>,
        auth: Option<(&str, &SecretString)>,
        index: Option<&Path>,
    ) -> anyhow::Result<std::process::Output> {
        let name = format!("user.name={}", self.user_name);
        let email = format!("user.email={}", self.user_email);
        let mut cmd = std::process::Command::new("git");
        cmd.arg("-C").arg(dir);
        if let Some(tree) = work_tree {
            cmd.arg(format!("--git-dir={}", dir.display()))
                .arg(format!("--work-tree={}", tree.display()));
        }
        cmd.args(["-c", &name, "-c", &email, "-c", "commit.gpgsign=false"])
            .args(NO_HOOKS);
        // The token reaches git on a pipe (its file descriptor 3), read by a credential helper
        // that answers only for the clone URL's host: never in an environment (which a
        // process of the same user could read in /proc) or on a command line.
        let mut token_pipe = None;
        if let Some((url, token)) = auth {
            let helper = credential_helper(url);
            // An empty helper first: no configured helper may store or offer credentials.
            cmd.args(["-c", "credential.helper=", "-c", &helper]);
            // What a repository's config (an agent's, without the sandbox) could use to take
            // the token: an askpass program, a proxy or a relaxed TLS check for this very URL,
            // a transport that runs commands. The most specific key, given last, wins.
            for setting in [
                "core.askPass=".to_owned(),
                format!("http.{url}.proxy="),
                format!("http.{url}.sslVerify=true"),
                "protocol.allow=never".to_owned(),
                "protocol.https.allow=always".to_owned(),
                "protocol.http.allow=always".to_owned(),
            ] {
                cmd.args(["-c", &setting]);
            }
            token_pipe = Some(
                crate::proc::exec::pass_fd3(&mut cmd, token.expose_secret().as_bytes())
                    .context("handing git its token")?,
            );
        }
        cmd.args(args)
            .env_clear()
            .envs(git_env())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(index) = index {
            cmd.env("GIT_INDEX_FILE", index);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        // A caller that stops waiting (a timeout) ends the git too.
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().context("running git (is it installed?)")?;
        drop(token_pipe);
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await?;
            drop(pipe);
        }
        Ok(child.wait_with_output().await?)
    }

    /// The base branch: the spec's, else `DEV_BRANCH`, else the repository's HEAD branch. Never
    /// an assumed `main`. Returns the branch and the commit it points at.
    pub async fn resolve_base(
        &self,
        repo: &Path,
        wanted: Option<&str>,
    ) -> anyhow::Result<(String, String)> {
        let repo_path = repo.to_owned();
        let wanted = wanted.map(str::to_owned);
        self.ops.with_label_values(&["resolve_base"]).inc();
        tokio::task::spawn_blocking(move || {
            let repo = git2::Repository::open(&repo_path).with_context(|| {
                format!(
                    "{} is not a git repository (set REPO_PATH)",
                    repo_path.display()
                )
            })?;
            let branch = match wanted {
                Some(b) => b,
                None => {
                    let head = repo.find_reference("HEAD")?;
                    let target = head.symbolic_target().ok().flatten().map(str::to_owned);
                    match target
                        .as_deref()
                        .and_then(|t| t.strip_prefix("refs/heads/"))
                    {
                        Some(b) => b.to_owned(),
                        None => bail!(
                            "{} has a detached HEAD; set DEV_BRANCH or the spec's base_branch",
                            repo_path.display()
                        ),
                    }
                }
            };
            let commit = repo
                .revparse_single(&format!("refs/heads/{branch}"))
                .or_else(|_| repo.revparse_single(&format!("refs/remotes/origin/{branch}")))
                .and_then(|o| o.peel_to_commit())
                .map_err(|_| {
                    anyhow::anyhow!(
                        "base branch `{branch}` does not exist in {} (or has no commits yet)",
                        repo_path.display()
                    )
                })?;
            Ok((branch, commit.id().to_string()))
        })
        .await?
    }

    /// The task's working tree at `path`, on `branch`: a repository of its own (its `.git` a
    /// directory, made for this run) that borrows `home`'s objects. The branch in `home` (the
    /// user's repository, or the mirror) continues when it exists (a retry), else the one
    /// pushed earlier, else starts at `base_sha`; it stays in `home` while the task lives,
    /// which keeps what the task's repository borrows from being pruned there. The files of
    /// an earlier run's tree are kept (a retry continues with them); its git directory is not.
    pub async fn prepare_worktree(
        &self,
        home: &Path,
        path: &Path,
        branch: &str,
        base_sha: &str,
    ) -> anyhow::Result<Worktree> {
        let home_git = self.common_dir(home).await?;
        let local = format!("refs/heads/{branch}");
        let exists = self.rev(&home_git, &local).await?;
        let start = match exists.clone() {
            Some(sha) => sha,
            // A task branch pushed earlier but missing here (a new mirror) continues from origin.
            None => match self
                .rev(&home_git, &format!("refs/remotes/origin/{branch}"))
                .await?
            {
                Some(sha) => sha,
                None => base_sha.to_owned(),
            },
        };
        if exists.is_none() {
            let (name, sha) = (local.clone(), start.clone());
            self.read("update-ref", &home_git, move |repo| {
                // Created only where no branch is: a run that raced here keeps its own.
                repo.reference(
                    &name,
                    git2::Oid::from_str(&sha)?,
                    false,
                    "autodev: task branch",
                )?;
                Ok(())
            })
            .await?;
        }
        // Worktrees that earlier versions added to the repository itself, once a process.
        let first = self
            .pruned
            .lock()
            .expect("the pruned set is never poisoned")
            .insert(home_git.clone());
        if first {
            let _ = self.output(&home_git, &["worktree", "prune"], None).await;
        }
        let earlier = std::fs::symlink_metadata(path.join(".git")).is_ok();
        let made_ahead = !earlier && self.adopt_spare(&home_git, path, branch, &start).await;
        if !made_ahead {
            self.make_task_repo(&home_git, path, branch, &start, earlier)
                .await?;
        }
        Ok(Worktree {
            path: path.to_owned(),
            branch: branch.to_owned(),
            reused_branch: exists.is_some(),
            head: start,
            checked_out: !earlier,
            made_ahead,
        })
    }

    /// Moves the spare made for `home_git` at `start`, if there is one, to `path` and puts it
    /// on `branch`; whether it did. The spare's files and index are as its checkout left them,
    /// untouched since: nothing but autodev has seen them.
    async fn adopt_spare(&self, home_git: &Path, path: &Path, branch: &str, start: &str) -> bool {
        let Some(spare) = self.spares.as_ref().and_then(|s| s.take(home_git, start)) else {
            return false;
        };
        self.ops.with_label_values(&["worktree_add"]).inc();
        let (to, branch, start) = (path.to_owned(), branch.to_owned(), start.to_owned());
        let adopted = tokio::task::spawn_blocking(move || {
            let moved = (|| {
                if std::fs::symlink_metadata(&to).is_ok() {
                    std::fs::remove_dir_all(&to)?;
                }
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::rename(&spare, &to)
            })();
            if let Err(e) = moved {
                let _ = std::fs::remove_dir_all(&spare);
                return Err(anyhow::Error::from(e).context("moving the spare"));
            }
            let repo = git2::Repository::open(to.join(".git"))?;
            let local = format!("refs/heads/{branch}");
            repo.reference(
                &local,
                git2::Oid::from_str(&start)?,
                true,
                "autodev: task start",
            )?;
            repo.set_head(&local)?;
            repo.find_reference(&format!("refs/heads/{}", super::spare::PLACEHOLDER))?
                .delete()?;
            anyhow::Ok(())
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        match adopted {
            Ok(()) => true,
            Err(e) => {
                // `make_task_repo` starts again from nothing at `path`.
                tracing::warn!("taking the task repository made ahead: {e:#}");
                false
            }
        }
    }

    /// Starts making a spare for `home_git` at `commit`, unless one is there or on its way:
    /// the next task from there likely starts where this one did. Best started once the
    /// task's agent works, so that the checkout takes no time from the task's own steps.
    pub fn make_spare(&self, home_git: &Path, commit: &str) {
        let Some(spares) = self.spares.clone() else {
            return;
        };
        // Only where the room is plenty: a spare is worth less than a task's own checkout.
        let disk = spares.root().ancestors().find(|dir| dir.exists());
        let room = disk.and_then(crate::proc::reserve::free_bytes);
        if room.is_none_or(|bytes| bytes < SPARE_ROOM) {
            return;
        }
        let Some(making) = spares.start(home_git) else {
            return;
        };
        self.ops.with_label_values(&["spare"]).inc();
        let (git, home_git, commit) = (self.clone(), home_git.to_owned(), commit.to_owned());
        tokio::spawn(async move {
            let placeholder = super::spare::PLACEHOLDER;
            let made = git
                .write_task_repo(&home_git, &making.path, placeholder, &commit, false)
                .await;
            if let Err(e) = &made {
                tracing::debug!("making a task repository ahead: {e:#}");
            }
            // Made, but the room it leaves is too little: not kept.
            let room = crate::proc::reserve::free_bytes(&making.path);
            let kept = made.is_ok() && room.is_some_and(|bytes| bytes >= SPARE_ROOM);
            spares.finish(&home_git, making, kept.then_some(commit));
        });
    }

    /// A repository of its own at `path`, on `branch` at `start`, borrowing the objects of
    /// `home_git` (listed in its `objects/info/alternates`). Whatever `.git` was there goes;
    /// the files go too unless `keep_files`, else `start` is checked out.
    pub async fn make_task_repo(
        &self,
        home_git: &Path,
        path: &Path,
        branch: &str,
        start: &str,
        keep_files: bool,
    ) -> anyhow::Result<()> {
        self.ops.with_label_values(&["worktree_add"]).inc();
        self.write_task_repo(home_git, path, branch, start, keep_files)
            .await
    }

    /// [`Git::make_task_repo`], uncounted.
    async fn write_task_repo(
        &self,
        home_git: &Path,
        path: &Path,
        branch: &str,
        start: &str,
        keep_files: bool,
    ) -> anyhow::Result<()> {
        let dot_git = path.join(".git");
        match std::fs::symlink_metadata(&dot_git) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dot_git),
            Ok(_) => std::fs::remove_file(&dot_git),
            Err(_) => Ok(()),
        }
        .with_context(|| format!("removing {}", dot_git.display()))?;
        if !keep_files && path.exists() {
            std::fs::remove_dir_all(path)
                .with_context(|| format!("removing stale directory {}", path.display()))?;
        }
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let objects = home_git.join("objects");
        let objects = objects.canonicalize().unwrap_or(objects);
        let (dir, branch, start) = (path.to_owned(), branch.to_owned(), start.to_owned());
        tokio::task::spawn_blocking(move || init_task_repo(&dir, &objects, &branch, &start))
            .await??;
        if keep_files {
            self.run("read-tree", path, &["read-tree", "HEAD"], None)
                .await?;
        } else {
            self.run(
                "checkout",
                path,
                &["read-tree", "--reset", "-u", "HEAD"],
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// What `worktree` holds now, as autodev's own git in `home_git` sees it: the tip of the
    /// task repository's `branch` (with `fetch_ref`, fetched from it into that ref; else, or
    /// when it cannot be taken, `branch` in `home_git`, where the run started), and the tree of
    /// every file in the working tree, untracked ones included, built in `index` (autodev's,
    /// kept between calls for its stat data).
    ///
    /// Nothing the agent wrote in its `.git` (config, hooks, pointers) is read except by the
    /// fetch, whose `upload-pack --strict` runs none of a repository's commands and follows no
    /// `.git` file; and that only when no process of the agent's is left to change it meanwhile
    /// (the caller's word) and nothing in it is a link, a special file or another `.git`, which
    /// autodev's git would follow out of the sandbox. A fetched branch that no longer contains
    /// where the run started, or changes more than [`MAX_CHANGED_PATHS`] paths, is not taken.
    /// The files are read by git under `confine` (the task's sandbox, when there is one, so
    /// that a link swapped in while git reads leads only where the agent can see), in one
    /// process, within `agent.read_timeout`.
    #[allow(clippy::too_many_arguments)]
    pub async fn snapshot(
        &self,
        home_git: &Path,
        worktree: &Path,
        branch: &str,
        fetch_ref: Option<&str>,
        index: &Path,
        confine: Option<&Confine<'_>>,
    ) -> anyhow::Result<Snapshot> {
        self.ops.with_label_values(&["snapshot"]).inc();
        let start = self
            .rev(home_git, &format!("refs/heads/{branch}"))
            .await?
            .with_context(|| format!("{branch} is gone from {}", home_git.display()))?;
        let (tip, unread) = match fetch_ref {
            Some(r) => match self
                .fetch_agent_branch(home_git, worktree, branch, r, &start)
                .await
            {
                Ok(tip) => (tip, None),
                Err(why) => (start.clone(), Some(why)),
            },
            None => (start.clone(), None),
        };
        // One process (one sandbox to start, not three): the index keeps the stat data of
        // files that match the tip, so only changed files are read again; an index that
        // cannot be kept is made afresh. Then every file is added and the tree written.
        const READ: &str = r#"set -e
tip=$1
shift
if [ -f "$GIT_INDEX_FILE" ] && git "$@" read-tree -m "$tip" 2>/dev/null; then :; else
  rm -f "$GIT_INDEX_FILE"
  git "$@" read-tree "$tip"
fi
git "$@" add --all
git "$@" write-tree"#;
        let mut args: Vec<String> = vec!["-c".into(), READ.into(), "sh".into(), tip.clone()];
        args.push(format!("--git-dir={}", home_git.display()));
        args.push(format!("--work-tree={}", worktree.display()));
        args.extend(NO_HOOKS.iter().map(|a| (*a).to_owned()));
        let mut env = git_env();
        env.push(("GIT_INDEX_FILE".into(), index.display().to_string()));
        let job = crate::proc::exec::Job {
            program: PathBuf::from("sh"),
            args,
            cwd: worktree.to_owned(),
            env,
            stdin: None,
            timeout: self.read_timeout,
            output_limit: 64 * 1024,
            fd3: None,
        };
        let job = match confine {
            Some(c) => c(job),
            None => job,
        };
        let out = crate::proc::exec::run(job, &tokio_util::sync::CancellationToken::new())
            .await
            .context("running git (are sh and git installed?)")?;
        if !out.ending.success() {
            bail!(
                "reading the files of {} with git: {}",
                worktree.display(),
                if out.ending == crate::proc::exec::Ending::TimedOut {
                    format!("still running after {}s", self.read_timeout.as_secs())
                } else {
                    out.stderr.trim().to_owned()
                }
            );
        }
        let tree = out.stdout.trim().to_owned();
        tracing::debug!(
            took_ms = out.duration.as_millis() as u64,
            confined = confine.is_some(),
            "read the files of {}",
            worktree.display()
        );
        Ok(Snapshot { tip, tree, unread })
    }

    /// The tip of `branch` in the task repository at `worktree`, fetched into `fetch_ref` of
    /// `home_git`; why not, when it is not taken.
    async fn fetch_agent_branch(
        &self,
        home_git: &Path,
        worktree: &Path,
        branch: &str,
        fetch_ref: &str,
        start: &str,
    ) -> Result<String, String> {
        let agent = worktree.join(".git");
        let unmoved = {
            let (dir, branch, start) = (agent.clone(), branch.to_owned(), start.to_owned());
            tokio::task::spawn_blocking(move || {
                plain_git_dir(&dir)?;
                Ok::<_, String>(branch_left_at(&dir, &branch, &start))
            })
            .await
            .map_err(|e| e.to_string())??
        };
        if unmoved {
            return Ok(start.to_owned());
        }
        let refspec = format!("+refs/heads/{branch}:{fetch_ref}");
        let agent_s = agent.to_string_lossy();
        let args = [
            "-c",
            "protocol.allow=never",
            "-c",
            "protocol.file.allow=always",
            "-c",
            "fetch.fsckObjects=true",
            // Housekeeping is the repository owner's git's, not a run's to wait on.
            "-c",
            "maintenance.auto=false",
            "-c",
            "gc.auto=0",
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--upload-pack=git-upload-pack --strict",
            &agent_s,
            &refspec,
        ];
        let fetched = self.output(home_git, &args, None);
        let out = tokio::time::timeout(self.read_timeout, fetched)
            .await
            .map_err(|_| format!("fetching it took over {}s", self.read_timeout.as_secs()))?
            .map_err(|e| format!("{e:#}"))?;
        if !out.status.success() {
            return Err(format!(
                "fetching it failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let tip = self
            .rev(home_git, fetch_ref)
            .await
            .map_err(|e| format!("{e:#}"))?
            .ok_or("it has no commit")?;
        // History rewritten past the start would hide, from the workflow guard, files set back
        // to an older commit's.
        if !self
            .is_ancestor(home_git, start, &tip)
            .await
            .map_err(|e| format!("{e:#}"))?
        {
            return Err(format!(
                "it no longer contains {}, where the run started",
                &start[..start.len().min(10)]
            ));
        }
        let changed = if tip == start {
            0
        } else {
            self.count_changed_paths(home_git, start, &tip, MAX_CHANGED_PATHS + 1)
                .await
                .map_err(|e| format!("{e:#}"))?
        };
        if changed > MAX_CHANGED_PATHS {
            return Err(format!("it changes more than {MAX_CHANGED_PATHS} paths"));
        }
        Ok(tip)
    }

    /// How many paths differ between `from` and `to`, counting no further than `cap` (a tree
    /// can name millions of paths in a few objects).
    async fn count_changed_paths(
        &self,
        dir: &Path,
        from: &str,
        to: &str,
        cap: usize,
    ) -> anyhow::Result<usize> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "diff-tree",
                "-r",
                "-z",
                "--no-renames",
                "--name-only",
                from,
                to,
            ])
            .env_clear()
            .envs(git_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("running git (is it installed?)")?;
        let mut reader = tokio::io::BufReader::new(child.stdout.take().context("git's output")?);
        let mut count = 0;
        let mut path = Vec::new();
        let counting = async {
            while count < cap {
                path.clear();
                if reader.read_until(0, &mut path).await? == 0 {
                    break;
                }
                count += 1;
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(self.read_timeout, counting)
            .await
            .context("listing the changed paths took too long")??;
        let _ = child.start_kill();
        Ok(count)
    }

    /// A commit of `snap`'s files on top of its tip, in `home_git`; `None` when the tip
    /// already has those files.
    pub async fn commit_snapshot(
        &self,
        home_git: &Path,
        snap: &Snapshot,
        message: &str,
    ) -> anyhow::Result<Option<String>> {
        let (tip, tree, message) = (snap.tip.clone(), snap.tree.clone(), message.to_owned());
        let (name, email) = (self.user_name.clone(), self.user_email.clone());
        self.read("commit", home_git, move |repo| {
            let parent = repo.find_commit(git2::Oid::from_str(&tip)?)?;
            if parent.tree_id().to_string() == tree {
                return Ok(None);
            }
            let tree = repo.find_tree(git2::Oid::from_str(&tree)?)?;
            let who = git2::Signature::now(&name, &email)?;
            let commit = repo.commit(None, &who, &who, &message, &tree, &[&parent])?;
            Ok(Some(commit.to_string()))
        })
        .await
    }

    /// Points `refs/heads/<branch>` in `home_git` at `sha`, wherever it was.
    pub async fn set_branch(&self, home_git: &Path, branch: &str, sha: &str) -> anyhow::Result<()> {
        let (name, sha) = (format!("refs/heads/{branch}"), sha.to_owned());
        self.read("update-ref", home_git, move |repo| {
            repo.reference(
                &name,
                git2::Oid::from_str(&sha)?,
                true,
                "autodev: task branch",
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes `name` in `home_git`, if it is there.
    pub async fn delete_ref(&self, home_git: &Path, name: &str) -> anyhow::Result<()> {
        let name = name.to_owned();
        self.read("update-ref", home_git, move |repo| {
            match repo.find_reference(&name) {
                Ok(mut r) => r.delete()?,
                Err(e) if e.code() == git2::ErrorCode::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            Ok(())
        })
        .await
    }

    /// The commit `name` points at in `dir`, if it exists.
    pub async fn rev(&self, dir: &Path, name: &str) -> anyhow::Result<Option<String>> {
        let spec = format!("{name}^{{commit}}");
        self.read("rev-parse", dir, move |repo| {
            Ok(repo.revparse_single(&spec).ok().map(|o| o.id().to_string()))
        })
        .await
    }

    /// A bare mirror of `url` at `path`, fetched now. Remote branches land in
    /// `refs/remotes/origin/*`, so a fetch never moves the task branches worktrees have checked
    /// out. Returns the commit `<base>` points at on the server (asked of it, not read from
    /// the mirror).
    pub async fn fetch_mirror(
        &self,
        path: &Path,
        url: &str,
        token: &SecretString,
        base: &str,
    ) -> anyhow::Result<String> {
        if !path.join("HEAD").exists() {
            std::fs::create_dir_all(path)
                .with_context(|| format!("creating mirror {}", path.display()))?;
            self.run("init", path, &["init", "--quiet", "--bare"], None)
                .await?;
            self.run("config", path, &["config", "remote.origin.url", url], None)
                .await?;
            self.run(
                "config",
                path,
                &[
                    "config",
                    "remote.origin.fetch",
                    "+refs/heads/*:refs/remotes/origin/*",
                ],
                None,
            )
            .await?;
        }
        // The base as the server has it, asked before fetching (so the fetch brings it), not
        // as a ref in the mirror says: running agents share the mirror's git directory and
        // can move `refs/remotes/origin/*`.
        let Some(sha) = self.remote_branch(path, url, base, token).await? else {
            bail!("base branch `{base}` does not exist in {url}");
        };
        self.ops.with_label_values(&["fetch"]).inc();
        // The explicit URL, not `origin`: the remote's settings live in a config the agent can
        // edit.
        let out = self
            .output_with(
                path,
                &[
                    "fetch",
                    "--quiet",
                    "--prune",
                    url,
                    "+refs/heads/*:refs/remotes/origin/*",
                ],
                None,
                Some((url, token)),
            )
            .await?;
        if !out.status.success() {
            bail!(
                "fetching {url} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.ensure_commit(path, url, base, &sha, token).await?;
        Ok(sha)
    }

    /// Pushes the worktree's HEAD to `branch` on origin; every ref the server rejects is an
    /// error that names it.
    /// `lease` is the commit autodev last pushed there (`None`: the branch must not exist
    /// yet): the push replaces it, and only it, so a checkpoint can be superseded by the next
    /// one while nobody else's push is ever overwritten.
    ///
    /// Every push goes through `guard`: a change to `.github/workflows/` in any commit being
    /// pushed is refused with [`HeldBack`] unless the guard allows it.
    #[allow(clippy::too_many_arguments)]
    pub async fn push(
        &self,
        dir: &Path,
        url: &str,
        rev: &str,
        branch: &str,
        token: &SecretString,
        lease: Option<&str>,
        guard: &PushGuard<'_>,
    ) -> anyhow::Result<()> {
        if !guard.workflows_allowed {
            let touched = self.workflow_changes(dir, guard.base, rev).await?;
            if !touched.is_empty() {
                return Err(HeldBack {
                    repo: guard.repo.to_owned(),
                    paths: touched,
                }
                .into());
            }
        }
        self.ops.with_label_values(&["push"]).inc();
        let refspec = format!("{rev}:refs/heads/{branch}");
        let lease = format!(
            "--force-with-lease=refs/heads/{branch}:{}",
            lease.unwrap_or("")
        );
        let out = self
            .output_with(
                dir,
                &["push", "--porcelain", "--no-verify", &lease, url, &refspec],
                None,
                Some((url, token)),
            )
            .await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rejected: Vec<&str> = stdout.lines().filter(|l| l.starts_with('!')).collect();
        if !out.status.success() || !rejected.is_empty() {
            bail!(
                "pushing {branch} failed: {} {}",
                rejected.join("; "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The paths under `.github/workflows/` that any commit reachable from `head` and not from
    /// `base` adds, changes or removes (both sides of a rename, merges' own changes included),
    /// compared as bytes: git's quoting of unusual names and rename detection hide nothing.
    pub async fn workflow_changes(
        &self,
        dir: &Path,
        base: &str,
        head: &str,
    ) -> anyhow::Result<Vec<String>> {
        self.ops.with_label_values(&["diff"]).inc();
        let commits = self
            .run(
                "rev-list",
                dir,
                &["rev-list", head, "--not", base, "--"],
                None,
            )
            .await?;
        if commits.trim().is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .output(
                dir,
                &[
                    "diff-tree",
                    "--stdin",
                    "-r",
                    "-z",
                    "--no-renames",
                    "--name-only",
                    "-c",
                    "--root",
                    "--no-commit-id",
                ],
                Some(&commits),
            )
            .await?;
        if !out.status.success() {
            bail!(
                "listing the files changed in {head}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // And the whole range at once, from where the branch left the base: a merge whose
        // result matches one parent (`-c` shows only what differs from every parent) can
        // still change the tree. (From the merge base, not the base itself: a branch cut
        // from an older base does not carry the base's newer workflow changes.)
        let fork = self.output(dir, &["merge-base", base, head], None).await?;
        let fork = String::from_utf8_lossy(&fork.stdout).trim().to_owned();
        // No common history at all: everything in `head` counts.
        let fork = if fork.is_empty() {
            EMPTY_TREE
        } else {
            fork.as_str()
        };
        let whole = self
            .output(
                dir,
                &[
                    "diff-tree",
                    "-r",
                    "-z",
                    "--no-renames",
                    "--name-only",
                    fork,
                    head,
                ],
                None,
            )
            .await?;
        if !whole.status.success() {
            bail!(
                "comparing {head} with {base}: {}",
                String::from_utf8_lossy(&whole.stderr).trim()
            );
        }
        let mut touched: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .chain(whole.stdout.split(|b| *b == 0))
            .filter(|path| is_workflow_path(path))
            .map(|path| String::from_utf8_lossy(path).into_owned())
            .collect();
        touched.sort();
        touched.dedup();
        Ok(touched)
    }

    /// Makes sure `sha` (what `branch` of `url` pointed at) is in `dir`: fetched into no ref at
    /// all when it is not there yet.
    pub async fn ensure_commit(
        &self,
        dir: &Path,
        url: &str,
        branch: &str,
        sha: &str,
        token: &SecretString,
    ) -> anyhow::Result<()> {
        let check = format!("{sha}^{{commit}}");
        let probe = ["cat-file", "-e", check.as_str()];
        if self.output(dir, &probe, None).await?.status.success() {
            return Ok(());
        }
        self.ops.with_label_values(&["fetch"]).inc();
        let refspec = format!("refs/heads/{branch}");
        let out = self
            .output_with(
                dir,
                &["fetch", "--quiet", "--no-write-fetch-head", url, &refspec],
                None,
                Some((url, token)),
            )
            .await?;
        if !out.status.success() {
            bail!(
                "fetching {branch} from {url} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if !self.output(dir, &probe, None).await?.status.success() {
            bail!("{branch} of {url} moved while it was fetched (it was {sha}); try again");
        }
        Ok(())
    }

    /// Where `branch` is at `url` (read with `token`); `None` when it is not there.
    pub async fn remote_branch(
        &self,
        dir: &Path,
        url: &str,
        branch: &str,
        token: &SecretString,
    ) -> anyhow::Result<Option<String>> {
        self.ops.with_label_values(&["ls_remote"]).inc();
        let refname = format!("refs/heads/{branch}");
        let out = self
            .output_with(dir, &["ls-remote", url, &refname], None, Some((url, token)))
            .await?;
        if !out.status.success() {
            bail!(
                "reading {branch} at {url}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(_, r)| *r == refname)
            .map(|(sha, _)| sha.to_owned()))
    }

    /// The git directory a worktree shares with its repository (objects, refs, config).
    pub async fn common_dir(&self, worktree: &Path) -> anyhow::Result<PathBuf> {
        self.read("rev-parse", worktree, |repo| {
            let dir = repo.commondir();
            let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
            // Without the trailing `/` git2 gives it.
            Ok(dir.components().collect())
        })
        .await
    }

    /// The URL of remote `name`, as the repository's config has it; `None` without one.
    pub async fn remote_url(&self, repo: &Path, name: &str) -> anyhow::Result<Option<String>> {
        self.ops.with_label_values(&["config"]).inc();
        let out = self
            .output(
                repo,
                &["config", "--get", &format!("remote.{name}.url")],
                None,
            )
            .await?;
        // `git config --get` exits 1 for a missing key.
        match out.status.code() {
            Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())),
            Some(1) => Ok(None),
            _ => bail!(
                "reading remote.{name}.url in {}: {}",
                repo.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// The text of `path` at `rev`, if it exists there.
    pub async fn read_at(
        &self,
        repo: &Path,
        rev: &str,
        path: &str,
    ) -> anyhow::Result<Option<String>> {
        let spec = format!("{rev}:{path}");
        self.read("show", repo, move |repo| {
            Ok(repo
                .revparse_single(&spec)
                .and_then(|o| o.peel_to_blob())
                .ok()
                .map(|blob| String::from_utf8_lossy(blob.content()).into_owned()))
        })
        .await
    }

    /// Files changed between `base` and `head` (their merge base, as a pull request shows).
    pub async fn changed_between(
        &self,
        repo: &Path,
        base: &str,
        head: &str,
    ) -> anyhow::Result<Vec<String>> {
        let out = self
            .run(
                "diff",
                repo,
                &["diff", "--name-only", &format!("{base}...{head}")],
                None,
            )
            .await?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// A work-in-progress commit of everything in `worktree` on top of the branch autodev
    /// keeps, made in `home_git` (the task's repository, index and HEAD untouched, so the agent may
    /// keep working meanwhile) and recorded only under `side_ref`. `None` when there is
    /// nothing new since the tip or the last checkpoint.
    #[allow(clippy::too_many_arguments)]
    pub async fn checkpoint(
        &self,
        home_git: &Path,
        worktree: &Path,
        branch: &str,
        index: &Path,
        side_ref: &str,
        message: &str,
        confine: Option<&Confine<'_>>,
    ) -> anyhow::Result<Option<String>> {
        self.ops.with_label_values(&["checkpoint"]).inc();
        // The agent is at work: its files are read (under `confine`), its repository is not.
        let snap = self
            .snapshot(home_git, worktree, branch, None, index, confine)
            .await?;
        let last_tree = self.rev(home_git, side_ref).await?;
        if let Some(last) = last_tree
            && self.tree_of(home_git, &last).await? == snap.tree
        {
            return Ok(None);
        }
        let Some(commit) = self.commit_snapshot(home_git, &snap, message).await? else {
            return Ok(None);
        };
        self.run(
            "update-ref",
            home_git,
            &["update-ref", side_ref, &commit],
            None,
        )
        .await?;
        Ok(Some(commit))
    }

    /// Whether `ancestor` is an ancestor of (or equal to) `commit`.
    /// The best common ancestor of `a` and `b`, if they have one.
    pub async fn merge_base(&self, dir: &Path, a: &str, b: &str) -> anyhow::Result<Option<String>> {
        let (a, b) = (a.to_owned(), b.to_owned());
        self.read("merge-base", dir, move |repo| {
            let (Some(a), Some(b)) = (commit_id(repo, &a), commit_id(repo, &b)) else {
                return Ok(None);
            };
            Ok(repo.merge_base(a, b).ok().map(|o| o.to_string()))
        })
        .await
    }

    /// The tree of `commit`.
    pub async fn tree_of(&self, dir: &Path, commit: &str) -> anyhow::Result<String> {
        let (spec, commit) = (format!("{commit}^{{tree}}"), commit.to_owned());
        let shown = dir.display().to_string();
        self.read("rev-parse", dir, move |repo| {
            match repo.revparse_single(&spec) {
                Ok(tree) => Ok(tree.id().to_string()),
                Err(_) => bail!("{commit} is not a commit in {shown}"),
            }
        })
        .await
    }

    pub async fn is_ancestor(
        &self,
        dir: &Path,
        ancestor: &str,
        commit: &str,
    ) -> anyhow::Result<bool> {
        let (ancestor, commit) = (ancestor.to_owned(), commit.to_owned());
        self.read("merge-base", dir, move |repo| {
            let (Some(a), Some(c)) = (commit_id(repo, &ancestor), commit_id(repo, &commit)) else {
                return Ok(false);
            };
            Ok(a == c || repo.graph_descendant_of(c, a).unwrap_or(false))
        })
        .await
    }

    /// Brings `worktree` (detached at the branch head) up to `onto` by rebase or merge. On a
    /// conflict nothing is kept and the conflicting files are returned.
    pub async fn catch_up(
        &self,
        worktree: &Path,
        onto: &str,
        merge: bool,
        message: &str,
    ) -> anyhow::Result<Result<String, Vec<String>>> {
        let args: Vec<&str> = if merge {
            vec!["merge", "--no-edit", "--no-verify", "-m", message, onto]
        } else {
            vec!["rebase", "--no-verify", onto]
        };
        self.ops
            .with_label_values(&[if merge { "merge" } else { "rebase" }])
            .inc();
        let out = self.output(worktree, &args, None).await?;
        if out.status.success() {
            return Ok(Ok(self.head(worktree).await?));
        }
        let conflicts = self
            .output(worktree, &["diff", "--name-only", "--diff-filter=U"], None)
            .await?;
        let files: Vec<String> = String::from_utf8_lossy(&conflicts.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        let abort = if merge {
            ["merge", "--abort"]
        } else {
            ["rebase", "--abort"]
        };
        let _ = self.output(worktree, &abort, None).await?;
        if files.is_empty() {
            bail!(
                "{} failed: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Err(files))
    }

    /// A detached worktree at `rev`, for work that must not touch a task's own worktree.
    pub async fn add_detached(&self, repo: &Path, path: &Path, rev: &str) -> anyhow::Result<()> {
        if path.exists() {
            self.remove_worktree(repo, path).await?;
        }
        self.run(
            "worktree_add",
            repo,
            &[
                "worktree",
                "add",
                "--quiet",
                "--detach",
                &path.to_string_lossy(),
                rev,
            ],
            None,
        )
        .await?;
        Ok(())
    }

    /// Moves `branch` from `old` to `new` (refusing if it moved meanwhile).
    pub async fn move_branch(
        &self,
        repo: &Path,
        branch: &str,
        new: &str,
        old: &str,
    ) -> anyhow::Result<()> {
        self.run(
            "update-ref",
            repo,
            &["update-ref", &format!("refs/heads/{branch}"), new, old],
            None,
        )
        .await?;
        Ok(())
    }

    /// Deletes a local branch and any refs under `refs/autodev/` for the task, if present.
    pub async fn delete_branch(
        &self,
        repo: &Path,
        branch: &str,
        side_ref: &str,
    ) -> anyhow::Result<()> {
        let _ = self
            .output(
                repo,
                &["update-ref", "-d", &format!("refs/heads/{branch}")],
                None,
            )
            .await?;
        let _ = self
            .output(repo, &["update-ref", "-d", side_ref], None)
            .await?;
        self.ops.with_label_values(&["branch_delete"]).inc();
        Ok(())
    }

    /// Where `branch` is checked out, if anywhere.
    pub async fn checked_out_at(
        &self,
        repo: &Path,
        branch: &str,
    ) -> anyhow::Result<Option<String>> {
        let out = self
            .run(
                "for-each-ref",
                repo,
                &[
                    "for-each-ref",
                    "--format=%(worktreepath)",
                    &format!("refs/heads/{branch}"),
                ],
                None,
            )
            .await?;
        Ok(Some(out.trim().to_owned()).filter(|p| !p.is_empty()))
    }

    /// The first parent of `commit`.
    pub async fn parent_of(&self, dir: &Path, commit: &str) -> anyhow::Result<String> {
        let commit = commit.to_owned();
        self.read("rev-parse", dir, move |repo| {
            let found = repo.revparse_single(&commit)?.peel_to_commit()?;
            Ok(found.parent_id(0)?.to_string())
        })
        .await
    }

    /// Removes a task's worktree (the branch stays).
    pub async fn remove_worktree(&self, repo: &Path, path: &Path) -> anyhow::Result<()> {
        let path_s = path.to_string_lossy();
        let removed = self
            .output(repo, &["worktree", "remove", "--force", &path_s], None)
            .await?;
        self.ops.with_label_values(&["worktree_remove"]).inc();
        if !removed.status.success() && path.exists() {
            std::fs::remove_dir_all(path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
        self.run("worktree_prune", repo, &["worktree", "prune"], None)
            .await?;
        Ok(())
    }

    pub async fn head(&self, dir: &Path) -> anyhow::Result<String> {
        Ok(self
            .run("rev-parse", dir, &["rev-parse", "HEAD"], None)
            .await?
            .trim()
            .to_owned())
    }
}

/// A git credential helper (`!sh`) that answers a `get` for `url`'s scheme and host only,
/// with the token it reads from file descriptor 3. A URL rewritten by a repository's config
/// (`insteadOf`, which an agent can write outside a sandbox) gets nothing.
fn credential_helper(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // Scheme and host come from autodev's own configuration (a clone URL GitHub sent, or
    // `origin` read before the agent ran); quoted for the shell all the same.
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    format!(
        "credential.helper=!f() {{ test \"$1\" = get || exit 0; p=; h=; \
         while IFS= read -r l && test -n \"$l\"; do case \"$l\" in \
         protocol=*) p=${{l#protocol=}};; host=*) h=${{l#host=}};; esac; done; \
         test \"$p\" = {scheme} && test \"$h\" = {host} || exit 0; \
         printf 'username=x-access-token\\npassword=%s\\n' \"$(cat <&3)\"; }}; f",
        scheme = quote(scheme),
        host = quote(host),
    )
}

/// The commit `rev` names in `repo`, if it names one.
fn commit_id(repo: &git2::Repository, rev: &str) -> Option<git2::Oid> {
    repo.revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .ok()
        .map(|c| c.id())
}

/// Makes the git directory of a task's repository at `path` (what `git init` would, without
/// templates), borrowing `objects`, with `refs/heads/<branch>` at `start` and checked out
/// (HEAD names it). In this process: a repository is a few small files, and each git process
/// costs more than writing them.
fn init_task_repo(path: &Path, objects: &Path, branch: &str, start: &str) -> anyhow::Result<()> {
    let local = format!("refs/heads/{branch}");
    let mut opts = git2::RepositoryInitOptions::new();
    opts.external_template(false)
        .no_reinit(true)
        .initial_head(&local);
    git2::Repository::init_opts(path, &opts)
        .with_context(|| format!("making a repository at {}", path.display()))?;
    let dot_git = path.join(".git");
    // What the sandbox binds read-only is there from the start: a path the agent could
    // create would be its own.
    for dir in ["hooks", "info", "objects/info"] {
        std::fs::create_dir_all(dot_git.join(dir))
            .with_context(|| format!("creating {}", dot_git.join(dir).display()))?;
    }
    std::fs::write(
        dot_git.join("objects/info/alternates"),
        format!("{}\n", objects.display()),
    )
    .context("writing the task repository's alternates")?;
    // Opened again: the borrowed objects are found from here on.
    let repo = git2::Repository::open(&dot_git)?;
    let mut config = repo.config()?.open_level(git2::ConfigLevel::Local)?;
    // What the agent's own git would otherwise try to write where it cannot (the sandbox
    // keeps `objects/info` read-only).
    for (key, value) in [
        ("gc.auto", "0"),
        ("maintenance.auto", "false"),
        ("gc.writeCommitGraph", "false"),
        ("fetch.writeCommitGraph", "false"),
    ] {
        config.set_str(key, value)?;
    }
    repo.reference(
        &local,
        git2::Oid::from_str(start)?,
        true,
        "autodev: task start",
    )
    .with_context(|| format!("{start} is not a commit the task's repository can read"))?;
    Ok(())
}

/// Whether the task repository's git directory `dir` (checked by [`plain_git_dir`]: only
/// directories and regular files) plainly holds `branch` at `start`, where the run started:
/// its loose ref says so, and nothing in its config can put the refs elsewhere. Then a fetch
/// would bring `start` and nothing new, and is not run. Anything else (a packed or missing
/// ref, another ref store) is left to the fetch.
fn branch_left_at(dir: &Path, branch: &str, start: &str) -> bool {
    // Files of an agent's: read only when small.
    let read = |path: &Path| {
        let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= 64 * 1024);
        small.then(|| std::fs::read(path).ok()).flatten()
    };
    let Some(config) = read(&dir.join("config")) else {
        return false;
    };
    if config
        .to_ascii_lowercase()
        .windows(10)
        .any(|w| w == b"refstorage")
        || std::fs::symlink_metadata(dir.join("reftable")).is_ok()
    {
        return false;
    }
    read(&dir.join("refs/heads").join(branch))
        .is_some_and(|text| text.trim_ascii() == start.as_bytes())
}

/// Whether the git directory `dir` is only directories and regular files, and has no
/// `commondir` and no `.git` inside (either would send git to another git directory); the
/// first offence otherwise.
fn plain_git_dir(dir: &Path) -> Result<(), String> {
    /// Far more than a task's own repository holds (its history is borrowed).
    const MAX_ENTRIES: usize = 1_000_000;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if std::fs::symlink_metadata(dir.join("commondir")).is_ok() {
        return Err("it has a `commondir`".to_owned());
    }
    let mut stack = vec![dir.to_owned()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", d.display()))?;
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(format!("it holds more than {MAX_ENTRIES} files"));
            }
            let kind = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
            if entry.file_name() == ".git" {
                // upload-pack would follow it to a repository of the agent's choosing.
                return Err(format!(
                    "{} names another repository",
                    entry.path().display()
                ));
            }
            if kind.is_dir() {
                stack.push(entry.path());
            } else if !kind.is_file() {
                return Err(format!(
                    "{} is a link or a special file",
                    entry.path().display()
                ));
            }
        }
    }
    Ok(())
}

/// Without a sandbox the agent can write to a repository's config and hooks: none of its
/// hooks or file monitors run in autodev's git.
const NO_HOOKS: [&str; 4] = [
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
];

/// The whole environment of every git autodev runs: only what git needs of autodev's own
/// (never its secrets), no prompts, and the real objects whatever `refs/replace/` the agent
/// wrote.
fn git_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    env.push(("GIT_TERMINAL_PROMPT".into(), "0".into()));
    env.push(("GIT_NO_REPLACE_OBJECTS".into(), "1".into()));
    env
}

/// git's empty tree, which every repository knows.
const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/// `.github/workflows/...`, or `.github/workflows` or `.github` themselves (a file or link put
/// where the directory belongs), as raw bytes.
fn is_workflow_path(path: &[u8]) -> bool {
    path == b".github" || path == b".github/workflows" || path.starts_with(b".github/workflows/")
}

/// What a push checks first.
pub struct PushGuard<'a> {
    /// `owner/name`, for the message.
    pub repo: &'a str,
    /// The commit the pushed range starts after (the base branch): every commit after it is
    /// checked.
    pub base: &'a str,
    /// `github.allow_workflow_changes` allows this repository.
    pub workflows_allowed: bool,
}

/// A push refused because it would change `.github/workflows/`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not pushed: the change touches {} under .github/workflows/, which autodev does not push unless github.allow_workflow_changes allows {repo} (workflow changes can reach CI secrets)",
    .paths.iter().map(|p| format!("`{}`", p.escape_debug())).collect::<Vec<_>>().join(", ")
)]
pub struct HeldBack {
    pub repo: String,
    pub paths: Vec<String>,
}

/// Refuses a data directory inside the repository autodev works on: nested worktrees confuse
/// cargo, pytest and editors, and the agent could read the database.
pub fn check_data_dir_outside(repo: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let repo = repo.canonicalize().unwrap_or_else(|_| repo.to_owned());
    let data = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_owned());
    if data.starts_with(&repo) {
        bail!(
            "AUTODEV_DATA_DIR ({}) is inside the repository {}; put it elsewhere (default: ~/.local/share/autodev)",
            data.display(),
            repo.display()
        );
    }
    Ok(())
}

/// The conventional commit message for a task's work.
pub fn commit_message(role: &str, title: &str, task_id: &str, passed: bool) -> String {
    let kind = if passed { "feat" } else { "chore" };
    let mut subject = format!("{kind}({role}): {}", title.trim());
    if subject.chars().count() > 72 {
        subject = subject.chars().take(71).collect::<String>() + "…";
    }
    let note = if passed {
        "Acceptance gates passed."
    } else {
        "Acceptance gates did not pass; kept so that a retry continues from here."
    };
    format!("{subject}\n\n{note}\n\nAutodev-Task: {task_id}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fetch is skipped only when the branch plainly sits where the run started.
    #[test]
    fn only_a_loose_ref_at_the_start_spares_the_fetch() {
        let start = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";
        let other = "1111111111111111111111111111111111111111";
        let dir = tempfile::tempdir().unwrap();
        let git = dir.path();
        std::fs::create_dir_all(git.join("refs/heads/auto/backend")).unwrap();
        std::fs::write(git.join("config"), "[core]\n\tbare = false\n").unwrap();
        let branch = "auto/backend/T-1";
        let set = |text: &str| std::fs::write(git.join("refs/heads").join(branch), text).unwrap();
        set(&format!("{start}\n"));
        assert!(branch_left_at(git, branch, start));
        set(&format!("{other}\n"));
        assert!(!branch_left_at(git, branch, start), "the agent committed");
        std::fs::remove_file(git.join("refs/heads").join(branch)).unwrap();
        std::fs::write(
            git.join("packed-refs"),
            format!("{start} refs/heads/{branch}\n"),
        )
        .unwrap();
        assert!(
            !branch_left_at(git, branch, start),
            "a packed ref is the fetch's to read"
        );
        set(&format!("{start}\n"));
        std::fs::write(
            git.join("config"),
            "[core]\n\trepositoryformatversion = 1\n[extensions]\n\trefStorage = reftable\n",
        )
        .unwrap();
        assert!(!branch_left_at(git, branch, start), "refs kept elsewhere");
        std::fs::write(git.join("config"), "[core]\n").unwrap();
        set(&format!("{start}\n{}", " ".repeat(100_000)));
        assert!(!branch_left_at(git, branch, start), "too big to be a ref");
    }

    #[test]
    fn commit_messages_are_conventional() {
        let m = commit_message("backend", "Add health endpoint", "TSK-1", true);
        assert!(m.starts_with("feat(backend): Add health endpoint\n\n"));
        assert!(m.ends_with("Autodev-Task: TSK-1\n"));
        let long = commit_message("data", &"x".repeat(200), "T", false);
        assert!(long.lines().next().unwrap().chars().count() <= 72);
        assert!(long.starts_with("chore(data): "));
    }

    #[test]
    fn push_failures_are_told_apart() {
        assert!(push_may_pass_later(
            "fatal: unable to access 'https://github.com/a/b.git/': Could not resolve host: github.com"
        ));
        assert!(push_may_pass_later(
            "error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502"
        ));
        assert!(!push_may_pass_later(
            "remote: Permission to a/b.git denied to someone. fatal: unable to access: The requested URL returned error: 403"
        ));
        assert!(!push_may_pass_later(
            "pushing auto/backend/T-1 failed: ! refs/heads/auto/backend/T-1 [rejected] (stale info)"
        ));
    }

    #[test]
    fn the_credential_helper_answers_its_own_host_only() {
        let helper = credential_helper("http://127.0.0.1:8000/acme/web.git");
        let script = helper.strip_prefix("credential.helper=!").unwrap();
        let ask = |request: &str| {
            use std::io::Write;
            let mut cmd = std::process::Command::new("sh");
            // git runs a `!` helper through the shell with the action appended.
            cmd.args(["-c", &format!("{script} get")])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            let fd3 = crate::proc::exec::pass_fd3(&mut cmd, b"s3cret").unwrap();
            let mut child = cmd.spawn().unwrap();
            drop(fd3);
            child
                .stdin
                .take()
                .unwrap()
                .write_all(request.as_bytes())
                .unwrap();
            String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
        };
        assert_eq!(
            ask("protocol=http\nhost=127.0.0.1:8000\n\n"),
            "username=x-access-token\npassword=s3cret\n"
        );
        assert_eq!(ask("protocol=http\nhost=evil.example\n\n"), "");
        assert_eq!(ask("protocol=https\nhost=127.0.0.1:8000\n\n"), "");
    }

    #[test]
    fn data_dir_inside_repo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_data_dir_outside(dir.path(), &dir.path().join(".autodev")).is_err());
        let other = tempfile::tempdir().unwrap();
        assert!(check_data_dir_outside(dir.path(), other.path()).is_ok());
    }
}
