//! Domain events: what autodev acts on, with typed ids, whatever the payload looked like.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::ids::RepoName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstallationId(pub i64);

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A repository as a webhook names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    pub owner: String,
    pub name: String,
    pub clone_url: String,
    pub default_branch: String,
}

impl Repo {
    pub fn repo_name(&self) -> RepoName {
        RepoName::github(&self.owner, &self.name)
    }
}

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub login: String,
    pub is_bot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    pub body: String,
    pub labels: Vec<String>,
    /// Comments on pull requests arrive as issue comments.
    pub is_pull_request: bool,
    /// Who opened the issue (its block counts only if they may write).
    #[serde(default)]
    pub author: Option<Actor>,
}

impl Issue {
    /// The role of the first `autodev:<role>` label.
    pub fn autodev_role(&self) -> Option<&str> {
        self.labels.iter().find_map(|l| role_from_label(l))
    }
}

/// `autodev:backend` → `backend`.
pub fn role_from_label(label: &str) -> Option<&str> {
    label
        .strip_prefix("autodev:")
        .map(str::trim)
        .filter(|r| !r.is_empty())
}

/// Events autodev acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Ping,
    IssueLabeled {
        installation: InstallationId,
        repo: Repo,
        issue: Issue,
        label: String,
        sender: Actor,
    },
    IssueOpened {
        installation: InstallationId,
        repo: Repo,
        issue: Issue,
        sender: Actor,
    },
    CommentCreated {
        installation: InstallationId,
        repo: Repo,
        issue: Issue,
        comment_id: u64,
        body: String,
        author: Actor,
    },
    CheckRunRerequested {
        installation: InstallationId,
        repo: Repo,
        check_run_id: u64,
        name: String,
        external_id: Option<String>,
        head_sha: String,
        sender: Actor,
    },
    CheckRunRequestedAction {
        installation: InstallationId,
        repo: Repo,
        check_run_id: u64,
        name: String,
        external_id: Option<String>,
        identifier: String,
        sender: Actor,
    },
    Installation {
        installation: InstallationId,
        account: String,
        action: String,
        /// `owner/name` of the repositories in the payload.
        repos: Vec<String>,
    },
    InstallationRepositories {
        installation: InstallationId,
        account: String,
        added: Vec<String>,
        removed: Vec<String>,
    },
}

impl Event {
    pub fn installation(&self) -> Option<InstallationId> {
        match self {
            Event::Ping => None,
            Event::IssueLabeled { installation, .. }
            | Event::IssueOpened { installation, .. }
            | Event::CommentCreated { installation, .. }
            | Event::CheckRunRerequested { installation, .. }
            | Event::CheckRunRequestedAction { installation, .. }
            | Event::Installation { installation, .. }
            | Event::InstallationRepositories { installation, .. } => Some(*installation),
        }
    }

    pub fn repo(&self) -> Option<&Repo> {
        match self {
            Event::Ping | Event::Installation { .. } | Event::InstallationRepositories { .. } => {
                None
            }
            Event::IssueLabeled { repo, .. }
            | Event::IssueOpened { repo, .. }
            | Event::CommentCreated { repo, .. }
            | Event::CheckRunRerequested { repo, .. }
            | Event::CheckRunRequestedAction { repo, .. } => Some(repo),
        }
    }
}
