//! Agent providers: the `claude`, `codex`, `gemini` and `cursor-agent` CLIs (or any program),
//! run without a shell in an allow-listed environment with a HOME of their own, and the
//! Anthropic / OpenAI APIs through the built-in tool loop (`agent_api`), tried in the
//! configured order until one succeeds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{CliKind, Env, ProviderEntry, ProviderMode, ProvidersConfig, kind_from_name};
use crate::proc::exec::{self, Ending};

/// Prompts longer than this go through a file, not an argument (Linux caps one argument at
/// 128 KiB).
const MAX_PROMPT_ARG: usize = 100 * 1024;

/// Variables every agent and gate may see.
const BASE_ALLOW: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_NUMERIC",
    "LC_TIME",
    "LC_COLLATE",
    "LC_MONETARY",
    "TERM",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "SHELL",
];

/// A provider as configured: its name, entry and the CLI kind that decides flags and parsing.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub entry: ProviderEntry,
    pub kind: CliKind,
}

impl Provider {
    pub fn binary(&self) -> String {
        self.entry.binary.clone().unwrap_or_else(|| {
            match self.kind {
                CliKind::Claude => "claude",
                CliKind::Codex => "codex",
                CliKind::Gemini => "gemini",
                CliKind::Cursor => "cursor-agent",
                CliKind::Generic => self.name.as_str(),
            }
            .to_owned()
        })
    }

    /// Whether it can run here: `Ok(path)` (API mode: the URL it calls) or why not.
    pub fn locate(&self, env: &Env) -> Result<PathBuf, String> {
        if self.entry.mode == ProviderMode::Api {
            return crate::agent::tool_loop::endpoint(self, env, None)
                .map(|ep| PathBuf::from(ep.url));
        }
        let binary = self.binary();
        exec::which(&binary, env.get("PATH")).ok_or_else(|| format!("`{binary}` not found on PATH"))
    }

    fn default_args(&self) -> Vec<String> {
        let v: &[&str] = match self.kind {
            // `acceptEdits` plus an explicit tool list works when running as root, where
            // `bypassPermissions` is refused.
            CliKind::Claude => &[
                "-p",
                "--output-format",
                "json",
                "--permission-mode",
                "acceptEdits",
                "--allowedTools",
                "Bash,Edit,Write,MultiEdit,NotebookEdit,Read,Glob,Grep,LS,TodoWrite",
                "--model",
                "{model}",
            ],
            CliKind::Codex => &[
                "exec",
                "--sandbox",
                "workspace-write",
                "--skip-git-repo-check",
                "--json",
                "--model",
                "{model}",
                "-",
            ],
            CliKind::Gemini => &[
                "--yolo",
                "--output-format",
                "json",
                "--model",
                "{model}",
                "-p",
                "Carry out the task given on standard input.",
            ],
            CliKind::Cursor => &[
                "-p",
                "--force",
                "--output-format",
                "json",
                "--model",
                "{model}",
                "{prompt}",
            ],
            CliKind::Generic => &[],
        };
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Variables of autodev's environment this provider may see, besides the base list.
    fn allowed(&self, name: &str) -> bool {
        let prefixes: &[&str] = match self.kind {
            CliKind::Claude => &["ANTHROPIC_", "CLAUDE_CODE_"],
            CliKind::Codex => &["OPENAI_"],
            CliKind::Gemini => &[
                "GEMINI_",
                "GOOGLE_API_KEY",
                "GOOGLE_CLOUD_",
                "GOOGLE_GENAI_",
            ],
            CliKind::Cursor => &["CURSOR_API_KEY"],
            CliKind::Generic => &[],
        };
        prefixes.iter().any(|p| name.starts_with(p)) || self.entry.env.iter().any(|e| e == name)
    }

    /// The entries of the real HOME that hold this CLI's own configuration and login.
    /// The files of the CLI's login and settings, copied from the real HOME into the task's
    /// (never its sessions or history: those are other tasks' and other projects').
    fn home_files(&self) -> &'static [&'static str] {
        match self.kind {
            CliKind::Claude => &[
                ".claude.json",
                ".claude/.credentials.json",
                ".claude/settings.json",
                ".claude/CLAUDE.md",
            ],
            CliKind::Codex => &[".codex/auth.json", ".codex/config.toml"],
            CliKind::Gemini => &[
                ".gemini/oauth_creds.json",
                ".gemini/google_accounts.json",
                ".gemini/settings.json",
            ],
            CliKind::Cursor => &[
                ".cursor/cli-config.json",
                ".config/cursor/auth.json",
                ".config/cursor/cli-config.json",
            ],
            CliKind::Generic => &[],
        }
    }

    /// The file a subscription login rewrites when it refreshes its token: copied back to the
    /// real HOME after a run, when it still parses.
    fn credential_file(&self) -> Option<&'static str> {
        match self.kind {
            CliKind::Claude => Some(".claude/.credentials.json"),
            CliKind::Codex => Some(".codex/auth.json"),
            CliKind::Gemini => Some(".gemini/oauth_creds.json"),
            CliKind::Cursor => Some(".config/cursor/auth.json"),
            CliKind::Generic => None,
        }
    }
}

/// What the configured providers hold that people must not see: the values of the variables
/// each may see by its `env` list, and every string of the CLIs' login files in the
/// operator's HOME (tokens a subscription login keeps there).
pub fn login_secrets(config: &ProvidersConfig, env: &Env) -> Vec<String> {
    let mut values = Vec::new();
    for provider in chain(config, None).unwrap_or_default() {
        values.extend(
            provider
                .entry
                .env
                .iter()
                .filter_map(|name| env.get(name))
                .map(str::to_owned),
        );
        let (Some(file), Some(home)) = (provider.credential_file(), env.get("HOME")) else {
            continue;
        };
        let login = std::fs::read_to_string(Path::new(home).join(file))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok());
        if let Some(login) = login {
            crate::core::blot::json_strings(&login, &mut values);
        }
    }
    values
}

/// The configured chain, in order; `only` narrows it to one provider (a spec's
/// `provider_override`).
pub fn chain(config: &ProvidersConfig, only: Option<&str>) -> Result<Vec<Provider>, String> {
    let names: Vec<String> = match only {
        Some(name) => vec![name.to_owned()],
        None => config.order.clone(),
    };
    names
        .into_iter()
        .map(|name| {
            let entry = config.entry(&name).ok_or_else(|| {
                format!(
                    "provider `{name}` is not configured; configured: {}",
                    config.order.join(", ")
                )
            })?;
            let kind = entry
                .kind
                .or_else(|| kind_from_name(&name))
                .unwrap_or(CliKind::Generic);
            Ok(Provider { name, entry, kind })
        })
        .collect()
}

/// What the agent is asked to do, and where.
pub struct AgentRequest<'a> {
    pub prompt: &'a str,
    pub cwd: &'a Path,
    pub model: Option<&'a str>,
    /// The time left in the task's budget.
    pub time_left: Duration,
    /// `NAME=value` placed in the agent's environment to recognise its processes later.
    pub marker: &'a str,
    /// Where provider HOMEs live (`$AUTODEV_DATA_DIR/homes`).
    pub homes_dir: &'a Path,
    pub git_name: &'a str,
    pub git_email: &'a str,
    /// Extra variable names every agent may see (`agent.env`).
    pub extra_env: &'a [String],
    pub output_limit: usize,
    /// The sandbox to run in, if any.
    pub jail: Option<crate::proc::sandbox::Jail<'a>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    pub provider: String,
    pub summary: String,
    pub cost_usd: Option<f64>,
    pub turns: Option<u64>,
    pub duration: Duration,
    /// Input and output tokens, where the provider reports them (the APIs).
    pub tokens: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    Success,
    Failure,
    Skipped,
    Timeout,
    Cancelled,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Success => "success",
            AttemptStatus::Failure => "failure",
            AttemptStatus::Skipped => "skipped",
            AttemptStatus::Timeout => "timeout",
            AttemptStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub provider: String,
    pub status: AttemptStatus,
    pub detail: String,
    /// What a failed attempt still cost, where known (the APIs, with prices).
    pub cost_usd: Option<f64>,
}

/// A provider run that did not succeed: why, and what it cost anyway.
#[derive(Debug, Clone)]
pub struct Failed {
    pub status: AttemptStatus,
    pub detail: String,
    pub cost_usd: Option<f64>,
}

impl From<(AttemptStatus, String)> for Failed {
    fn from((status, detail): (AttemptStatus, String)) -> Self {
        Self {
            status,
            detail,
            cost_usd: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChainOutcome {
    pub report: Option<AgentReport>,
    pub attempts: Vec<Attempt>,
}

impl ChainOutcome {
    pub fn stopped_by(&self, status: AttemptStatus) -> bool {
        self.attempts.last().is_some_and(|a| a.status == status)
    }

    /// Each provider's reason, for `last_error`.
    pub fn reasons(&self) -> String {
        self.attempts
            .iter()
            .map(|a| format!("{}: {}", a.provider, a.detail))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Records the process group of a started agent (for crash recovery); `None` when it ended.
pub type ProcessRecorder<'a> = &'a (dyn Fn(Option<i32>) -> BoxFuture<'static, ()> + Sync);

/// Tries each provider in turn until one succeeds, the task is cancelled, or time runs out.
pub async fn run_chain(
    providers: &[Provider],
    env: &Env,
    req: &AgentRequest<'_>,
    cancel: &CancellationToken,
    record: ProcessRecorder<'_>,
) -> ChainOutcome {
    let mut attempts = Vec::new();
    let deadline = tokio::time::Instant::now() + req.time_left;
    for provider in providers {
        let binary = match provider.locate(env) {
            Ok(b) => b,
            Err(why) => {
                attempts.push(Attempt {
                    provider: provider.name.clone(),
                    status: AttemptStatus::Skipped,
                    detail: why,
                    cost_usd: None,
                });
                continue;
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let timeout = provider.entry.timeout.map_or(left, |t| t.min(left));
        let span = tracing::info_span!("agent", provider = %provider.name);
        let result = match provider.entry.mode {
            ProviderMode::Cli => run_one(provider, &binary, env, req, timeout, cancel, record)
                .instrument(span)
                .await
                .map_err(Failed::from),
            ProviderMode::Api => {
                run_api(provider, env, req, timeout, cancel, record)
                    .instrument(span)
                    .await
            }
        };
        match result {
            Ok(report) => {
                attempts.push(Attempt {
                    provider: provider.name.clone(),
                    status: AttemptStatus::Success,
                    cost_usd: None,
                    detail: match report.tokens {
                        Some((i, o)) => format!(
                            "finished in {}s ({i} tokens in, {o} out)",
                            report.duration.as_secs()
                        ),
                        None => format!("finished in {}s", report.duration.as_secs()),
                    },
                });
                return ChainOutcome {
                    report: Some(report),
                    attempts,
                };
            }
            Err(Failed {
                status,
                detail,
                cost_usd,
            }) => {
                attempts.push(Attempt {
                    provider: provider.name.clone(),
                    status,
                    detail,
                    cost_usd,
                });
                let budget_gone = status == AttemptStatus::Timeout && timeout >= left;
                if status == AttemptStatus::Cancelled || budget_gone {
                    break;
                }
            }
        }
    }
    ChainOutcome {
        report: None,
        attempts,
    }
}

async fn run_one(
    provider: &Provider,
    binary: &Path,
    env: &Env,
    req: &AgentRequest<'_>,
    timeout: Duration,
    cancel: &CancellationToken,
    record: ProcessRecorder<'_>,
) -> Result<AgentReport, (AttemptStatus, String)> {
    let failure = |d: String| (AttemptStatus::Failure, d);
    let home = prepare_home(provider, env, req.homes_dir)
        .map_err(|e| failure(format!("preparing its HOME: {e}")))?;
    let model = req.model.or(provider.entry.model.as_deref());
    let template = provider
        .entry
        .args
        .clone()
        .unwrap_or_else(|| provider.default_args());
    let run = req.marker.split_once('=').map_or(req.marker, |(_, v)| v);
    let prompt_file = home.join(format!("prompt-{run}.md"));
    let (args, stdin) = build_args(&template, model, req.prompt, &prompt_file)
        .map_err(|e| failure(format!("writing the prompt file: {e}")))?;
    let job = exec::Job {
        program: binary.to_owned(),
        args,
        cwd: req.cwd.to_owned(),
        env: agent_env(provider, env, &home, req),
        stdin,
        timeout,
        output_limit: req.output_limit,
        fd3: None,
    };
    // Nothing of the real HOME is writable: the CLI works on its copies in the task's HOME.
    let job = crate::proc::sandbox::confine(req.jail, job, &[]);
    let tap = exec::current_tap();
    if let Some(tap) = &tap {
        tap.note(&format!("agent {}", provider.name));
    }
    let started = exec::start_tapped(job, tap)
        .map_err(|e| failure(format!("could not start {}: {e}", binary.display())))?;
    record(Some(started.pgid)).await;
    let out = started.wait(cancel).await;
    record(None).await;
    copy_back_login(provider, env, &home);
    match out.ending {
        Ending::TimedOut => {
            return Err((
                AttemptStatus::Timeout,
                format!("timed out after {}s and was stopped", timeout.as_secs()),
            ));
        }
        Ending::Cancelled => return Err((AttemptStatus::Cancelled, "cancelled".into())),
        _ => {}
    }
    let parsed = parse_output(provider.kind, &out);
    parsed
        .map(|(summary, cost_usd, turns)| AgentReport {
            provider: provider.name.clone(),
            summary,
            cost_usd,
            turns,
            duration: out.duration,
            tokens: None,
        })
        .map_err(failure)
}

/// An API provider: the tool loop, its commands in the gates' environment (no provider
/// credentials) plus a git identity and the run marker.
async fn run_api(
    provider: &Provider,
    env: &Env,
    req: &AgentRequest<'_>,
    timeout: Duration,
    cancel: &CancellationToken,
    record: ProcessRecorder<'_>,
) -> Result<AgentReport, Failed> {
    let failure = |d: String| Failed::from((AttemptStatus::Failure, d));
    let ep = crate::agent::tool_loop::endpoint(provider, env, req.model).map_err(failure)?;
    let home = req.homes_dir.join(&provider.name);
    std::fs::create_dir_all(&home).map_err(|e| failure(format!("preparing its HOME: {e}")))?;
    let mut tool_env = base_env(env, &home, req.extra_env);
    tool_env.extend(identity_and_marker(req));
    crate::agent::tool_loop::run(provider, &ep, tool_env, req, timeout, cancel, record).await
}

/// Fills the argument template. Without `{prompt}` the prompt goes to standard input.
fn build_args(
    template: &[String],
    model: Option<&str>,
    prompt: &str,
    prompt_file: &Path,
) -> std::io::Result<(Vec<String>, Option<Vec<u8>>)> {
    let mut args: Vec<String> = Vec::with_capacity(template.len());
    let mut prompt_in_args = false;
    for arg in template {
        if arg.contains("{model}") {
            match model {
                Some(m) => args.push(arg.replace("{model}", m)),
                None => {
                    if args.last().is_some_and(|a| a.starts_with('-')) {
                        args.pop();
                    }
                }
            }
        } else if arg.contains("{prompt}") {
            prompt_in_args = true;
            let text = if prompt.len() > MAX_PROMPT_ARG {
                // The agent can write in its HOME: a link planted where the file goes must
                // not make autodev write elsewhere.
                let _ = std::fs::remove_file(prompt_file);
                use std::io::Write as _;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(prompt_file)?
                    .write_all(prompt.as_bytes())?;
                format!(
                    "Your task is in the file {}. Read it and carry it out.",
                    prompt_file.display()
                )
            } else {
                prompt.to_owned()
            };
            args.push(arg.replace("{prompt}", &text));
        } else {
            args.push(arg.clone());
        }
    }
    let stdin = (!prompt_in_args).then(|| prompt.as_bytes().to_vec());
    Ok((args, stdin))
}

/// The agent's whole environment: the base allow-list, this provider's own settings, the
/// configured extras, its private HOME, a git identity, and the run marker.
fn agent_env(
    provider: &Provider,
    env: &Env,
    home: &Path,
    req: &AgentRequest<'_>,
) -> Vec<(String, String)> {
    let mut out = base_env(env, home, req.extra_env);
    out.extend(
        env.vars()
            .filter(|(k, _)| provider.allowed(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    out.extend(identity_and_marker(req));
    out
}

/// A git identity for commits the agent makes itself, and the run marker.
fn identity_and_marker(req: &AgentRequest<'_>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = [
        ("GIT_AUTHOR_NAME", req.git_name),
        ("GIT_AUTHOR_EMAIL", req.git_email),
        ("GIT_COMMITTER_NAME", req.git_name),
        ("GIT_COMMITTER_EMAIL", req.git_email),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect();
    if let Some((k, v)) = req.marker.split_once('=') {
        out.push((k.into(), v.into()));
    }
    out
}

/// The environment shared by agents and gates: allow-listed basics, `extra` names, and `home`
/// as HOME (with XDG directories inside it).
pub fn base_env(env: &Env, home: &Path, extra: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .vars()
        .filter(|(k, _)| BASE_ALLOW.contains(k) || extra.iter().any(|e| e == k))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    let home_s = home.display().to_string();
    out.push(("HOME".into(), home_s.clone()));
    out.push(("XDG_CONFIG_HOME".into(), format!("{home_s}/.config")));
    out.push(("XDG_CACHE_HOME".into(), format!("{home_s}/.cache")));
    out.push(("XDG_DATA_HOME".into(), format!("{home_s}/.local/share")));
    out
}

/// `<task homes>/<provider>/`, holding copies of the CLI's login and settings files from the
/// real HOME, file by file, and nothing else of it. The task's homes are the task's alone.
fn prepare_home(provider: &Provider, env: &Env, homes_dir: &Path) -> std::io::Result<PathBuf> {
    let home = homes_dir.join(&provider.name);
    std::fs::create_dir_all(home.join(".config"))?;
    let Some(real_home) = env.get("HOME").map(PathBuf::from) else {
        return Ok(home);
    };
    if real_home == home {
        return Ok(home);
    }
    for file in provider.home_files() {
        let source = real_home.join(file);
        // Regular files only: a link in the real HOME is not followed out of it.
        let regular = std::fs::symlink_metadata(&source).is_ok_and(|m| m.is_file());
        let copy = home.join(file);
        if regular && std::fs::symlink_metadata(&copy).is_err() {
            if let Some(parent) = copy.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(&source, &copy)?;
        }
    }
    Ok(home)
}

/// After a run: the CLI's credential file goes back to the real HOME when the CLI refreshed
/// it, and only then: the file is a plain file (no link anywhere under the task's HOME), at
/// most 1 MiB, parses as JSON of the same shape as the operator's (the same keys), and any
/// expiry in it moved forward. Anything else an agent left there stays there.
fn copy_back_login(provider: &Provider, env: &Env, home: &Path) {
    const MAX_LOGIN: u64 = 1024 * 1024;
    let (Some(file), Some(real_home)) = (provider.credential_file(), env.get("HOME")) else {
        return;
    };
    let real = Path::new(real_home).join(file);
    let copy = home.join(file);
    if real == copy {
        return;
    }
    // Every component under the task's HOME is what it says, not a link out of it.
    let mut at = home.to_owned();
    for part in Path::new(file).components() {
        at.push(part);
        if !std::fs::symlink_metadata(&at).is_ok_and(|m| !m.file_type().is_symlink()) {
            return;
        }
    }
    let Ok(meta) = std::fs::symlink_metadata(&copy) else {
        return;
    };
    if !meta.is_file() || meta.len() > MAX_LOGIN {
        return;
    }
    let (Ok(new), Ok(old)) = (std::fs::read(&copy), std::fs::read(&real)) else {
        return;
    };
    if new == old {
        return;
    }
    let refreshed = match (
        serde_json::from_slice::<Value>(&old),
        serde_json::from_slice::<Value>(&new),
    ) {
        (Ok(old), Ok(new)) => same_shape(&old, &new) && !expiry_went_back(&old, &new),
        _ => false,
    };
    if !refreshed {
        tracing::warn!(
            "{}: {file} changed during the run but does not look like a refreshed login; the login in {real_home} is left as it was",
            provider.name
        );
        return;
    }
    let written = (|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = real.with_extension("autodev-tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&new)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &real)
    })();
    if let Err(e) = written {
        tracing::warn!(
            "{}: copying the refreshed login back to {}: {e}",
            provider.name,
            real.display()
        );
    }
}

/// The same object keys at every level (values may differ).
fn same_shape(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|w| same_shape(v, w)))
        }
        (Value::Object(_), _) | (_, Value::Object(_)) => false,
        _ => true,
    }
}

/// Whether an expiry field (`expiresAt`, `expires_at`, `expiry_date`, `expiry`) is earlier
/// in `new` than in `old`.
fn expiry_went_back(old: &Value, new: &Value) -> bool {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => a.iter().any(|(k, v)| {
            let Some(w) = b.get(k) else { return false };
            let is_expiry = matches!(
                k.as_str(),
                "expiresAt" | "expires_at" | "expiry_date" | "expiry"
            );
            match (v.as_f64(), w.as_f64()) {
                (Some(before), Some(after)) if is_expiry => after < before,
                _ => expiry_went_back(v, w),
            }
        }),
        _ => false,
    }
}

/// Reads a CLI's output: `Ok((summary, cost, turns))` when it reports success.
fn parse_output(
    kind: CliKind,
    out: &exec::Output,
) -> Result<(String, Option<f64>, Option<u64>), String> {
    let stderr_tail = || exec::tail_chars(out.stderr.trim(), 2000);
    let exit = out.ending;
    match kind {
        CliKind::Generic | CliKind::Codex if !exit.success() => Err(format!(
            "{}: {}",
            exit.describe(Duration::ZERO),
            stderr_tail()
        )),
        CliKind::Generic => Ok((exec::tail_chars(out.stdout.trim(), 2000), None, None)),
        CliKind::Codex => {
            let mut summary = String::new();
            for line in out.stdout.lines() {
                let Ok(ev) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                match ev["type"].as_str() {
                    Some("turn.failed") | Some("error") => {
                        let msg = ev["error"]["message"]
                            .as_str()
                            .or(ev["message"].as_str())
                            .unwrap_or("turn failed");
                        return Err(format!("codex reported: {msg}"));
                    }
                    Some("item.completed") if ev["item"]["type"] == "agent_message" => {
                        summary = ev["item"]["text"].as_str().unwrap_or_default().to_owned();
                    }
                    _ => {}
                }
            }
            Ok((summary, None, None))
        }
        CliKind::Claude | CliKind::Cursor | CliKind::Gemini => {
            let Some(doc) = last_json_object(&out.stdout) else {
                return Err(if exit.success() {
                    format!(
                        "printed output that is not the expected JSON: {}",
                        exec::tail_chars(out.stdout.trim(), 500)
                    )
                } else {
                    format!("{}: {}", exit.describe(Duration::ZERO), stderr_tail())
                });
            };
            if kind == CliKind::Gemini {
                if let Some(err) = doc.get("error").filter(|e| !e.is_null()) {
                    let msg = err["message"]
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or(err.to_string());
                    return Err(format!("gemini reported: {msg}"));
                }
                if !exit.success() {
                    return Err(format!(
                        "{}: {}",
                        exit.describe(Duration::ZERO),
                        stderr_tail()
                    ));
                }
                let summary = doc["response"].as_str().unwrap_or_default().to_owned();
                return Ok((summary, None, None));
            }
            let result = doc["result"].as_str().unwrap_or_default().to_owned();
            if doc["is_error"].as_bool() == Some(true) {
                return Err(format!(
                    "reported an error: {}",
                    exec::tail_chars(&result, 1000)
                ));
            }
            if !exit.success() {
                return Err(format!(
                    "{}: {}",
                    exit.describe(Duration::ZERO),
                    stderr_tail()
                ));
            }
            Ok((
                result,
                doc["total_cost_usd"].as_f64(),
                doc["num_turns"].as_u64(),
            ))
        }
    }
}

/// The JSON object in `stdout`: the whole of it, or its last line that parses.
fn last_json_object(stdout: &str) -> Option<Value> {
    let trimmed = stdout.trim();
    if let Ok(v @ Value::Object(_)) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    trimmed
        .lines()
        .rev()
        .find_map(|l| match serde_json::from_str(l.trim()) {
            Ok(v @ Value::Object(_)) => Some(v),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_placeholder_and_prompt_routing() {
        let t: Vec<String> = ["-p", "--model", "{model}", "{prompt}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let file = std::env::temp_dir().join("autodev-prompt-test.md");
        let (args, stdin) = build_args(&t, None, "do $(rm -rf /) \"now\"", &file).unwrap();
        assert_eq!(args, ["-p", "do $(rm -rf /) \"now\""]);
        assert!(stdin.is_none());
        let (args, _) = build_args(&t, Some("opus"), "x", &file).unwrap();
        assert_eq!(args, ["-p", "--model", "opus", "x"]);
        let long = "y".repeat(MAX_PROMPT_ARG + 1);
        let (args, _) = build_args(&t, None, &long, &file).unwrap();
        assert!(args[1].contains("autodev-prompt-test.md"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), long);
        let (args, stdin) = build_args(&t[..1], None, "hello", &file).unwrap();
        assert_eq!(args, ["-p"]);
        assert_eq!(stdin.unwrap(), b"hello");
    }

    fn output(code: i32, stdout: &str) -> exec::Output {
        exec::Output {
            ending: Ending::Exited(code),
            stdout: stdout.into(),
            stderr: "boom".into(),
            truncated: 0,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn claude_output_is_read() {
        let ok = r#"{"type":"result","subtype":"success","is_error":false,"result":"done","num_turns":3,"total_cost_usd":0.12}"#;
        assert_eq!(
            parse_output(CliKind::Claude, &output(0, ok)).unwrap(),
            ("done".into(), Some(0.12), Some(3))
        );
        let err = r#"{"type":"result","is_error":true,"result":"quota"}"#;
        assert!(
            parse_output(CliKind::Claude, &output(0, err))
                .unwrap_err()
                .contains("quota")
        );
        assert!(
            parse_output(CliKind::Claude, &output(0, "garbage"))
                .unwrap_err()
                .contains("not the expected JSON")
        );
        assert!(
            parse_output(CliKind::Claude, &output(2, ""))
                .unwrap_err()
                .contains("boom")
        );
    }

    #[test]
    fn codex_and_gemini_output_is_read() {
        let ok = "{\"type\":\"thread.started\"}\n{\"type\":\"item.completed\",\"item\":{\"type\":\"agent_message\",\"text\":\"hi\"}}\n{\"type\":\"turn.completed\"}\n";
        assert_eq!(
            parse_output(CliKind::Codex, &output(0, ok)).unwrap().0,
            "hi"
        );
        let failed = "{\"type\":\"turn.failed\",\"error\":{\"message\":\"rate limited\"}}\n";
        assert!(
            parse_output(CliKind::Codex, &output(0, failed))
                .unwrap_err()
                .contains("rate limited")
        );
        let gem = r#"{"response":"ok","stats":{}}"#;
        assert_eq!(
            parse_output(CliKind::Gemini, &output(0, gem)).unwrap().0,
            "ok"
        );
        let gem_err = r#"{"response":null,"error":{"message":"bad key"}}"#;
        assert!(
            parse_output(CliKind::Gemini, &output(1, gem_err))
                .unwrap_err()
                .contains("bad key")
        );
    }
}
