//! Who may choose what a task runs. Commands (the gates) and money (timeout, rounds, model,
//! provider) come from the server's configuration, the role, and the repository's own
//! `.github/autodev.yml` read from the base branch, which may set only what the server's
//! `allowed_overrides` lets it. A spec then adds its own keys: any key from the HTTP API or the
//! CLI (their callers hold the server), an issue's ```` ```autodev ```` block only when the
//! issue's author may write to the repository, and then within `allowed_overrides` too. The
//! server's `limits` cap every source. Pure: callers read the files and ask GitHub.
//! Never imports the database, the engine, GitHub or the worker.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::core::spec::{self, Acceptance, Limits, SpecError, TaskOptions, human_duration};

/// Where a repository keeps its autodev settings, first found wins.
pub const REPO_FILE_PATHS: &[&str] = &[".github/autodev.yml", ".github/autodev.yaml"];

/// Every key `allowed_overrides` may name: the spec's option keys, plus `gates` (the lint and
/// typecheck commands).
pub const OVERRIDE_KEYS: &[&str] = &[
    "target_dir",
    "acceptance",
    "gates",
    "timeout",
    "max_rounds",
    "model",
    "provider_override",
    "base_branch",
];

/// What a repository (and a writer's issue block) may set unless the server says otherwise:
/// everything but the keys that choose what is paid for (`model`, `provider_override`).
pub const DEFAULT_OVERRIDES: &[&str] = &[
    "target_dir",
    "acceptance",
    "gates",
    "timeout",
    "max_rounds",
    "base_branch",
];

/// Commands for the `lint` and `typecheck` gates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GateCommands {
    pub lint: Option<String>,
    pub typecheck: Option<String>,
}

impl GateCommands {
    fn layer(&mut self, over: &GateCommands) {
        if over.lint.is_some() {
            self.lint = over.lint.clone();
        }
        if over.typecheck.is_some() {
            self.typecheck = over.typecheck.clone();
        }
    }

    fn is_empty(&self) -> bool {
        self.lint.is_none() && self.typecheck.is_none()
    }
}

/// One level of a repository file: its top level, or one role's section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoSection {
    pub options: TaskOptions,
    pub gates: GateCommands,
}

/// A repository's `.github/autodev.yml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepoFile {
    /// Where it was read (`.github/autodev.yml`), for messages.
    pub path: String,
    pub all: RepoSection,
    /// `roles.<name>`: settings for tasks of one role, over the top level.
    pub roles: BTreeMap<String, RepoSection>,
}

/// Parses a repository file; the error says what is wrong and where.
pub fn parse_repo_file(path: &str, text: &str) -> Result<RepoFile, String> {
    let value: Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
            .unwrap_or_default();
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or("").to_owned();
        format!("{path}: YAML syntax error{at}: {message}")
    })?;
    let mut map = match value {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        _ => {
            return Err(format!(
                "{path}: must be a mapping of keys such as `acceptance`"
            ));
        }
    };
    let roles = match map.remove("roles") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(roles)) => {
            let mut out = BTreeMap::new();
            for (name, section) in roles {
                let mut section = match section {
                    Value::Null => Map::new(),
                    Value::Object(m) => m,
                    _ => return Err(format!("{path}: `roles.{name}` must be a mapping")),
                };
                let parsed = repo_section(path, &mut section, &format!("roles.{name}."))?;
                out.insert(name, parsed);
            }
            out
        }
        Some(_) => {
            return Err(format!("{path}: `roles` must map role names to settings"));
        }
    };
    let all = repo_section(path, &mut map, "")?;
    Ok(RepoFile {
        path: path.to_owned(),
        all,
        roles,
    })
}

fn repo_section(
    path: &str,
    map: &mut Map<String, Value>,
    prefix: &str,
) -> Result<RepoSection, String> {
    let located = |e: SpecError| {
        format!(
            "{path}: {}",
            e.to_string().trim_start_matches("invalid task spec: ")
        )
    };
    if map.contains_key("base_branch") {
        return Err(format!(
            "{path}: `{prefix}base_branch` cannot be set here: this file is read from the base branch"
        ));
    }
    let gates = match map.remove("gates") {
        None | Some(Value::Null) => GateCommands::default(),
        Some(Value::Object(mut g)) => {
            let mut command = |name: &str| match g.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
                Some(_) => Err(format!(
                    "{path}: `{prefix}gates.{name}` must be a command (a string)"
                )),
            };
            let commands = GateCommands {
                lint: command("lint")?,
                typecheck: command("typecheck")?,
            };
            if let Some(other) = g.keys().next() {
                return Err(format!(
                    "{path}: `{prefix}gates.{other}` is not a gate; gates takes `lint` and `typecheck`"
                ));
            }
            commands
        }
        Some(_) => {
            return Err(format!(
                "{path}: `{prefix}gates` must be a mapping with `lint` and `typecheck`"
            ));
        }
    };
    // A repository may ask for more than this server allows; that is capped when it is used.
    let options = spec::options_from_map(map, prefix, &Limits::absolute()).map_err(located)?;
    if let Some(key) = map.keys().next() {
        let known: Vec<&str> = spec::OPTION_KEYS
            .iter()
            .copied()
            .filter(|k| *k != "base_branch")
            .chain(["gates", "roles"])
            .collect();
        let hint = match spec::near_miss(key, &known) {
            Some(k) => format!("; did you mean `{k}`?"),
            None => format!("; it takes {}", known.join(", ")),
        };
        return Err(format!("{path}: unknown key `{prefix}{key}`{hint}"));
    }
    Ok(RepoSection { options, gates })
}

/// What the server allows and provides, from its configuration.
pub struct ServerPolicy<'a> {
    pub allowed_overrides: &'a [String],
    pub limits: &'a Limits,
    /// The budget when nothing else sets one (`agent.task_timeout`).
    pub default_timeout: Duration,
    /// `gates.lint` and `gates.typecheck`.
    pub gates: GateCommands,
}

impl ServerPolicy<'_> {
    pub fn allows(&self, key: &str) -> bool {
        self.allowed_overrides.iter().any(|k| k == key)
    }
}

/// What a run uses, and why it differs from what was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Relative to the repository root, `.` for the root.
    pub target_dir: String,
    pub acceptance: Acceptance,
    pub gates: GateCommands,
    pub timeout: Duration,
    pub max_rounds: u32,
    pub model: Option<String>,
    pub provider_override: Option<String>,
    /// Settings that were not used, or were capped, in words for the timeline.
    pub notes: Vec<String>,
}

/// Where a spec came from, as far as trust goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecSource {
    /// The HTTP API or the CLI: whoever holds the server.
    Operator,
    /// An issue's block: only the keys `allowed_overrides` allows now (the server may have
    /// narrowed them since the task was made).
    Issue,
}

/// Resolves a run's settings: server defaults < role < repository file (top level, then the
/// role's section; only allowed keys) < the spec; every budget capped by the server's limits.
pub fn resolve(
    policy: &ServerPolicy<'_>,
    role_name: &str,
    role_defaults: &TaskOptions,
    repo_file: Option<&RepoFile>,
    spec: &TaskOptions,
    source: SpecSource,
) -> Resolved {
    let mut notes = Vec::new();
    let mut spec = spec.clone();
    if source == SpecSource::Issue {
        // The base branch was settled when the run's code was fetched.
        for key in spec.keys() {
            if key != "base_branch" && !policy.allows(key) {
                spec.clear(key);
                notes.push(format!(
                    "the issue's block sets `{key}`, which this server does not let issues choose (allowed_overrides); not used"
                ));
            }
        }
    }
    let mut options = role_defaults.clone();
    let mut gates = policy.gates.clone();
    if let Some(file) = repo_file {
        let sections = std::iter::once(("", &file.all))
            .chain(file.roles.get(role_name).map(|s| (role_name, s)));
        for (role, section) in sections {
            let at = if role.is_empty() {
                String::new()
            } else {
                format!("roles.{role}.")
            };
            let mut allowed = section.options.clone();
            for key in section.options.keys() {
                if !policy.allows(key) {
                    allowed.clear(key);
                    notes.push(format!(
                        "{} sets `{at}{key}`, which this server does not let repositories choose (allowed_overrides); not used",
                        file.path
                    ));
                }
            }
            options.layer(&allowed);
            if !section.gates.is_empty() {
                if policy.allows("gates") {
                    gates.layer(&section.gates);
                } else {
                    notes.push(format!(
                        "{} sets `{at}gates`, which this server does not let repositories choose (allowed_overrides); not used",
                        file.path
                    ));
                }
            }
        }
    }
    options.layer(&spec);
    let mut timeout = options.timeout.unwrap_or(policy.default_timeout);
    if timeout > policy.limits.max_timeout {
        notes.push(format!(
            "timeout {} capped at this server's limit of {} (limits.max_timeout)",
            human_duration(timeout),
            human_duration(policy.limits.max_timeout)
        ));
        timeout = policy.limits.max_timeout;
    }
    let mut max_rounds = options.max_rounds.unwrap_or(spec::DEFAULT_MAX_ROUNDS);
    if max_rounds > policy.limits.max_rounds {
        notes.push(format!(
            "max_rounds {max_rounds} capped at this server's limit of {} (limits.max_rounds)",
            policy.limits.max_rounds
        ));
        max_rounds = policy.limits.max_rounds;
    }
    Resolved {
        target_dir: options.target_dir.unwrap_or_else(|| ".".into()),
        acceptance: options.acceptance.unwrap_or_default(),
        gates,
        timeout,
        max_rounds,
        model: options.model,
        provider_override: options.provider_override,
        notes,
    }
}

/// Who wrote an issue's ```` ```autodev ```` block, as far as trust goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockAuthor {
    /// The issue's author has write permission (asked of GitHub when the task was triggered).
    Writer,
    /// Anyone else: the block is not used.
    Outsider { login: String },
}

/// Keeps what an issue's block may set: nothing for an outsider, the allowed keys for a writer.
/// The notice, when something was dropped, is for the person (the status comment).
pub fn filter_block(
    options: &mut TaskOptions,
    author: &BlockAuthor,
    allowed_overrides: &[String],
) -> Option<String> {
    let keys = options.keys();
    if keys.is_empty() {
        return None;
    }
    match author {
        BlockAuthor::Outsider { login } => {
            *options = TaskOptions::default();
            Some(format!(
                "the ```autodev block in this issue was not used: its author @{login} does not have write permission here, and only writers' blocks may set {}",
                keys.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        BlockAuthor::Writer => {
            let dropped: Vec<&str> = keys
                .into_iter()
                .filter(|k| !allowed_overrides.iter().any(|a| a == k))
                .collect();
            for key in &dropped {
                options.clear(key);
            }
            (!dropped.is_empty()).then(|| {
                format!(
                    "the ```autodev block sets {}, which this server does not let issues choose (allowed_overrides); not used",
                    dropped.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        DEFAULT_OVERRIDES.iter().map(|s| (*s).to_owned()).collect()
    }

    fn policy<'a>(allowed: &'a [String], limits: &'a Limits) -> ServerPolicy<'a> {
        ServerPolicy {
            allowed_overrides: allowed,
            limits,
            default_timeout: Duration::from_secs(3600),
            gates: GateCommands {
                lint: Some("server-lint".into()),
                typecheck: None,
            },
        }
    }

    const FILE: &str = "\
target_dir: svc
acceptance:
  lint: true
  tests: [make test]
gates:
  lint: make lint
timeout: 12h
max_rounds: 4
model: opus-max
roles:
  frontend:
    target_dir: web
    acceptance: {tests: [npm test]}
";

    #[test]
    fn the_repository_file_layers_over_the_server_and_under_the_spec() {
        let file = parse_repo_file(".github/autodev.yml", FILE).unwrap();
        let (allowed, limits) = (allowed(), Limits::default());
        let r = resolve(
            &policy(&allowed, &limits),
            "backend",
            &TaskOptions::default(),
            Some(&file),
            &TaskOptions::default(),
            SpecSource::Operator,
        );
        assert_eq!(r.target_dir, "svc");
        assert_eq!(r.acceptance.tests, ["make test"]);
        assert_eq!(r.gates.lint.as_deref(), Some("make lint"));
        assert_eq!(r.max_rounds, 4);
        assert_eq!(r.timeout, Duration::from_secs(6 * 3600), "capped");
        assert_eq!(
            r.model, None,
            "model is not a repository's to choose by default"
        );
        assert!(
            r.notes.iter().any(|n| n.contains("`model`")),
            "{:?}",
            r.notes
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("capped at this server's limit of 6h")),
            "{:?}",
            r.notes
        );

        let front = resolve(
            &policy(&allowed, &limits),
            "frontend",
            &TaskOptions::default(),
            Some(&file),
            &TaskOptions::default(),
            SpecSource::Operator,
        );
        assert_eq!(front.target_dir, "web");
        assert_eq!(front.acceptance.tests, ["npm test"]);

        let spec = TaskOptions {
            max_rounds: Some(2),
            ..Default::default()
        };
        let r = resolve(
            &policy(&allowed, &limits),
            "backend",
            &TaskOptions::default(),
            Some(&file),
            &spec,
            SpecSource::Operator,
        );
        assert_eq!(r.max_rounds, 2, "the spec wins");
        let paid = TaskOptions {
            model: Some("opus".into()),
            ..Default::default()
        };
        let p = policy(&allowed, &limits);
        let none_role = TaskOptions::default();
        let r = resolve(&p, "backend", &none_role, None, &paid, SpecSource::Issue);
        assert_eq!(
            r.model, None,
            "an issue's stored block meets today's allowed_overrides"
        );
        assert!(
            r.notes.iter().any(|n| n.contains("`model`")),
            "{:?}",
            r.notes
        );
        let r = resolve(&p, "backend", &none_role, None, &paid, SpecSource::Operator);
        assert_eq!(r.model.as_deref(), Some("opus"));

        let none: Vec<String> = Vec::new();
        let r = resolve(
            &policy(&none, &limits),
            "backend",
            &TaskOptions::default(),
            Some(&file),
            &TaskOptions::default(),
            SpecSource::Operator,
        );
        assert_eq!(
            r.acceptance,
            Acceptance::default(),
            "nothing allowed, nothing used"
        );
        assert_eq!(r.gates.lint.as_deref(), Some("server-lint"));
        assert_eq!(r.target_dir, ".");
    }

    #[test]
    fn repository_files_are_checked() {
        let e = parse_repo_file("f.yml", "base_branch: x\n").unwrap_err();
        assert!(e.contains("read from the base branch"), "{e}");
        let e = parse_repo_file("f.yml", "acceptence: {}\n").unwrap_err();
        assert!(e.contains("did you mean `acceptance`"), "{e}");
        let e = parse_repo_file("f.yml", "gates: {test: x}\n").unwrap_err();
        assert!(e.contains("`gates.test` is not a gate"), "{e}");
        let e = parse_repo_file("f.yml", "roles:\n  web:\n    target_dir: ../x\n").unwrap_err();
        assert!(e.contains("roles.web.target_dir"), "{e}");
        let e = parse_repo_file("f.yml", "timeout: [\n").unwrap_err();
        assert!(e.contains("YAML syntax error"), "{e}");
        assert_eq!(
            parse_repo_file("f.yml", "").unwrap().all,
            RepoSection::default()
        );
    }

    #[test]
    fn an_outsiders_block_is_dropped_and_a_writers_is_limited() {
        let asked = TaskOptions {
            acceptance: Some(Acceptance {
                tests: vec!["touch /tmp/pwned".into()],
                ..Default::default()
            }),
            base_branch: Some("other".into()),
            model: Some("expensive".into()),
            ..Default::default()
        };
        let mut options = asked.clone();
        let notice = filter_block(
            &mut options,
            &BlockAuthor::Outsider {
                login: "mallory".into(),
            },
            &allowed(),
        )
        .unwrap();
        assert_eq!(options, TaskOptions::default());
        assert!(
            notice.contains("@mallory does not have write permission"),
            "{notice}"
        );

        let mut options = asked.clone();
        let notice = filter_block(&mut options, &BlockAuthor::Writer, &allowed()).unwrap();
        assert_eq!(options.base_branch.as_deref(), Some("other"));
        assert!(options.acceptance.is_some());
        assert_eq!(options.model, None);
        assert!(notice.contains("`model`"), "{notice}");
        let mut nothing = TaskOptions::default();
        assert_eq!(
            filter_block(
                &mut nothing,
                &BlockAuthor::Outsider { login: "x".into() },
                &allowed()
            ),
            None
        );
    }
}
