//! Task specs: parsing YAML or JSON into a validated [`TaskSpec`], with errors that say what is
//! wrong and where. No I/O here; callers read the text.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::core::ids::TaskId;
use crate::core::roles::Roles;

pub const DEFAULT_MAX_ROUNDS: u32 = 3;
/// No spec, role or repository may ask for more rounds than this, whatever the server allows.
const MAX_ROUNDS_LIMIT: u32 = 100;
/// Nor for a longer budget than this (a week): far beyond any task, and far inside what time
/// arithmetic can hold.
const MAX_TIMEOUT_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The server's maxima: no source (a spec, an issue's block, a role, a repository's
/// `.github/autodev.yml`) may ask for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The longest whole-task budget (`timeout`).
    #[serde(deserialize_with = "limit_duration", serialize_with = "human_secs")]
    pub max_timeout: Duration,
    /// The most rounds (`max_rounds`).
    pub max_rounds: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_timeout: Duration::from_secs(6 * 3600),
            max_rounds: 10,
        }
    }
}

impl Limits {
    /// The widest limits there are: for specs stored before the server's maxima changed.
    pub fn absolute() -> Self {
        Self {
            max_timeout: MAX_TIMEOUT_LIMIT,
            max_rounds: MAX_ROUNDS_LIMIT,
        }
    }

    /// Checks the limits themselves (from the config file).
    pub fn check(&self) -> Result<(), String> {
        if self.max_rounds == 0 || self.max_rounds > MAX_ROUNDS_LIMIT {
            return Err(format!(
                "limits.max_rounds must be from 1 to {MAX_ROUNDS_LIMIT}; found {}",
                self.max_rounds
            ));
        }
        if self.max_timeout > MAX_TIMEOUT_LIMIT {
            return Err(format!(
                "limits.max_timeout must be at most {}; found {}",
                human_duration(MAX_TIMEOUT_LIMIT),
                human_duration(self.max_timeout)
            ));
        }
        Ok(())
    }
}

fn limit_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    use serde::Deserialize;
    let v = Value::deserialize(d)?;
    parse_timeout(&v).map_err(serde::de::Error::custom)
}

fn human_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&human_duration(*d))
}

/// `5400s` → `1h30m`; whole seconds, for messages.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// The keys every spec has; with [`OPTION_KEYS`], the keys autodev itself interprets. Any
/// other top-level key is role context.
pub const REQUIRED_KEYS: &[&str] = &["id", "title", "description", "role"];
const ACCEPTANCE_KEYS: &[&str] = &["lint", "typecheck", "tests"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Yaml,
    Json,
}

impl SpecFormat {
    /// The format for an HTTP `Content-Type`, or `None` when it is neither.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json" => Some(Self::Json),
            "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
                Some(Self::Yaml)
            }
            _ => None,
        }
    }

    /// The format for a file name: `.json` is JSON, anything else YAML.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Yaml,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Yaml => "YAML",
            Self::Json => "JSON",
        }
    }
}

/// Which acceptance gates a task asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Acceptance {
    pub lint: bool,
    pub typecheck: bool,
    pub tests: Vec<String>,
}

/// The keys that tune how a task runs. Each is optional: what a spec leaves out comes from the
/// repository's `.github/autodev.yml`, the role or the server's configuration (see `trust`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TaskOptions {
    /// Relative to the repository root, normalised, `.` for the root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acceptance: Option<Acceptance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_override: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Whole-task budget, in seconds when serialized.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_secs"
    )]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
}

impl TaskOptions {
    /// The keys that are set, by their spec names.
    pub fn keys(&self) -> Vec<&'static str> {
        OPTION_KEYS
            .iter()
            .copied()
            .filter(|k| self.is_set(k))
            .collect()
    }

    fn is_set(&self, key: &str) -> bool {
        match key {
            "target_dir" => self.target_dir.is_some(),
            "acceptance" => self.acceptance.is_some(),
            "base_branch" => self.base_branch.is_some(),
            "provider_override" => self.provider_override.is_some(),
            "model" => self.model.is_some(),
            "timeout" => self.timeout.is_some(),
            "max_rounds" => self.max_rounds.is_some(),
            _ => false,
        }
    }

    /// Unsets `key`.
    pub fn clear(&mut self, key: &str) {
        match key {
            "target_dir" => self.target_dir = None,
            "acceptance" => self.acceptance = None,
            "base_branch" => self.base_branch = None,
            "provider_override" => self.provider_override = None,
            "model" => self.model = None,
            "timeout" => self.timeout = None,
            "max_rounds" => self.max_rounds = None,
            _ => {}
        }
    }

    /// Every key set in `over` replaces the one here.
    pub fn layer(&mut self, over: &TaskOptions) {
        let o = over.clone();
        self.target_dir = o.target_dir.or(self.target_dir.take());
        self.acceptance = o.acceptance.or(self.acceptance.take());
        self.base_branch = o.base_branch.or(self.base_branch.take());
        self.provider_override = o.provider_override.or(self.provider_override.take());
        self.model = o.model.or(self.model.take());
        self.timeout = o.timeout.or(self.timeout.take());
        self.max_rounds = o.max_rounds.or(self.max_rounds.take());
    }
}

/// The keys of [`TaskOptions`].
pub const OPTION_KEYS: &[&str] = &[
    "target_dir",
    "acceptance",
    "base_branch",
    "provider_override",
    "model",
    "timeout",
    "max_rounds",
];

/// A validated task spec: what was asked for. What a run actually uses is resolved from it by
/// `trust::resolve`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskSpec {
    pub id: TaskId,
    pub title: String,
    pub description: String,
    pub role: String,
    #[serde(flatten)]
    pub options: TaskOptions,
    /// Role-specific keys (`data_source`, `output_format`, ...), handed to the agent as context.
    #[serde(flatten)]
    pub context: BTreeMap<String, Value>,
}

fn serialize_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(d.as_secs()),
        None => s.serialize_none(),
    }
}

/// One thing wrong with a spec, located by its field path (`acceptance.tests[1]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{format} syntax error at line {line}, column {column}: {message}")]
    Syntax {
        format: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid task spec: {}", render_problems(.0))]
    Invalid(Vec<Problem>),
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("`{}`: {}", p.field, p.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl SpecError {
    /// The JSON body of an HTTP error answer.
    pub fn to_json(&self) -> Value {
        match self {
            SpecError::Syntax { line, column, .. } => serde_json::json!({
                "error": self.to_string(), "line": line, "column": column,
            }),
            SpecError::Invalid(problems) => serde_json::json!({
                "error": self.to_string(), "problems": problems,
            }),
        }
    }
}

/// Parse and validate a spec. `roles` decides which role names are known; `limits` are the
/// server's maxima.
pub fn parse(
    text: &str,
    format: SpecFormat,
    roles: &Roles,
    limits: &Limits,
) -> Result<TaskSpec, SpecError> {
    let value = parse_value(text, format)?;
    from_value(value, roles, limits)
}

fn parse_value(text: &str, format: SpecFormat) -> Result<Value, SpecError> {
    let syntax = |line, column, message: String| SpecError::Syntax {
        format: format.name(),
        line,
        column,
        message,
    };
    match format {
        SpecFormat::Json => serde_json::from_str(text).map_err(|e| {
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or("").to_owned();
            syntax(e.line(), e.column(), message)
        }),
        SpecFormat::Yaml => serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or("").to_owned();
            syntax(line, column, message)
        }),
    }
}

/// Validate an already parsed document (a stored spec, or a JSON body).
pub fn from_value(value: Value, roles: &Roles, limits: &Limits) -> Result<TaskSpec, SpecError> {
    let Value::Object(mut map) = value else {
        return Err(SpecError::Invalid(vec![Problem {
            field: "(document)".into(),
            message: format!(
                "a task spec is a mapping of keys such as `id`, `title`, `role`; found {}",
                kind(&value)
            ),
        }]));
    };
    let mut p = Problems::default();

    let id = p.required_str(&mut map, "id").and_then(|s| {
        s.parse::<TaskId>()
            .map_err(|e| p.add("id", e.to_string()))
            .ok()
    });
    let title = p.required_str(&mut map, "title");
    if let Some(t) = &title
        && t.contains('\n')
    {
        p.add("title", "must be one line");
    }
    let description = p.required_str(&mut map, "description");
    let role = p.required_str(&mut map, "role");
    if let Some(r) = &role
        && roles.get(r).is_none()
    {
        p.add(
            "role",
            format!(
                "unknown role `{r}`; known roles: {}",
                roles.names().join(", ")
            ),
        );
    }
    let options = p.options(&mut map, "", limits);
    // Whatever is left is role context, unless it looks like a misspelt known key.
    let known_keys: Vec<&str> = REQUIRED_KEYS.iter().chain(OPTION_KEYS).copied().collect();
    for key in map.keys() {
        if let Some(known) = near_miss(key, &known_keys) {
            p.add(key, format!("unknown key; did you mean `{known}`?"));
        }
    }

    if !p.0.is_empty() {
        return Err(SpecError::Invalid(p.0));
    }
    let (Some(id), Some(title), Some(description), Some(role)) = (id, title, description, role)
    else {
        unreachable!("a missing required field is recorded as a problem");
    };
    Ok(TaskSpec {
        id,
        title,
        description,
        role,
        options,
        context: map.into_iter().collect(),
    })
}

/// Validates the [`TaskOptions`] keys of `map` (removing them), for documents other than specs
/// (an issue's block, a role, a repository's `.github/autodev.yml`); `prefix` locates them in
/// error messages (`roles.backend.`).
pub fn options_from_map(
    map: &mut Map<String, Value>,
    prefix: &str,
    limits: &Limits,
) -> Result<TaskOptions, SpecError> {
    let mut p = Problems::default();
    let options = p.options(map, prefix, limits);
    if p.0.is_empty() {
        Ok(options)
    } else {
        Err(SpecError::Invalid(p.0))
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// The option keys of `map`, removed from it; each bad one recorded as `<prefix><key>`.
    fn options(
        &mut self,
        map: &mut Map<String, Value>,
        prefix: &str,
        limits: &Limits,
    ) -> TaskOptions {
        let at = |key: &str| format!("{prefix}{key}");
        let before = self.0.len();
        let target_dir = self.optional_str(map, "target_dir").and_then(|dir| {
            check_target_dir(&dir)
                .map_err(|e| self.add(at("target_dir"), e))
                .ok()
        });
        let acceptance = match map.remove("acceptance") {
            None | Some(Value::Null) => None,
            Some(v) => Some(self.acceptance(Some(v))),
        };
        let base_branch = self.optional_str(map, "base_branch");
        if let Some(b) = &base_branch
            && !git2::Reference::is_valid_name(&format!("refs/heads/{b}"))
        {
            self.add(
                at("base_branch"),
                format!("`{b}` is not a valid branch name"),
            );
        }
        let provider_override = self.optional_str(map, "provider_override");
        let model = self.optional_str(map, "model");
        let timeout = match map.remove("timeout") {
            None | Some(Value::Null) => None,
            Some(v) => match parse_timeout(&v) {
                Ok(d) if d > limits.max_timeout => {
                    self.add(
                        at("timeout"),
                        format!(
                            "{} is longer than this server allows ({}, limits.max_timeout)",
                            human_duration(d),
                            human_duration(limits.max_timeout)
                        ),
                    );
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    self.add(at("timeout"), e);
                    None
                }
            },
        };
        let max_rounds = match map.remove("max_rounds") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n))
                if n.as_u64()
                    .is_some_and(|n| (1..=u64::from(limits.max_rounds)).contains(&n)) =>
            {
                n.as_u64().map(|n| n as u32)
            }
            Some(v) => {
                self.add(
                    at("max_rounds"),
                    format!(
                        "must be a whole number from 1 to {} (limits.max_rounds); found {v}",
                        limits.max_rounds
                    ),
                );
                None
            }
        };
        // Problems recorded without the prefix (acceptance, optional strings) get it now.
        if !prefix.is_empty() {
            for problem in &mut self.0[before..] {
                if !problem.field.starts_with(prefix) {
                    problem.field = format!("{prefix}{}", problem.field);
                }
            }
        }
        TaskOptions {
            target_dir,
            acceptance,
            base_branch,
            provider_override,
            model,
            timeout,
            max_rounds,
        }
    }

    fn required_str(&mut self, map: &mut Map<String, Value>, key: &str) -> Option<String> {
        match map.remove(key) {
            None | Some(Value::Null) => {
                self.add(key, "is required");
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.add(key, "must not be empty");
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_owned()),
            Some(Value::Number(n)) if key != "description" => Some(n.to_string()),
            Some(v) => {
                self.add(key, format!("must be a string; found {}", kind(&v)));
                None
            }
        }
    }

    fn optional_str(&mut self, map: &mut Map<String, Value>, key: &str) -> Option<String> {
        match map.remove(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(s)) => Some(s.trim().to_owned()),
            Some(v) => {
                self.add(key, format!("must be a string; found {}", kind(&v)));
                None
            }
        }
    }

    fn acceptance(&mut self, value: Option<Value>) -> Acceptance {
        let mut acc = Acceptance::default();
        let map = match value {
            None | Some(Value::Null) => return acc,
            Some(Value::Object(map)) => map,
            Some(v) => {
                self.add(
                    "acceptance",
                    format!(
                        "must be a mapping with `lint`, `typecheck` and `tests`; found {}",
                        kind(&v)
                    ),
                );
                return acc;
            }
        };
        for (key, v) in map {
            let field = format!("acceptance.{key}");
            match key.as_str() {
                "lint" | "typecheck" => match v {
                    Value::Bool(b) if key == "lint" => acc.lint = b,
                    Value::Bool(b) => acc.typecheck = b,
                    Value::Null => {}
                    v => self.add(field, format!("must be true or false; found {}", kind(&v))),
                },
                "tests" => match v {
                    Value::Null => {}
                    Value::String(s) => self.test_command(&mut acc, "acceptance.tests", s),
                    Value::Array(items) => {
                        for (i, item) in items.into_iter().enumerate() {
                            let field = format!("acceptance.tests[{i}]");
                            match item {
                                Value::String(s) => self.test_command(&mut acc, &field, s),
                                v => self.add(
                                    field,
                                    format!("must be a command string; found {}", kind(&v)),
                                ),
                            }
                        }
                    }
                    v => self.add(
                        field,
                        format!("must be a list of commands; found {}", kind(&v)),
                    ),
                },
                other => {
                    let hint = match near_miss(other, ACCEPTANCE_KEYS) {
                        Some(k) => format!("unknown key; did you mean `{k}`?"),
                        None => "unknown key; acceptance takes `lint`, `typecheck` and `tests`"
                            .to_owned(),
                    };
                    self.add(field, hint);
                }
            }
        }
        acc
    }

    fn test_command(&mut self, acc: &mut Acceptance, field: &str, command: String) {
        if command.trim().is_empty() {
            self.add(field, "test command must not be empty");
        } else {
            acc.tests.push(command.trim().to_owned());
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A known key that `key` is probably a misspelling of. Short keys allow one edit, longer ones
/// two, so role context such as `rules` is not mistaken for `role`.
pub fn near_miss<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase().replace('-', "_");
    known
        .iter()
        .filter(|k| **k != key)
        .map(|k| (*k, strsim::damerau_levenshtein(&lower, k)))
        .filter(|(k, d)| {
            let allowed = if k.len() <= 5 { 1 } else { 2 };
            *d <= allowed
        })
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

/// `target_dir` must stay inside the repository: relative, no `..`.
fn check_target_dir(dir: &str) -> Result<String, String> {
    if dir.starts_with('/') || dir.starts_with('\\') || dir.chars().nth(1) == Some(':') {
        return Err(format!(
            "`{dir}` is absolute; give a path relative to the repository root"
        ));
    }
    if dir.contains('\0') {
        return Err("contains a NUL character".into());
    }
    let mut parts = Vec::new();
    for part in dir.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "`{dir}` leaves the repository (`..` is not allowed)"
                ));
            }
            ".git" => return Err(format!("`{dir}` points into the `.git` directory")),
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    })
}

/// A timeout is whole seconds (`900`) or a duration such as `"30m"`, `"1h30m"`, `"90s"`.
pub fn parse_timeout(v: &Value) -> Result<Duration, String> {
    let d = match v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_secs)
            .ok_or_else(|| format!("must be a positive number of seconds; found {n}"))?,
        Value::String(s) => parse_duration(s)?,
        v => {
            return Err(format!(
                "must be seconds or a duration like \"30m\"; found {}",
                kind(v)
            ));
        }
    };
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    if d > MAX_TIMEOUT_LIMIT {
        return Err(format!(
            "{} is longer than any budget autodev takes (at most {})",
            human_duration(d),
            human_duration(MAX_TIMEOUT_LIMIT)
        ));
    }
    Ok(d)
}

/// Parses a duration with units: `"90s"`, `"30m"`, `"2h"`, `"1h30m"`, `"1d"` (humantime's
/// syntax). A bare number in a string is refused: whether it meant seconds or minutes is
/// anyone's guess, so it must be written as a number or with its unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`\"{s}\"` has no unit; write a number without quotes, or a duration such as \"90s\", \"30m\", \"1h30m\""
        ));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("`{s}` is not a duration ({e}); write e.g. 900, \"90s\", \"30m\", \"1h30m\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Roles {
        Roles::built_in()
    }

    fn yaml(text: &str) -> Result<TaskSpec, SpecError> {
        parse(text, SpecFormat::Yaml, &roles(), &Limits::default())
    }

    const BASE: &str = "id: T-1\ntitle: Add x\ndescription: do it\nrole: backend\n";

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec = yaml(BASE).unwrap();
        assert_eq!(spec.options, TaskOptions::default(), "nothing asked for");
        assert!(spec.context.is_empty());
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = yaml("id: T-1\ntitle: [unclosed\n").unwrap_err();
        let SpecError::Syntax { line, .. } = err else {
            panic!("{err:?}")
        };
        assert!(line >= 2, "{line}");
        let err = parse(
            "{\"id\": 1,,}",
            SpecFormat::Json,
            &roles(),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                SpecError::Syntax {
                    line: 1,
                    column: 10,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn near_miss_is_an_error_but_context_is_kept() {
        let err = yaml(&format!("{BASE}acceptence: {{lint: true}}\n")).unwrap_err();
        assert!(
            err.to_string().contains("did you mean `acceptance`"),
            "{err}"
        );
        let spec = yaml(&format!("{BASE}data_source: s3://x\nrules: [a]\n")).unwrap();
        assert_eq!(spec.context["data_source"], "s3://x");
        assert!(spec.context.contains_key("rules"));
    }

    #[test]
    fn field_errors_are_all_reported() {
        let err = yaml("id: bad id\ntitle: t\nrole: nope\ntarget_dir: ../x\nmax_rounds: 0\n")
            .unwrap_err();
        let SpecError::Invalid(problems) = &err else {
            panic!("{err:?}")
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["id", "description", "role", "target_dir", "max_rounds"]
        );
        assert!(
            err.to_string()
                .contains("known roles: backend, computational_biologist, data, data_analyst")
        );
        assert!(err.to_string().contains("leaves the repository"));
    }

    #[test]
    fn target_dir_rules() {
        assert_eq!(check_target_dir("./backend/").unwrap(), "backend");
        assert_eq!(check_target_dir("a//b").unwrap(), "a/b");
        assert_eq!(check_target_dir("").unwrap(), ".");
        assert!(check_target_dir("/etc").is_err());
        assert!(check_target_dir("a/../../x").is_err());
        assert!(check_target_dir(".git/hooks").is_err());
    }

    #[test]
    fn acceptance_and_timeouts() {
        let spec = yaml(&format!(
            "{BASE}acceptance: {{lint: true, tests: [\"pytest -q\", \"make check\"]}}\ntimeout: 1h30m\n"
        ))
        .unwrap();
        let acceptance = spec.options.acceptance.clone().unwrap();
        assert!(acceptance.lint && !acceptance.typecheck);
        assert_eq!(acceptance.tests, ["pytest -q", "make check"]);
        assert_eq!(spec.options.timeout, Some(Duration::from_secs(5400)));
        let err = yaml(&format!("{BASE}acceptance: {{tests: [\"\"], lnt: true}}\n")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("acceptance.tests[0]"), "{text}");
        assert!(text.contains("did you mean `lint`"), "{text}");
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("5 minutes").unwrap(),
            Duration::from_secs(300)
        );
        let bare = parse_duration("90").unwrap_err();
        assert!(bare.contains("has no unit"), "{bare}");
        assert!(yaml(&format!("{BASE}timeout: 0\n")).is_err());
    }

    #[test]
    fn budgets_are_bounded_by_the_servers_maxima() {
        let err = yaml(&format!("{BASE}timeout: 18446744073709551615\n")).unwrap_err();
        assert!(err.to_string().contains("`timeout`"), "{err}");
        let err = yaml(&format!("{BASE}timeout: 7h\n")).unwrap_err();
        assert!(
            err.to_string()
                .contains("7h is longer than this server allows (6h, limits.max_timeout)"),
            "{err}"
        );
        let err = yaml(&format!("{BASE}max_rounds: 11\n")).unwrap_err();
        assert!(err.to_string().contains("limits.max_rounds"), "{err}");
        let wide = Limits {
            max_timeout: Duration::from_secs(48 * 3600),
            max_rounds: 50,
        };
        let spec = parse(
            &format!("{BASE}timeout: 1d\nmax_rounds: 50\n"),
            SpecFormat::Yaml,
            &roles(),
            &wide,
        )
        .unwrap();
        assert_eq!(spec.options.max_rounds, Some(50));
        assert!(parse_duration("99999999999999999999h").is_err());
        let e = parse_timeout(&serde_json::json!("30d")).unwrap_err();
        assert!(
            e.contains("720h is longer than any budget autodev takes (at most 168h)"),
            "{e}"
        );
    }

    #[test]
    fn round_trips_through_json() {
        let spec = yaml(&format!("{BASE}timeout: 600\nextra: {{a: 1}}\n")).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            from_value(json, &roles(), &Limits::default()).unwrap(),
            spec
        );
    }
}
