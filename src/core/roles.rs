//! Roles: the built-in `backend`, `frontend`, `data` and `ml`, the role files shipped in
//! `roles/` (compiled into the binary, so they are there wherever autodev runs), plus custom
//! roles read at start-up from the configuration's `roles_dir`. A role gives the agent its standing instructions and names the
//! task branch and reviewers.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::core::ids::TaskId;

/// Where a role came from, shown by `autodev roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum RoleSource {
    BuiltIn,
    File(PathBuf),
}

impl fmt::Display for RoleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoleSource::BuiltIn => f.write_str("built-in"),
            RoleSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub branch_prefix: Option<String>,
    pub reviewers: Vec<String>,
    pub prompt: String,
    /// Settings for this role's tasks (`acceptance`, `timeout`, ...), under the repository's
    /// `.github/autodev.yml` and the spec.
    pub defaults: crate::core::spec::TaskOptions,
    pub source: RoleSource,
}

impl Role {
    /// The task branch: `auto/<role>/<task_id>`, or `<branch_prefix>/<task_id>` for a role that
    /// sets a prefix.
    pub fn branch_for(&self, task: &TaskId) -> String {
        match &self.branch_prefix {
            Some(prefix) => format!("{prefix}/{task}"),
            None => format!("auto/{}/{task}", self.name),
        }
    }
}

/// The YAML shape of a role file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    branch_prefix: Option<String>,
    #[serde(default)]
    reviewers: Vec<String>,
    prompt: String,
    /// Task settings: `target_dir`, `acceptance`, `timeout`, `max_rounds`, `model`,
    /// `provider_override`.
    #[serde(default)]
    defaults: Option<serde_json::Value>,
}

const BUILT_IN: &[(&str, &str, &str)] = &[
    (
        "backend",
        "Python web services: FastAPI, pytest, ruff, mypy",
        "You are a senior backend engineer working on a Python service.\n\
         Conventions: FastAPI for HTTP APIs with typed request and response models (pydantic); \
         business logic kept out of route handlers; pytest for tests, written next to the change; \
         code that passes `ruff check` and `mypy` with full type hints; no secrets or \
         environment-specific values in code. Keep changes small and focused on the task, \
         update or add tests for every behaviour you change, and leave the repository in a state \
         where the acceptance commands pass.",
    ),
    (
        "frontend",
        "Web front ends: React, Vite, TypeScript",
        "You are a senior frontend engineer working on a React application built with Vite and \
         TypeScript.\nConventions: function components and hooks; strict TypeScript with no `any` \
         unless unavoidable; components small and accessible (labels, roles, keyboard use); state \
         kept as local as possible; tests with Vitest and Testing Library for behaviour, not \
         implementation details. Keep changes focused on the task and make the acceptance \
         commands pass.",
    ),
    (
        "data",
        "Data pipelines: Polars over pandas, modular ETL, unit-tested",
        "You are a senior data engineer.\nConventions: Polars rather than pandas for new code \
         (lazy frames where data is large); ETL split into small, pure, separately testable \
         extract / transform / load functions; schemas and column types explicit; no hidden \
         global state or notebooks in the pipeline path; unit tests on small in-memory frames \
         for every transform. Keep changes focused on the task and make the acceptance commands \
         pass.",
    ),
    (
        "ml",
        "Machine learning: reproducible models, logged metrics",
        "You are a senior machine-learning engineer.\nConventions: every run reproducible (seeds \
         fixed and recorded, data versions and parameters in config, not code); training, \
         evaluation and inference separated; metrics logged in a machine-readable form next to \
         the model artefact; evaluation on a held-out split, never the training data; small \
         fixtures so tests run in seconds without downloads or a GPU. Keep changes focused on \
         the task and make the acceptance commands pass.",
    ),
];

/// All roles known to this process, by name.
#[derive(Debug, Clone)]
pub struct Roles {
    by_name: BTreeMap<String, Role>,
}

impl Roles {
    /// The built-in roles only.
    pub fn built_in() -> Self {
        let by_name = BUILT_IN
            .iter()
            .map(|(name, description, prompt)| {
                let role = Role {
                    name: (*name).to_owned(),
                    description: (*description).to_owned(),
                    branch_prefix: None,
                    reviewers: Vec::new(),
                    prompt: (*prompt).to_owned(),
                    defaults: Default::default(),
                    source: RoleSource::BuiltIn,
                };
                ((*name).to_owned(), role)
            })
            .collect::<BTreeMap<_, _>>();
        let mut roles = Self { by_name };
        for (file, text) in SHIPPED {
            let role = parse_role(text, Path::new(file), RoleSource::BuiltIn)
                .expect("the shipped role files are valid");
            roles.by_name.insert(role.name.clone(), role);
        }
        roles
    }

    /// The built-in roles plus every `*.yaml` / `*.yml` file in `dir` (when it exists). A file
    /// role with a built-in's name replaces it.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut roles = Self::built_in();
        let Some(dir) = dir else { return Ok(roles) };
        if !dir.is_dir() {
            return Ok(roles);
        }
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading roles directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        paths.sort();
        for path in paths {
            let role = load_role_file(&path)?;
            roles.by_name.insert(role.name.clone(), role);
        }
        Ok(roles)
    }

    pub fn get(&self, name: &str) -> Option<&Role> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.by_name.values()
    }
}

/// Role names become part of branch names and labels (`autodev:<role>`).
pub fn check_role_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 50
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "role name `{name}` must be 1 to 50 lower-case letters, digits, `_` or `-`"
        ))
    }
}

/// The role files shipped in the repository's `roles/`, compiled in.
const SHIPPED: &[(&str, &str)] = &[
    (
        "computational_biologist.yaml",
        include_str!("../../roles/computational_biologist.yaml"),
    ),
    (
        "data_analyst.yaml",
        include_str!("../../roles/data_analyst.yaml"),
    ),
    (
        "fund_manager.yaml",
        include_str!("../../roles/fund_manager.yaml"),
    ),
    ("sre.yaml", include_str!("../../roles/sre.yaml")),
];

fn load_role_file(path: &Path) -> anyhow::Result<Role> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_role(&text, path, RoleSource::File(path.to_owned()))
}

/// A role from the text of its file at `path` (named in errors; its stem is the role's name).
fn parse_role(text: &str, path: &Path, source: RoleSource) -> anyhow::Result<Role> {
    let file: RoleFile = serde_yaml::from_str(text)
        .with_context(|| format!("role file {} is not valid", path.display()))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if file.name != stem {
        bail!(
            "role file {}: `name: {}` must match the file name `{stem}`",
            path.display(),
            file.name
        );
    }
    check_role_name(&file.name)
        .map_err(|e| anyhow::anyhow!("role file {}: {e}", path.display()))?;
    if let Some(prefix) = &file.branch_prefix {
        let probe = format!("refs/heads/{prefix}/x");
        if prefix.ends_with('/') || !git2::Reference::is_valid_name(&probe) {
            bail!(
                "role file {}: `branch_prefix: {prefix}` is not a valid git branch prefix",
                path.display()
            );
        }
    }
    if file.prompt.trim().is_empty() {
        bail!("role file {}: `prompt` is empty", path.display());
    }
    let defaults = match file.defaults {
        None | Some(serde_json::Value::Null) => Default::default(),
        Some(serde_json::Value::Object(mut map)) => {
            if map.contains_key("base_branch") {
                bail!(
                    "role file {}: `defaults.base_branch` is not a role's to set",
                    path.display()
                );
            }
            let options = crate::core::spec::options_from_map(
                &mut map,
                "defaults.",
                &crate::core::spec::Limits::absolute(),
            )
            .map_err(|e| anyhow::anyhow!("role file {}: {e}", path.display()))?;
            if let Some(key) = map.keys().next() {
                bail!(
                    "role file {}: unknown key `defaults.{key}`; defaults takes target_dir, acceptance, timeout, max_rounds, model, provider_override",
                    path.display()
                );
            }
            options
        }
        Some(_) => bail!(
            "role file {}: `defaults` must be a mapping such as `timeout: 30m`",
            path.display()
        ),
    };
    Ok(Role {
        defaults,
        description: file.description.unwrap_or_default(),
        name: file.name,
        branch_prefix: file.branch_prefix,
        reviewers: file.reviewers,
        prompt: file.prompt,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roles_and_branches() {
        let roles = Roles::built_in();
        assert_eq!(
            roles.names(),
            [
                "backend",
                "computational_biologist",
                "data",
                "data_analyst",
                "frontend",
                "fund_manager",
                "ml",
                "sre"
            ]
        );
        let id: TaskId = "TSK-1".parse().unwrap();
        assert_eq!(
            roles.get("backend").unwrap().branch_for(&id),
            "auto/backend/TSK-1"
        );
    }

    #[test]
    fn file_role_name_must_match_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sre.yaml"), "name: ops\nprompt: hi\n").unwrap();
        let err = Roles::load(Some(dir.path())).unwrap_err().to_string();
        assert!(err.contains("must match the file name `sre`"), "{err}");
    }

    #[test]
    fn file_role_defaults_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sre.yaml");
        std::fs::write(
            &path,
            "name: sre\nprompt: p\ndefaults:\n  timeout: 20m\n  acceptance: {tests: [make check]}\n",
        )
        .unwrap();
        let roles = Roles::load(Some(dir.path())).unwrap();
        let d = &roles.get("sre").unwrap().defaults;
        assert_eq!(d.timeout, Some(std::time::Duration::from_secs(1200)));
        assert_eq!(d.acceptance.as_ref().unwrap().tests, ["make check"]);
        std::fs::write(&path, "name: sre\nprompt: p\ndefaults: {max_rounds: 0}\n").unwrap();
        let e = format!("{:#}", Roles::load(Some(dir.path())).unwrap_err());
        assert!(e.contains("defaults.max_rounds"), "{e}");
    }

    #[test]
    fn file_role_with_prefix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sre.yaml"),
            "name: sre\nbranch_prefix: ops/bot\nreviewers: [alice, '@org/sre']\nprompt: be careful\n",
        )
        .unwrap();
        let roles = Roles::load(Some(dir.path())).unwrap();
        let sre = roles.get("sre").unwrap();
        assert_eq!(sre.defaults, crate::core::spec::TaskOptions::default());
        assert_eq!(sre.branch_for(&"T-1".parse().unwrap()), "ops/bot/T-1");
        assert_eq!(sre.reviewers, ["alice", "@org/sre"]);
        assert!(matches!(sre.source, RoleSource::File(_)));
    }
}
