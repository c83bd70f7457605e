//! Typed identifiers: a task id as users write it, and the database key of a task row.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A task id as written in a spec (`TSK-1234`, `issue-42`). It is a valid git ref component,
/// because it becomes the last part of the task's branch name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TaskId(String);

/// Why a string is not a valid task id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "task id `{id}` is not valid: {reason} (allowed: letters, digits, `.`, `_`, `-`; no leading `.` or `-`, no trailing `.`, no `..`, no `.lock` ending; at most 100 characters)"
)]
pub struct InvalidTaskId {
    pub id: String,
    pub reason: &'static str,
}

impl TaskId {
    pub const MAX_LEN: usize = 100;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn check(id: &str) -> Result<(), &'static str> {
        if id.is_empty() {
            return Err("it is empty");
        }
        if id.len() > Self::MAX_LEN {
            return Err("it is longer than 100 characters");
        }
        if let Some(c) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(if c.is_whitespace() {
                "it contains whitespace"
            } else {
                "it contains a character git does not allow in a branch name"
            });
        }
        if id.starts_with('.') || id.starts_with('-') {
            return Err("it starts with `.` or `-`");
        }
        if id.ends_with('.') {
            return Err("it ends with `.`");
        }
        if id.contains("..") {
            return Err("it contains `..`");
        }
        if id.ends_with(".lock") {
            return Err("it ends with `.lock`");
        }
        Ok(())
    }
}

impl FromStr for TaskId {
    type Err = InvalidTaskId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::check(s).map_err(|reason| InvalidTaskId {
            id: s.to_owned(),
            reason,
        })?;
        Ok(Self(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The database key of a task row. Task ids are unique only within a repository; this key is
/// unique everywhere and is what queue jobs carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct TaskKey(pub i64);

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a task's repository lives: `local` for local mode, `owner/name` (lower-cased) for
/// GitHub repositories.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RepoName(String);

impl RepoName {
    pub fn local() -> Self {
        Self("local".to_owned())
    }

    pub fn github(owner: &str, name: &str) -> Self {
        Self(format!("{}/{}", owner.to_lowercase(), name.to_lowercase()))
    }

    pub fn from_db(s: String) -> Self {
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_local(&self) -> bool {
        self.0 == "local"
    }

    /// A name safe to use as one directory component.
    pub fn dir_name(&self) -> String {
        self.0.replace('/', "__")
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_rules() {
        for ok in ["TSK-1234", "issue-42", "a", "a.b_c-d", "x.lockx"] {
            assert!(ok.parse::<TaskId>().is_ok(), "{ok} should be valid");
        }
        let long = "a".repeat(101);
        for bad in [
            "", ".a", "-a", "a.", "a..b", "a.lock", "a b", "a/b", "a:b", "a~b", "é", &long,
        ] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad} should be invalid");
        }
        assert!("a".repeat(100).parse::<TaskId>().is_ok());
    }
}
