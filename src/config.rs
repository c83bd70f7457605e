//! Layered configuration: built-in defaults < `config/config.yaml` < environment < flags.
//! This is the only module that reads environment variables; secrets stay `SecretString`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

use crate::core::spec::{Limits, parse_timeout};

/// A snapshot of the environment, so that tests can hand in their own.
/// How long reading a task's work may take by default (`agent.read_timeout`):
/// the agent chooses what is read, and a named pipe or a huge sparse file must not hold a
/// worker for ever.
pub const READ_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// A non-empty variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A secret: `NAME`, or the contents of the file named by `NAME_FILE` (trailing newline
    /// removed).
    pub fn secret(&self, name: &str) -> anyhow::Result<Option<SecretString>> {
        if let Some(v) = self.get(name) {
            return Ok(Some(SecretString::from(v.to_owned())));
        }
        let file_var = format!("{name}_FILE");
        let Some(path) = self.get(&file_var) else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {file_var}={path}"))?;
        let value = text.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            // An empty secret would be a secret everybody knows.
            bail!("{file_var}={path} is empty");
        }
        Ok(Some(SecretString::from(value.to_owned())))
    }

    pub fn vars(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The values of variables whose names say they hold a secret (`*KEY*`, `*TOKEN*`,
    /// `*SECRET*`, `*PASSWORD*`, `*CREDENTIAL*`), and of the files `*_FILE` variables of such
    /// names point to: what is blotted out of text shown to people (`core::blot`).
    pub fn secret_values(&self) -> Vec<String> {
        const MARKS: &[&str] = &["KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL"];
        let mut values: Vec<String> = Vec::new();
        for (name, value) in self.vars() {
            let upper = name.to_ascii_uppercase();
            if !MARKS.iter().any(|m| upper.contains(m)) {
                continue;
            }
            let value = match upper.strip_suffix("_FILE") {
                Some(_) => std::fs::read_to_string(value)
                    .map(|t| t.trim().to_owned())
                    .unwrap_or_default(),
                None => value.trim().to_owned(),
            };
            // A PEM key is blotted out line by line, as output would show it.
            values.extend(crate::core::blot::secret_lines(&value));
        }
        values
    }
}

/// The configuration file. Every key is documented in the shipped `config/config.yaml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub providers: ProvidersConfig,
    #[serde(default)]
    pub repo: RepoConfig,
    #[serde(default)]
    pub hygiene: HygieneConfig,
    #[serde(default)]
    pub worktrees: WorktreesConfig,
    #[serde(default)]
    pub workers: WorkersConfig,
    #[serde(default)]
    pub gates: GatesConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub github: GithubConfig,
    /// Directory of custom role files; a relative path is relative to the configuration file.
    #[serde(default)]
    pub roles_dir: Option<PathBuf>,
    /// The server's maxima for every task, whoever asks.
    #[serde(default)]
    pub limits: Limits,
    /// What a repository's `.github/autodev.yml` (and a writer's issue block) may set.
    #[serde(default)]
    pub allowed_overrides: AllowedOverrides,
}

/// Keys of `.github/autodev.yml` and of issue blocks that are used (see `trust`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct AllowedOverrides(pub Vec<String>);

impl Default for AllowedOverrides {
    fn default() -> Self {
        Self(
            crate::core::trust::DEFAULT_OVERRIDES
                .iter()
                .map(|k| (*k).to_owned())
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub path: Option<PathBuf>,
    pub dev_branch: Option<String>,
}

/// Scheduled git hygiene. Intervals are minutes, or a duration such as `"2s"` (handy in
/// tests).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HygieneConfig {
    #[serde(deserialize_with = "minutes", serialize_with = "human")]
    pub checkpoint_minutes: Duration,
    #[serde(deserialize_with = "minutes", serialize_with = "human")]
    pub pr_minutes: Duration,
    #[serde(deserialize_with = "minutes", serialize_with = "human")]
    pub rebase_minutes: Duration,
    #[serde(deserialize_with = "minutes", serialize_with = "human")]
    pub cleanup_minutes: Duration,
    /// How often the reconciler finishes half-done GitHub effects (also once at start).
    #[serde(deserialize_with = "minutes", serialize_with = "human")]
    pub reconcile_minutes: Duration,
    pub cleanup_after_hours: u64,
    /// How long webhook deliveries, the timelines and gate results of ended tasks and
    /// finished queue jobs are kept (0: for ever). Pruned by the clean-up.
    pub keep_history_days: u64,
    /// Open the pull request as soon as a task passes, not at the next `pr_minutes` tick.
    pub pr_on_pass: bool,
    pub draft: bool,
    /// How stale branches catch up with their base: `rebase` or `merge`.
    pub merge_strategy: MergeStrategy,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MergeStrategy {
    Rebase,
    Merge,
}

impl Default for HygieneConfig {
    fn default() -> Self {
        Self {
            checkpoint_minutes: Duration::from_secs(30 * 60),
            pr_minutes: Duration::from_secs(120 * 60),
            rebase_minutes: Duration::from_secs(60 * 60),
            cleanup_minutes: Duration::from_secs(60 * 60),
            reconcile_minutes: Duration::from_secs(10 * 60),
            cleanup_after_hours: 72,
            keep_history_days: 30,
            pr_on_pass: true,
            draft: false,
            merge_strategy: MergeStrategy::Rebase,
        }
    }
}

/// A whole number of minutes, or a duration string.
fn minutes<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let d = match &v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|m| m.checked_mul(60))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("expected whole minutes, found {n}"))
            })?,
        _ => parse_timeout(&v).map_err(serde::de::Error::custom)?,
    };
    if d.is_zero() {
        return Err(serde::de::Error::custom(
            "an interval must be longer than zero",
        ));
    }
    Ok(d)
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorktreesConfig {
    /// Default: `$AUTODEV_DATA_DIR/worktrees`.
    pub base_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Tasks one process runs at once.
    pub concurrency: usize,
    /// How often a worker proves it is alive; a job held by a worker silent for
    /// `heartbeat_seconds * missed_heartbeats` is handed to another.
    pub heartbeat_seconds: u64,
    pub missed_heartbeats: u32,
    /// On SIGTERM, how long running tasks may go on before they are interrupted: their work
    /// committed (and pushed in App mode), their agents stopped, and the task queued again at
    /// once. The process exits within this plus a few seconds; a deployment's stop timeout
    /// should be longer.
    pub drain_seconds: u64,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            concurrency: 2,
            heartbeat_seconds: 15,
            missed_heartbeats: 3,
            drain_seconds: 30,
        }
    }
}

impl WorkersConfig {
    /// How long running tasks may go on after SIGTERM (`drain_seconds`).
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }

    /// How long a silent worker keeps its jobs and task leases.
    pub fn orphan_after(&self) -> Duration {
        Duration::from_secs(self.heartbeat_seconds * u64::from(self.missed_heartbeats))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatesConfig {
    /// The lint command (run with `sh -c` in `<worktree>/<target_dir>`); detected from the
    /// repository when unset.
    pub lint: Option<String>,
    pub typecheck: Option<String>,
    #[serde(deserialize_with = "duration", serialize_with = "human")]
    pub timeout: Duration,
    /// Bytes of output kept per gate (the tail).
    pub max_output_bytes: usize,
    /// Hosts sandboxed gates may connect to (package registries, say); none by default.
    pub egress: Vec<String>,
}

impl Default for GatesConfig {
    fn default() -> Self {
        Self {
            lint: None,
            typecheck: None,
            timeout: Duration::from_secs(15 * 60),
            max_output_bytes: 64 * 1024,
            egress: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Extra environment variables passed to every agent (names only; values come from
    /// autodev's environment).
    pub env: Vec<String>,
    /// Default whole-task budget when a spec sets no `timeout`.
    #[serde(deserialize_with = "duration", serialize_with = "human")]
    pub task_timeout: Duration,
    /// Bytes of agent output kept (the tail).
    pub max_output_bytes: usize,
    pub git_user_name: String,
    pub git_user_email: String,
    /// `auto` (the default: bubblewrap where it works), `bwrap` (bubblewrap, or refuse to
    /// start), or `off` (agents run as autodev's own user, unconfined).
    pub sandbox: SandboxMode,
    /// More paths agents may write to inside the sandbox (caches, for example).
    pub sandbox_writable: Vec<PathBuf>,
    /// Hosts sandboxed agents may connect to (`host`, `host:port`, `*.domain`); default: the
    /// configured providers' API and login hosts.
    pub egress: Option<Vec<String>>,
    /// How long each step of reading an agent's work (its branch, its files) may take.
    #[serde(deserialize_with = "duration", serialize_with = "human")]
    pub read_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            task_timeout: Duration::from_secs(60 * 60),
            max_output_bytes: 1024 * 1024,
            git_user_name: "autodev".into(),
            git_user_email: "autodev@users.noreply.github.com".into(),
            sandbox: SandboxMode::Auto,
            sandbox_writable: Vec::new(),
            read_timeout: READ_TIMEOUT,
            egress: None,
        }
    }
}

/// How agents are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// Bubblewrap where it works; where it does not, App mode refuses to start and local mode
    /// goes on without, with a warning.
    Auto,
    /// As autodev's own OS user, with the allow-listed environment only.
    Off,
    /// Under bubblewrap (see `sandbox`).
    Bwrap,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// SQLite `synchronous` pragma: `off`, `normal`, `full` or `extra`.
    pub synchronous: String,
    pub busy_timeout_ms: u64,
    pub max_connections: u32,
    /// Megabytes kept free on the data directory's disk for recording what a full disk did
    /// (0: none).
    pub reserve_mb: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            synchronous: "normal".into(),
            busy_timeout_ms: 10_000,
            max_connections: 8,
            reserve_mb: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GithubConfig {
    /// Bot logins (e.g. `renovate[bot]`) whose labels and commands are honoured; other bots are
    /// ignored.
    pub allowed_bots: Vec<String>,
    /// Push changes under `.github/workflows/` (needs the App's `workflows` permission).
    pub allow_workflow_changes: WorkflowChanges,
    /// How long a collaborator's permission is trusted before asking GitHub again.
    pub permission_cache_seconds: u64,
    /// How long one GitHub API call may wait to connect, or for the next bytes of an answer,
    /// before it fails and is tried again (seconds, or a duration such as `"2s"`).
    #[serde(deserialize_with = "duration", serialize_with = "human")]
    pub timeout: Duration,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            allowed_bots: Vec::new(),
            allow_workflow_changes: WorkflowChanges::All(false),
            permission_cache_seconds: 60,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Which repositories may receive changes under `.github/workflows/`: `true`/`false` for all,
/// or a list of `owner/name`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum WorkflowChanges {
    All(bool),
    Repos(Vec<String>),
}

impl WorkflowChanges {
    pub fn allowed_for(&self, repo: &str) -> bool {
        match self {
            WorkflowChanges::All(b) => *b,
            WorkflowChanges::Repos(list) => list.iter().any(|r| r.eq_ignore_ascii_case(repo)),
        }
    }
}

/// GitHub App credentials; present only in App mode.
#[derive(Debug, Clone)]
pub struct GithubApp {
    pub app_id: u64,
    pub private_key: SecretString,
    pub webhook_secret: SecretString,
}

impl GithubApp {
    /// App mode needs all of GITHUB_APP_ID, a private key and GITHUB_WEBHOOK_SECRET; none of
    /// them means local mode, some of them is an error.
    fn from_env(env: &Env) -> anyhow::Result<Option<Self>> {
        let app_id = env.get("GITHUB_APP_ID");
        let key = match env.get("GITHUB_PRIVATE_KEY_PATH") {
            Some(path) => Some(SecretString::from(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading GITHUB_PRIVATE_KEY_PATH={path}"))?,
            )),
            None => env.secret("GITHUB_PRIVATE_KEY")?,
        };
        let secret = env.secret("GITHUB_WEBHOOK_SECRET")?;
        let (app_id, private_key, webhook_secret) = match (app_id, key, secret) {
            (None, None, None) => return Ok(None),
            (Some(a), Some(k), Some(s)) => (a, k, s),
            (a, k, s) => {
                let missing: Vec<&str> = [
                    (a.is_none(), "GITHUB_APP_ID"),
                    (
                        k.is_none(),
                        "GITHUB_PRIVATE_KEY_PATH (or GITHUB_PRIVATE_KEY)",
                    ),
                    (s.is_none(), "GITHUB_WEBHOOK_SECRET"),
                ]
                .into_iter()
                .filter_map(|(m, n)| m.then_some(n))
                .collect();
                bail!(
                    "GitHub App mode is half configured; missing {}",
                    missing.join(", ")
                );
            }
        };
        Ok(Some(Self {
            app_id: app_id
                .parse()
                .with_context(|| format!("GITHUB_APP_ID `{app_id}` is not a number"))?,
            private_key,
            webhook_secret,
        }))
    }
}

/// The App the setup page made, as stored in the data directory (`github-app.json`, mode 0600).
#[derive(Clone, Deserialize, Serialize)]
pub struct StoredApp {
    pub app_id: u64,
    pub slug: String,
    pub private_key: String,
    pub webhook_secret: String,
    /// The App's page on GitHub.
    pub html_url: String,
}

/// Never the key or the secret.
impl std::fmt::Debug for StoredApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredApp")
            .field("app_id", &self.app_id)
            .field("slug", &self.slug)
            .field("html_url", &self.html_url)
            .finish_non_exhaustive()
    }
}

impl StoredApp {
    pub const FILE: &'static str = "github-app.json";

    /// The stored App in `data_dir`, if the setup page made one.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = data_dir.join(Self::FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not autodev's stored App", path.display()))
    }

    pub fn credentials(&self) -> GithubApp {
        GithubApp {
            app_id: self.app_id,
            private_key: SecretString::from(self.private_key.clone()),
            webhook_secret: SecretString::from(self.webhook_secret.clone()),
        }
    }
}

/// How a provider runs: a local CLI, or an HTTP API through the built-in tool loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderMode {
    Cli,
    Api,
}

/// Which CLI a provider entry drives: decides default flags, output parsing and which
/// credentials and config directory it may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CliKind {
    /// The `claude` CLI; in API mode, the Anthropic Messages API (`kind: anthropic`).
    #[serde(alias = "anthropic")]
    Claude,
    /// The `codex` CLI; in API mode, an OpenAI-compatible Chat Completions API
    /// (`kind: openai`).
    #[serde(alias = "openai")]
    Codex,
    Gemini,
    Cursor,
    /// Any other program: success is exit status 0.
    Generic,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    pub mode: ProviderMode,
    /// Default: from the entry name (`claude_cli` → `claude`), else `generic`.
    #[serde(default)]
    pub kind: Option<CliKind>,
    #[serde(default)]
    pub binary: Option<String>,
    /// Replaces the default flags. `{prompt}` is replaced by the prompt (one argument, no
    /// shell); without it the prompt goes to standard input. An argument holding `{model}` is
    /// dropped, with the flag before it, when no model is set.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_duration",
        serialize_with = "human_opt"
    )]
    pub timeout: Option<Duration>,
    /// Extra environment variables this provider may see.
    #[serde(default)]
    pub env: Vec<String>,
    /// API mode: the API's base URL (default: `ANTHROPIC_BASE_URL` / `OPENAI_BASE_URL`, else
    /// the vendor's).
    #[serde(default)]
    pub base_url: Option<String>,
    /// API mode: model calls one invocation may take.
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// API mode: tokens one answer may use (sent to the Anthropic API, which requires it).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// API mode: USD per million input tokens, to report what a task cost.
    #[serde(default)]
    pub input_price: Option<f64>,
    /// API mode: USD per million output tokens.
    #[serde(default)]
    pub output_price: Option<f64>,
}

/// `providers:` — `order` plus one entry per provider.
#[derive(Debug, Clone)]
pub struct ProvidersConfig {
    pub order: Vec<String>,
    pub entries: BTreeMap<String, ProviderEntry>,
}

pub const DEFAULT_PROVIDER_ORDER: &[&str] =
    &["claude_cli", "codex_cli", "gemini_cli", "cursor_cli"];

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            order: DEFAULT_PROVIDER_ORDER
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            entries: BTreeMap::new(),
        }
    }
}

impl ProvidersConfig {
    /// The entry for `name`, falling back to the built-in default for the well-known names.
    pub fn entry(&self, name: &str) -> Option<ProviderEntry> {
        self.entries.get(name).cloned().or_else(|| {
            kind_from_name(name).map(|_| ProviderEntry {
                mode: if name.ends_with("_api") {
                    ProviderMode::Api
                } else {
                    ProviderMode::Cli
                },
                kind: None,
                binary: None,
                args: None,
                model: None,
                timeout: None,
                env: Vec::new(),
                base_url: None,
                max_turns: None,
                max_tokens: None,
                input_price: None,
                output_price: None,
            })
        })
    }
}

/// The CLI kind a well-known provider name implies.
pub fn kind_from_name(name: &str) -> Option<CliKind> {
    match name {
        "claude_cli" | "anthropic_api" => Some(CliKind::Claude),
        "codex_cli" | "openai_api" => Some(CliKind::Codex),
        "gemini_cli" => Some(CliKind::Gemini),
        "cursor_cli" => Some(CliKind::Cursor),
        _ => None,
    }
}

impl Serialize for ProvidersConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.entries.len() + 1))?;
        map.serialize_entry("order", &self.order)?;
        // Every provider the order names, as it stands with its defaults, then the rest.
        let mut named: Vec<&str> = self.order.iter().map(String::as_str).collect();
        for name in self.entries.keys() {
            if !named.contains(&name.as_str()) {
                named.push(name);
            }
        }
        for name in named {
            if let Some(entry) = self.entry(name) {
                map.serialize_entry(name, &entry)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ProvidersConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = BTreeMap::<String, serde_yaml::Value>::deserialize(d)?;
        let order: Vec<String> = match map.remove("order") {
            Some(v) => serde_yaml::from_value(v)
                .map_err(|e| D::Error::custom(format!("providers.order: {e}")))?,
            None => DEFAULT_PROVIDER_ORDER
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        };
        let mut entries = BTreeMap::new();
        for (name, mut v) in map {
            // A well-known name says what it is; a name of your own says it with `mode` (or
            // `kind`, which makes it a CLI), else it is taken for a misspelling.
            if let serde_yaml::Value::Mapping(m) = &mut v
                && !m.contains_key("mode")
            {
                let mode = if m.contains_key("kind") {
                    "cli"
                } else if kind_from_name(&name).is_some() {
                    if name.ends_with("_api") { "api" } else { "cli" }
                } else {
                    let known = [
                        "claude_cli",
                        "codex_cli",
                        "gemini_cli",
                        "cursor_cli",
                        "anthropic_api",
                        "openai_api",
                    ];
                    let hint = match crate::core::spec::near_miss(&name, &known) {
                        Some(k) => format!("did you mean `{k}`? "),
                        None => String::new(),
                    };
                    return Err(D::Error::custom(format!(
                        "providers.{name} is not a provider autodev knows: {hint}A provider of your own needs `mode: cli` (with `kind` or `binary`) or `mode: api` (well-known names: {})",
                        known.join(", ")
                    )));
                };
                m.insert("mode".into(), mode.into());
            }
            let entry: ProviderEntry = serde_yaml::from_value(v)
                .map_err(|e| D::Error::custom(format!("providers.{name}: {e}")))?;
            entries.insert(name, entry);
        }
        let config = ProvidersConfig { order, entries };
        for name in &config.order {
            if config.entry(name).is_none() {
                return Err(D::Error::custom(format!(
                    "providers.order names `{name}`, but there is no `providers.{name}` entry \
                     (well-known names: claude_cli, codex_cli, gemini_cli, cursor_cli, anthropic_api, openai_api)"
                )));
            }
        }
        Ok(config)
    }
}

/// A duration as configuration files write it (`"30m"`, `"1h30m"`).
fn human<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::core::spec::human_duration(*d))
}

fn human_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => human(d, s),
        None => s.serialize_none(),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    parse_timeout(&v).map_err(serde::de::Error::custom)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    parse_timeout(&v)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl FileConfig {
    pub fn from_yaml(text: &str, origin: &Path) -> anyhow::Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let config: FileConfig = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            anyhow::anyhow!("config file {}{at}: {e}", origin.display())
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        self.limits.check().map_err(anyhow::Error::msg)?;
        if let Some(key) = self
            .allowed_overrides
            .0
            .iter()
            .find(|k| !crate::core::trust::OVERRIDE_KEYS.contains(&k.as_str()))
        {
            bail!(
                "allowed_overrides names `{key}`; the keys a repository may set are {}",
                crate::core::trust::OVERRIDE_KEYS.join(", ")
            );
        }
        if self.agent.task_timeout > self.limits.max_timeout {
            bail!(
                "agent.task_timeout ({}) is longer than limits.max_timeout ({})",
                crate::core::spec::human_duration(self.agent.task_timeout),
                crate::core::spec::human_duration(self.limits.max_timeout)
            );
        }
        if self.workers.concurrency == 0 {
            bail!("workers.concurrency must be at least 1");
        }
        if self.workers.heartbeat_seconds == 0 || self.workers.missed_heartbeats == 0 {
            bail!("workers.heartbeat_seconds and workers.missed_heartbeats must be at least 1");
        }
        if !matches!(
            self.database.synchronous.as_str(),
            "off" | "normal" | "full" | "extra"
        ) {
            bail!(
                "database.synchronous must be off, normal, full or extra; found `{}`",
                self.database.synchronous
            );
        }
        let lists = std::iter::once(("agent.env".to_owned(), &self.agent.env)).chain(
            self.providers
                .entries
                .iter()
                .map(|(name, e)| (format!("providers.{name}.env"), &e.env)),
        );
        for (name, e) in &self.providers.entries {
            if e.input_price.is_some() != e.output_price.is_some() {
                bail!(
                    "providers.{name}: set both input_price and output_price (USD per million tokens), or neither"
                );
            }
        }
        for (key, names) in lists {
            if let Some(name) = names.iter().find(|n| OWN_CREDENTIALS.contains(&n.as_str())) {
                bail!(
                    "{key} lists {name}, one of autodev's own credentials, which agents never see; give the agent a credential of its own under another name"
                );
            }
        }
        Ok(())
    }
}

/// What autodev itself holds: never passed to an agent or a gate, even when asked.
const OWN_CREDENTIALS: &[&str] = &[
    "AUTODEV_API_TOKEN",
    "AUTODEV_API_TOKEN_FILE",
    "GITHUB_TOKEN",
    "GITHUB_TOKEN_FILE",
    "GITHUB_PRIVATE_KEY",
    "GITHUB_PRIVATE_KEY_FILE",
    "GITHUB_PRIVATE_KEY_PATH",
    "GITHUB_WEBHOOK_SECRET",
    "GITHUB_WEBHOOK_SECRET_FILE",
];

/// Command-line flags that override the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub bind: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub repo: Option<PathBuf>,
}

/// Everything resolved: what the rest of the program reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: Option<PathBuf>,
    pub file: FileConfig,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub bind: String,
    pub api_token: Option<SecretString>,
    pub server_url: String,
    pub public_url: Option<String>,
    /// More `Host` names the HTTP server answers (`AUTODEV_ALLOWED_HOSTS`, comma-separated):
    /// reverse proxies, orchestrators.
    pub allowed_hosts: Vec<String>,
    pub log_filter: String,
    pub repo_path: PathBuf,
    pub dev_branch: Option<String>,
    pub worktrees_dir: PathBuf,
    pub roles_dir: Option<PathBuf>,
    /// GitHub App mode, when configured.
    pub github: Option<GithubApp>,
    /// GitHub's REST API (`GITHUB_API_URL`; GitHub Enterprise Server: `https://HOST/api/v3`).
    pub github_api_url: String,
    /// Local mode: the token that pushes task branches to a GitHub `origin` and opens their
    /// pull requests (`GITHUB_TOKEN` or `GITHUB_TOKEN_FILE`).
    pub github_token: Option<SecretString>,
    /// autodev's own environment, from which agents get their allow-listed variables.
    pub env: Env,
}

impl Settings {
    pub fn load(env: Env, flags: Overrides) -> anyhow::Result<Self> {
        let cwd = std::env::current_dir().context("reading the working directory")?;
        // autodev's own configuration: never a file of the repository it works in.
        let config_path = flags
            .config
            .or_else(|| env.get("AUTODEV_CONFIG").map(PathBuf::from))
            .map(|p| absolute(&cwd, &p))
            .or_else(|| {
                let default = default_config_path(&env)?;
                default.is_file().then_some(default)
            });
        let file = match &config_path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                FileConfig::from_yaml(&text, path)?
            }
            None => FileConfig::default(),
        };
        let data_dir = flags
            .data_dir
            .or_else(|| env.get("AUTODEV_DATA_DIR").map(PathBuf::from))
            .map(Ok)
            .unwrap_or_else(|| default_data_dir(&env))?;
        let data_dir = absolute(&cwd, &data_dir);
        let database_url = env
            .get("AUTODEV_DATABASE_URL")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("autodev.db").display()));
        if !database_url.starts_with("sqlite:") {
            let scheme = database_url.split(':').next().unwrap_or_default();
            bail!(
                "AUTODEV_DATABASE_URL: autodev keeps its data in SQLite (sqlite:///path/to/autodev.db); `{scheme}:` URLs are not served. Unset it to use $AUTODEV_DATA_DIR/autodev.db"
            );
        }
        // Paths in the configuration file are relative to the file; others to the working
        // directory.
        let config_dir = config_path
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(&cwd)
            .to_owned();
        let repo_path = flags
            .repo
            .or_else(|| env.get("REPO_PATH").map(PathBuf::from))
            .or_else(|| file.repo.path.as_ref().map(|p| absolute(&config_dir, p)))
            .unwrap_or_else(|| cwd.clone());
        let worktrees_dir = file
            .worktrees
            .base_dir
            .clone()
            .map(|p| absolute(&config_dir, &p))
            .unwrap_or_else(|| data_dir.join("worktrees"));
        let roles_dir = file.roles_dir.clone().map(|p| absolute(&config_dir, &p));
        if let Some(dir) = &roles_dir
            && !dir.is_dir()
        {
            bail!(
                "roles_dir {} (from {}) is not a directory",
                dir.display(),
                config_path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
        // The GITHUB_* variables win over an App the setup page stored.
        let github = match GithubApp::from_env(&env)? {
            Some(app) => Some(app),
            None => StoredApp::load(&data_dir)?.map(|s| s.credentials()),
        };
        Ok(Self {
            config_path,
            bind: flags
                .bind
                .or_else(|| env.get("AUTODEV_BIND").map(str::to_owned))
                .unwrap_or_else(|| "127.0.0.1:8000".into()),
            api_token: env.secret("AUTODEV_API_TOKEN")?,
            server_url: env
                .get("AUTODEV_URL")
                .unwrap_or("http://127.0.0.1:8000")
                .trim_end_matches('/')
                .to_owned(),
            public_url: env
                .get("AUTODEV_PUBLIC_URL")
                .map(|s| s.trim_end_matches('/').to_owned()),
            allowed_hosts: env
                .get("AUTODEV_ALLOWED_HOSTS")
                .unwrap_or("")
                .split(',')
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            log_filter: env.get("AUTODEV_LOG").unwrap_or("info").to_owned(),
            repo_path: absolute(&cwd, &repo_path),
            dev_branch: env
                .get("DEV_BRANCH")
                .map(str::to_owned)
                .or_else(|| file.repo.dev_branch.clone()),
            data_dir,
            database_url,
            worktrees_dir,
            roles_dir,
            github,
            github_api_url: env
                .get("GITHUB_API_URL")
                .unwrap_or("https://api.github.com")
                .trim_end_matches('/')
                .to_owned(),
            github_token: env.secret("GITHUB_TOKEN")?,
            file,
            env,
        })
    }
}

/// `$XDG_CONFIG_HOME/autodev/config.yaml`, else `~/.config/autodev/config.yaml`.
pub fn default_config_path(env: &Env) -> Option<PathBuf> {
    let base = match env.get("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        Some(xdg) => PathBuf::from(xdg),
        None => PathBuf::from(env.get("HOME")?).join(".config"),
    };
    Some(base.join("autodev").join("config.yaml"))
}

fn default_data_dir(env: &Env) -> anyhow::Result<PathBuf> {
    if let Some(xdg) = env.get("XDG_DATA_HOME") {
        return Ok(PathBuf::from(xdg).join("autodev"));
    }
    let home = env
        .get("HOME")
        .context("neither AUTODEV_DATA_DIR, XDG_DATA_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/share/autodev"))
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        cwd.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors() {
        let err = FileConfig::from_yaml("repo:\n  pth: x\n", Path::new("c.yaml")).unwrap_err();
        assert!(err.to_string().contains("unknown field `pth`"), "{err}");
        let err = FileConfig::from_yaml(
            "providers:\n  claude_cli: {mode: cli, binnary: x}\n",
            Path::new("c.yaml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("binnary"), "{err}");
    }

    #[test]
    fn a_misspelt_provider_is_an_error_that_names_the_right_one() {
        let e = FileConfig::from_yaml(
            "providers:\n  cluade_cli: {model: x}\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("did you mean `claude_cli`"), "{e}");
        // Well-known names need no `mode`; names of your own say what they are.
        let ok = FileConfig::from_yaml(
            "providers:\n  claude_cli: {model: opus}\n  openai_api: {model: gpt}\n  mine: {kind: claude, binary: /bin/true}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(
            ok.providers.entry("claude_cli").unwrap().mode,
            ProviderMode::Cli
        );
        assert_eq!(
            ok.providers.entry("openai_api").unwrap().mode,
            ProviderMode::Api
        );
        assert_eq!(ok.providers.entry("mine").unwrap().mode, ProviderMode::Cli);
    }

    #[test]
    fn minute_keys_never_read_a_bare_string_as_seconds() {
        let e = FileConfig::from_yaml(
            "hygiene: {checkpoint_minutes: \"30\"}\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("has no unit"), "{e}");
        let ok = FileConfig::from_yaml(
            "hygiene: {checkpoint_minutes: 30, pr_minutes: \"2h\"}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(ok.hygiene.checkpoint_minutes, Duration::from_secs(1800));
        assert_eq!(ok.hygiene.pr_minutes, Duration::from_secs(7200));
    }

    #[test]
    fn order_must_name_entries() {
        let err = FileConfig::from_yaml("providers:\n  order: [mine]\n", Path::new("c.yaml"))
            .unwrap_err();
        assert!(
            err.to_string().contains("no `providers.mine` entry"),
            "{err}"
        );
        let ok = FileConfig::from_yaml(
            "providers:\n  order: [mine, claude_cli]\n  mine: {mode: cli, binary: /bin/true, timeout: 5m}\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(
            ok.providers.entry("mine").unwrap().timeout,
            Some(Duration::from_secs(300))
        );
        assert!(ok.providers.entry("claude_cli").is_some());
    }

    #[test]
    fn agent_env_may_not_hand_over_autodevs_own_credentials() {
        let e = FileConfig::from_yaml(
            "agent: {env: [FAKE_AGENT_DIR, GITHUB_TOKEN]}\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("agent.env lists GITHUB_TOKEN"), "{e}");
        FileConfig::from_yaml("agent: {env: [GH_TOKEN_FOR_AGENT]}\n", Path::new("c.yaml"))
            .expect("a credential of the agent's own is fine");
        let e = FileConfig::from_yaml(
            "providers:\n  claude_cli: {mode: cli, env: [AUTODEV_API_TOKEN]}\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("providers.claude_cli.env lists AUTODEV_API_TOKEN"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_secret_file_is_an_error_not_an_empty_secret() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let env = Env::from_pairs([("AUTODEV_API_TOKEN_FILE", empty.to_str().unwrap())]);
        let err = env.secret("AUTODEV_API_TOKEN").unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn a_database_url_autodev_cannot_serve_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::from_pairs([
            ("AUTODEV_DATA_DIR", dir.path().to_str().unwrap()),
            ("AUTODEV_DATABASE_URL", "postgres://autodev@db/autodev"),
            ("HOME", "/nonexistent"),
        ]);
        let err = format!(
            "{:#}",
            Settings::load(env, Overrides::default()).unwrap_err()
        );
        assert!(err.contains("`postgres:` URLs are not served"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_secret_files_work() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let data = dir.path().join("data");
        let env = Env::from_pairs([
            ("AUTODEV_DATA_DIR", data.to_str().unwrap()),
            ("AUTODEV_API_TOKEN_FILE", token.to_str().unwrap()),
            ("DEV_BRANCH", "develop"),
            ("AUTODEV_CONFIG", "/nonexistent/config.yaml"),
        ]);
        let err = Settings::load(env.clone(), Overrides::default()).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/config.yaml"));
        let cfg = dir.path().join("c.yaml");
        std::fs::write(&cfg, "repo: {dev_branch: main}\n").unwrap();
        let s = Settings::load(
            env,
            Overrides {
                config: Some(cfg),
                ..Default::default()
            },
        )
        .unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(s.api_token.unwrap().expose_secret(), "s3cret");
        assert_eq!(s.dev_branch.as_deref(), Some("develop"));
        assert_eq!(s.worktrees_dir, data.join("worktrees"));
        assert!(s.database_url.ends_with("data/autodev.db"));
    }
}
