//! API providers: a model behind the Anthropic Messages API or an OpenAI-compatible Chat
//! Completions API, driven by autodev's own tool loop. The model asks for tools (list, read,
//! write and edit files, run a command); autodev carries them out inside the task's working
//! directory and sends the results back, until the model answers without asking for one.
//!
//! The API key stays in autodev: commands the model runs get the same allow-listed
//! environment as the gates, without any provider credential. Paths may not leave the working
//! directory or touch `.git`.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::providers::{
    AgentReport, AgentRequest, AttemptStatus, ProcessRecorder, Provider,
};
use crate::config::{CliKind, Env};
use crate::proc::exec;

/// Turns (model calls) one invocation may take, unless the entry sets `max_turns`.
const DEFAULT_MAX_TURNS: u32 = 60;
/// Tokens one answer may use (Anthropic requires a bound), unless the entry sets `max_tokens`.
const DEFAULT_MAX_TOKENS: u32 = 8192;
/// The longest one command the model runs may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
/// The most of a file, listing or command output one tool result carries.
const RESULT_LIMIT: usize = 100 * 1024;
/// Attempts at one model call that fails in a way that passes (429, 5xx, overloaded).
const CALL_ATTEMPTS: u32 = 5;

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Anthropic,
    OpenAi,
}

/// Where and how to reach the model.
pub struct Endpoint {
    pub dialect: Dialect,
    /// The full URL of the call (`.../v1/messages` or `.../chat/completions`).
    pub url: String,
    key: SecretString,
    pub model: String,
    max_turns: u32,
    max_tokens: u32,
    /// USD per million input and output tokens, when configured.
    prices: Option<(f64, f64)>,
}

impl Endpoint {
    /// What `tokens_in` and `tokens_out` cost, when prices are configured.
    fn cost(&self, tokens_in: u64, tokens_out: u64) -> Option<f64> {
        self.prices
            .map(|(pi, po)| (tokens_in as f64 * pi + tokens_out as f64 * po) / 1_000_000.0)
    }
}

/// The endpoint of an API provider, or why it cannot run here.
pub fn endpoint(provider: &Provider, env: &Env, model: Option<&str>) -> Result<Endpoint, String> {
    let (dialect, key_var, base_var, default_base, default_model) = match provider.kind {
        CliKind::Claude => (
            Dialect::Anthropic,
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_BASE_URL",
            "https://api.anthropic.com",
            "claude-sonnet-4-5",
        ),
        CliKind::Codex => (
            Dialect::OpenAi,
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "https://api.openai.com/v1",
            "gpt-5",
        ),
        other => {
            return Err(format!(
                "API mode speaks the Anthropic or the OpenAI API: set `kind: anthropic` or `kind: openai` (not {other:?})"
            ));
        }
    };
    let key = env
        .secret(key_var)
        .map_err(|e| format!("{e:#}"))?
        .ok_or_else(|| format!("{key_var} is not set"))?;
    let base = provider
        .entry
        .base_url
        .clone()
        .or_else(|| env.get(base_var).map(str::to_owned))
        .unwrap_or_else(|| default_base.to_owned());
    let base = base.trim_end_matches('/');
    let url = match dialect {
        Dialect::Anthropic => format!("{base}/v1/messages"),
        Dialect::OpenAi => format!("{base}/chat/completions"),
    };
    Ok(Endpoint {
        dialect,
        url,
        key,
        model: model
            .or(provider.entry.model.as_deref())
            .unwrap_or(default_model)
            .to_owned(),
        max_turns: provider.entry.max_turns.unwrap_or(DEFAULT_MAX_TURNS),
        max_tokens: provider.entry.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        prices: provider.entry.input_price.zip(provider.entry.output_price),
    })
}

const SYSTEM: &str = "You are an autonomous software engineer working in a checkout of a git repository. \
Use the tools to look at the code, change it, and run commands (tests, linters, builds) to check your work. \
Paths are relative to the working directory. Nobody will answer questions: decide for yourself. \
Do not commit; autodev commits your changes. When the task is done, answer with a short summary of what \
you changed and call no more tools.";

/// The tools offered, as (name, description, JSON schema of the input).
fn tools() -> Vec<(&'static str, &'static str, Value)> {
    let path = json!({"type": "string", "description": "a path relative to the working directory"});
    vec![
        (
            "list_files",
            "List a directory: names, with a trailing / on directories.",
            json!({"type": "object", "properties": {"path": {"type": "string", "description": "a directory relative to the working directory; default: the working directory"}}}),
        ),
        (
            "read_file",
            "Read a text file.",
            json!({"type": "object", "properties": {"path": path}, "required": ["path"]}),
        ),
        (
            "write_file",
            "Create or replace a file with the given content (parent directories are made).",
            json!({"type": "object", "properties": {"path": path, "content": {"type": "string"}}, "required": ["path", "content"]}),
        ),
        (
            "edit_file",
            "Replace old_text, which must occur exactly once in the file, with new_text.",
            json!({"type": "object", "properties": {"path": path, "old_text": {"type": "string"}, "new_text": {"type": "string"}}, "required": ["path", "old_text", "new_text"]}),
        ),
        (
            "run_command",
            "Run a shell command (sh -c) in the working directory; returns its exit status and output.",
            json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}),
        ),
    ]
}

/// One tool call the model asked for.
#[derive(Debug, Clone)]
struct Call {
    id: String,
    name: String,
    /// The input, or why it could not be read.
    input: Result<Value, String>,
}

/// One answer of the model: its text and the tools it asks for.
struct Answer {
    text: String,
    calls: Vec<Call>,
    /// Cut off at the token limit: its tool calls may be incomplete.
    truncated: bool,
}

/// The conversation in the provider's own format.
struct Conversation {
    dialect: Dialect,
    messages: Vec<Value>,
}

impl Conversation {
    fn new(dialect: Dialect, prompt: &str) -> Self {
        let mut messages = Vec::new();
        if dialect == Dialect::OpenAi {
            messages.push(json!({"role": "system", "content": SYSTEM}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        Self { dialect, messages }
    }

    fn request(&self, ep: &Endpoint) -> Value {
        let tools = tools();
        match self.dialect {
            Dialect::Anthropic => json!({
                "model": ep.model,
                "max_tokens": ep.max_tokens,
                "system": SYSTEM,
                "messages": self.messages,
                "tools": tools.iter().map(|(n, d, s)| json!({"name": n, "description": d, "input_schema": s})).collect::<Vec<_>>(),
            }),
            Dialect::OpenAi => json!({
                "model": ep.model,
                "messages": self.messages,
                "tools": tools.iter().map(|(n, d, s)| json!({"type": "function", "function": {"name": n, "description": d, "parameters": s}})).collect::<Vec<_>>(),
            }),
        }
    }

    /// Reads an answer and keeps it in the conversation.
    fn take_answer(&mut self, body: &Value) -> Result<Answer, String> {
        match self.dialect {
            Dialect::Anthropic => {
                let content = body["content"]
                    .as_array()
                    .ok_or_else(|| format!("an answer without content: {}", short(body)))?;
                let mut answer = Answer {
                    text: String::new(),
                    calls: Vec::new(),
                    truncated: body["stop_reason"] == "max_tokens",
                };
                for block in content {
                    match block["type"].as_str() {
                        Some("text") => answer.text.push_str(block["text"].as_str().unwrap_or("")),
                        Some("tool_use") => answer.calls.push(Call {
                            id: block["id"].as_str().unwrap_or_default().to_owned(),
                            name: block["name"].as_str().unwrap_or_default().to_owned(),
                            input: Ok(block["input"].clone()),
                        }),
                        _ => {}
                    }
                }
                self.messages
                    .push(json!({"role": "assistant", "content": content}));
                Ok(answer)
            }
            Dialect::OpenAi => {
                let message = &body["choices"][0]["message"];
                if !message.is_object() {
                    return Err(format!("an answer without a message: {}", short(body)));
                }
                let calls = message["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let args = &c["function"]["arguments"];
                        // A JSON string, as OpenAI sends it; some compatible servers send the
                        // object itself.
                        let input = match args.as_str() {
                            Some(text) => serde_json::from_str(text)
                                .map_err(|e| format!("the arguments are not JSON: {e}")),
                            None if args.is_object() => Ok(args.clone()),
                            None => Ok(json!({})),
                        };
                        Call {
                            id: c["id"].as_str().unwrap_or_default().to_owned(),
                            name: c["function"]["name"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            input,
                        }
                    })
                    .collect();
                let mut kept = json!({"role": "assistant", "content": message["content"]});
                if message["tool_calls"].is_array() {
                    kept["tool_calls"] = message["tool_calls"].clone();
                }
                self.messages.push(kept);
                Ok(Answer {
                    text: message["content"].as_str().unwrap_or_default().to_owned(),
                    calls,
                    truncated: body["choices"][0]["finish_reason"] == "length",
                })
            }
        }
    }

    fn add_results(&mut self, results: Vec<(String, String, bool)>) {
        match self.dialect {
            Dialect::Anthropic => {
                let blocks: Vec<Value> = results
                    .into_iter()
                    .map(|(id, text, is_error)| {
                        json!({"type": "tool_result", "tool_use_id": id, "content": text, "is_error": is_error})
                    })
                    .collect();
                self.messages
                    .push(json!({"role": "user", "content": blocks}));
            }
            Dialect::OpenAi => {
                for (id, text, is_error) in results {
                    let content = if is_error {
                        format!("error: {text}")
                    } else {
                        text
                    };
                    self.messages
                        .push(json!({"role": "tool", "tool_call_id": id, "content": content}));
                }
            }
        }
    }
}

fn short(v: &Value) -> String {
    exec::tail_chars(&v.to_string(), 300)
}

/// Carries out the model's tool calls inside `root`.
struct Tools<'a> {
    root: PathBuf,
    env: Vec<(String, String)>,
    output_limit: usize,
    deadline: Instant,
    cancel: &'a CancellationToken,
    record: ProcessRecorder<'a>,
    jail: Option<crate::proc::sandbox::Jail<'a>>,
}

impl Tools<'_> {
    /// `rel` inside the working directory, or why not.
    fn resolve(&self, rel: &str) -> Result<PathBuf, String> {
        let rel = Path::new(rel);
        let mut out = self.root.clone();
        for c in rel.components() {
            match c {
                Component::Normal(part) if part == ".git" => {
                    return Err("`.git` is autodev's to manage".into());
                }
                Component::Normal(part) => out.push(part),
                Component::CurDir => {}
                Component::ParentDir if out != self.root => {
                    out.pop();
                }
                _ => {
                    return Err(format!(
                        "`{}` is outside the working directory",
                        rel.display()
                    ));
                }
            }
        }
        // A symbolic link on the way may not lead out, nor nowhere (writing through a
        // dangling link would create its target, wherever that is).
        let root = self.root.canonicalize().map_err(|e| e.to_string())?;
        let mut at = self.root.clone();
        for part in out.strip_prefix(&self.root).unwrap_or(Path::new("")) {
            at.push(part);
            let Ok(meta) = std::fs::symlink_metadata(&at) else {
                break;
            };
            if meta.file_type().is_symlink() {
                let inside = at.canonicalize().is_ok_and(|real| real.starts_with(&root));
                if !inside {
                    return Err(format!(
                        "`{}` goes through a symbolic link that leads outside the working directory or nowhere",
                        rel.display()
                    ));
                }
            }
        }
        Ok(out)
    }

    async fn run(&self, call: &Call) -> Result<String, String> {
        let input = call.input.clone()?;
        let text = |k: &str| -> Result<String, String> {
            input[k]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("`{k}` is missing"))
        };
        match call.name.as_str() {
            "list_files" => {
                let path = self.resolve(input["path"].as_str().unwrap_or("."))?;
                let mut names: Vec<String> = std::fs::read_dir(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name() != ".git")
                    .map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if e.path().is_dir() {
                            format!("{name}/")
                        } else {
                            name
                        }
                    })
                    .collect();
                names.sort();
                Ok(exec::tail_chars(&names.join("\n"), RESULT_LIMIT))
            }
            "read_file" => {
                let path = self.resolve(&text("path")?)?;
                let size = regular_file(&path)?.ok_or("no such file")?;
                if size > RESULT_LIMIT as u64 {
                    return Err(format!(
                        "{size} bytes is too large to read whole; use run_command with head, tail or grep"
                    ));
                }
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                String::from_utf8(bytes).map_err(|_| "not a text file".to_owned())
            }
            "write_file" => {
                let path = self.resolve(&text("path")?)?;
                regular_file(&path)?;
                let content = text("content")?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                }
                std::fs::write(&path, &content).map_err(|e| e.to_string())?;
                Ok(format!("wrote {} bytes", content.len()))
            }
            "edit_file" => {
                let path = self.resolve(&text("path")?)?;
                regular_file(&path)?.ok_or("no such file")?;
                let (old, new) = (text("old_text")?, text("new_text")?);
                let current = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                match current.matches(old.as_str()).count() {
                    1 => {
                        std::fs::write(&path, current.replacen(&old, &new, 1))
                            .map_err(|e| e.to_string())?;
                        Ok("edited".into())
                    }
                    0 => Err("old_text does not occur in the file".into()),
                    n => Err(format!(
                        "old_text occurs {n} times; give more context so it occurs once"
                    )),
                }
            }
            "run_command" => {
                let command = text("command")?;
                let shown = exec::tail_chars(&command, 200);
                let left = self.deadline.saturating_duration_since(Instant::now());
                let timeout = COMMAND_TIMEOUT.min(left);
                let job = exec::Job {
                    program: PathBuf::from("sh"),
                    args: vec!["-c".into(), command],
                    cwd: self.root.clone(),
                    env: self.env.clone(),
                    stdin: None,
                    timeout,
                    output_limit: self.output_limit,
                    fd3: None,
                };
                let job = crate::proc::sandbox::confine(self.jail, job, &[]);
                let tap = exec::current_tap();
                if let Some(tap) = &tap {
                    tap.note(&format!("$ {shown}"));
                }
                let started =
                    exec::start_tapped(job, tap).map_err(|e| format!("could not start sh: {e}"))?;
                (self.record)(Some(started.pgid)).await;
                let out = started.wait(self.cancel).await;
                (self.record)(None).await;
                Ok(format!(
                    "{}\n{}",
                    out.ending.describe(timeout),
                    out.combined_tail(RESULT_LIMIT.min(self.output_limit))
                ))
            }
            other => Err(format!("there is no tool `{other}`")),
        }
    }
}

/// Input and output tokens an answer reports (Anthropic counts cached input separately).
fn usage(dialect: Dialect, body: &Value) -> (u64, u64) {
    let u = &body["usage"];
    let n = |k: &str| u[k].as_u64().unwrap_or(0);
    match dialect {
        Dialect::Anthropic => (
            n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens"),
            n("output_tokens"),
        ),
        Dialect::OpenAi => (n("prompt_tokens"), n("completion_tokens")),
    }
}

/// The size of the regular file at `path`, `None` when nothing is there; an error for a
/// directory, a pipe or a device (reading a pipe would wait forever).
fn regular_file(path: &Path) -> Result<Option<u64>, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => Err(format!("{} is not a regular file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Runs the tool loop until the model is done, the turns or the time run out, or the task is
/// cancelled.
pub async fn run(
    provider: &Provider,
    ep: &Endpoint,
    env: Vec<(String, String)>,
    req: &AgentRequest<'_>,
    timeout: Duration,
    cancel: &CancellationToken,
    record: ProcessRecorder<'_>,
) -> Result<AgentReport, crate::agent::providers::Failed> {
    let mut spent = (0u64, 0u64);
    let result = run_loop(provider, ep, env, req, timeout, cancel, record, &mut spent).await;
    // A run that failed still used tokens: they are said, and priced.
    result.map_err(|(status, detail)| {
        let (i, o) = spent;
        crate::agent::providers::Failed {
            status,
            detail: if i + o > 0 {
                format!("{detail} ({i} tokens in, {o} out)")
            } else {
                detail
            },
            cost_usd: ep.cost(i, o).filter(|_| i + o > 0),
        }
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_loop(
    provider: &Provider,
    ep: &Endpoint,
    env: Vec<(String, String)>,
    req: &AgentRequest<'_>,
    timeout: Duration,
    cancel: &CancellationToken,
    record: ProcessRecorder<'_>,
    spent: &mut (u64, u64),
) -> Result<AgentReport, (AttemptStatus, String)> {
    let started = Instant::now();
    let deadline = started + timeout;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| (AttemptStatus::Failure, format!("HTTP client: {e}")))?;
    let tools = Tools {
        root: req.cwd.to_owned(),
        env,
        output_limit: req.output_limit,
        deadline,
        cancel,
        record,
        jail: req.jail,
    };
    let mut convo = Conversation::new(ep.dialect, req.prompt);
    for turn in 1..=ep.max_turns {
        let request = convo.request(ep);
        let body = tokio::select! {
            r = call(&client, ep, &request, deadline) => r?,
            _ = cancel.cancelled() => return Err((AttemptStatus::Cancelled, "cancelled".into())),
        };
        let (i, o) = usage(ep.dialect, &body);
        spent.0 += i;
        spent.1 += o;
        let answer = convo
            .take_answer(&body)
            .map_err(|e| (AttemptStatus::Failure, e))?;
        if answer.calls.is_empty() {
            return Ok(AgentReport {
                provider: provider.name.clone(),
                summary: exec::tail_chars(answer.text.trim(), 2000),
                cost_usd: ep.cost(spent.0, spent.1),
                turns: Some(u64::from(turn)),
                duration: started.elapsed(),
                tokens: Some(*spent),
            });
        }
        let mut results = Vec::with_capacity(answer.calls.len());
        for c in &answer.calls {
            if cancel.is_cancelled() {
                return Err((AttemptStatus::Cancelled, "cancelled".into()));
            }
            let (text, is_error) = if answer.truncated {
                (
                    "not run: your answer was cut off at the token limit, so this call may be incomplete; send it again in smaller pieces".to_owned(),
                    true,
                )
            } else {
                match tools.run(c).await {
                    Ok(t) => (t, false),
                    Err(e) => (e, true),
                }
            };
            results.push((c.id.clone(), text, is_error));
        }
        convo.add_results(results);
        if Instant::now() >= deadline {
            return Err((
                AttemptStatus::Timeout,
                format!("timed out after {}s", timeout.as_secs()),
            ));
        }
    }
    Err((
        AttemptStatus::Failure,
        format!(
            "the model was still asking for tools after {} turns (max_turns)",
            ep.max_turns
        ),
    ))
}

/// One model call; failures that pass (429, 5xx, 529 overloaded, network) are tried again
/// after `retry-after` or a growing pause, within the deadline.
async fn call(
    client: &reqwest::Client,
    ep: &Endpoint,
    body: &Value,
    deadline: Instant,
) -> Result<Value, (AttemptStatus, String)> {
    let mut last = String::new();
    for attempt in 0..CALL_ATTEMPTS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err((AttemptStatus::Timeout, format!("timed out: {last}")));
        }
        let mut rb = client.post(&ep.url).timeout(left).json(body);
        rb = match ep.dialect {
            Dialect::Anthropic => rb
                .header("x-api-key", ep.key.expose_secret())
                .header("anthropic-version", "2023-06-01"),
            Dialect::OpenAi => rb.bearer_auth(ep.key.expose_secret()),
        };
        let wait = match rb.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let text = resp.text().await.unwrap_or_default();
                if (200..300).contains(&status) {
                    return serde_json::from_str(&text).map_err(|e| {
                        (
                            AttemptStatus::Failure,
                            format!("unreadable answer from {}: {e}", ep.url),
                        )
                    });
                }
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| exec::tail_chars(&text, 300));
                last = format!("{} answered {status}: {message}", ep.url);
                if !(status == 429 || status == 529 || status >= 500) {
                    return Err((AttemptStatus::Failure, last));
                }
                retry_after.map(Duration::from_secs)
            }
            Err(e) => {
                last = format!("calling {}: {e}", ep.url);
                None
            }
        };
        let pause = wait.unwrap_or_else(|| Duration::from_secs(1 << attempt));
        if Instant::now() + pause >= deadline {
            return Err((
                AttemptStatus::Timeout,
                format!("the time ran out while waiting to try again: {last}"),
            ));
        }
        tokio::time::sleep(pause).await;
    }
    Err((AttemptStatus::Failure, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools<'a>(root: &Path, cancel: &'a CancellationToken) -> Tools<'a> {
        Tools {
            root: root.to_owned(),
            env: Vec::new(),
            output_limit: 1024,
            deadline: Instant::now() + Duration::from_secs(10),
            cancel,
            record: &|_| Box::pin(async {}),
            jail: None,
        }
    }

    #[test]
    fn paths_stay_inside_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("work");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("src", root.join("inner")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere/nope"), root.join("dangling"))
            .unwrap();
        let cancel = CancellationToken::new();
        let t = tools(&root, &cancel);
        assert_eq!(t.resolve("src/a.rs").unwrap(), root.join("src/a.rs"));
        assert_eq!(t.resolve("./src/../b.rs").unwrap(), root.join("b.rs"));
        assert_eq!(
            t.resolve("new/dir/c.rs").unwrap(),
            root.join("new/dir/c.rs")
        );
        assert!(t.resolve("inner/a.rs").is_ok(), "a link that stays inside");
        for bad in [
            "dangling",
            "dangling/x",
            "../x",
            "src/../../x",
            "/etc/passwd",
            "link/x",
            "link",
            ".git/config",
            "src/.git",
        ] {
            assert!(t.resolve(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_cut_off_at_the_token_limit_are_marked() {
        let mut c = Conversation::new(Dialect::Anthropic, "task");
        let cut = json!({"content": [{"type": "tool_use", "id": "t1", "name": "write_file",
                         "input": {"path": "a"}}], "stop_reason": "max_tokens"});
        let a = c.take_answer(&cut).unwrap();
        assert!(a.truncated && a.calls.len() == 1);
        let mut o = Conversation::new(Dialect::OpenAi, "task");
        let whole = json!({"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "list_files", "arguments": {"path": "."}}}]}}]});
        let a = o.take_answer(&whole).unwrap();
        assert!(!a.truncated);
        assert_eq!(
            a.calls[0].input.as_ref().unwrap()["path"],
            ".",
            "object arguments too"
        );
    }

    #[tokio::test]
    async fn edits_need_exactly_one_match_and_commands_report_their_exit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f.txt"), "a b a").unwrap();
        let cancel = CancellationToken::new();
        let t = tools(dir.path(), &cancel);
        let call = |name: &str, input: Value| Call {
            id: "1".into(),
            name: name.into(),
            input: Ok(input),
        };
        let twice = t
            .run(&call(
                "edit_file",
                json!({"path": "f.txt", "old_text": "a", "new_text": "c"}),
            ))
            .await
            .unwrap_err();
        assert!(twice.contains("2 times"), "{twice}");
        t.run(&call(
            "edit_file",
            json!({"path": "f.txt", "old_text": "b", "new_text": "c"}),
        ))
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f.txt")).unwrap(),
            "a c a"
        );
        let out = t
            .run(&call(
                "run_command",
                json!({"command": "cat f.txt; exit 3"}),
            ))
            .await
            .unwrap();
        assert!(
            out.contains("exit code 3") && out.contains("a c a"),
            "{out}"
        );
        let missing = t
            .run(&call("write_file", json!({"path": "g.txt"})))
            .await
            .unwrap_err();
        assert!(missing.contains("`content` is missing"), "{missing}");
        let unknown = t.run(&call("rm_rf", json!({}))).await.unwrap_err();
        assert!(unknown.contains("no tool `rm_rf`"), "{unknown}");
    }
}
