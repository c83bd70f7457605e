//! Webhook deliveries: signature verification and payload parsing into [`Event`]s. The only
//! place that reads GitHub's JSON.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::event::{Actor, Event, InstallationId, Issue, Repo};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header (the SHA-1 X-Hub-Signature alone is not accepted)")]
    Missing,
    #[error("X-Hub-Signature-256 is not `sha256=<hex>`")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body and GITHUB_WEBHOOK_SECRET")]
    Mismatch,
}

/// Checks `sha256=<hex HMAC-SHA256 of body>` in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    let sig = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| SignatureError::Mismatch)
}

/// The signature header value for `body`, as GitHub computes it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// What a delivery means to autodev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Event(Box<Event>),
    /// Nothing to do, and why.
    Ignored(String),
}

#[derive(Debug, thiserror::Error)]
#[error("malformed `{event}` payload: {source}")]
pub struct ParseError {
    event: String,
    source: serde_json::Error,
}

/// The events [`parse`] may act on (by name; their actions decide the rest).
const ACTED_ON: [&str; 6] = [
    "ping",
    "installation",
    "installation_repositories",
    "issues",
    "issue_comment",
    "check_run",
];

/// The action of a body that starts `{"action": "<word>"`, as GitHub writes every payload
/// that has one, read without going through the rest of the body (it is signed: its sender
/// had the secret); `None` for any other start.
fn leading_action(body: &[u8]) -> Option<&str> {
    let rest = body.trim_ascii_start().strip_prefix(b"{")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"action\"")?;
    let rest = rest.trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let word = &rest[..end];
    word.iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .then(|| std::str::from_utf8(word).ok())
        .flatten()
}

/// What an event autodev does not act on is read for.
#[derive(Deserialize)]
struct Head {
    action: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    action: Option<String>,
    installation: Option<PInstallation>,
    repository: Option<PRepo>,
    sender: Option<PUser>,
    issue: Option<PIssue>,
    label: Option<PLabel>,
    comment: Option<PComment>,
    check_run: Option<PCheckRun>,
    requested_action: Option<PRequestedAction>,
    repositories: Option<Vec<PRepoShort>>,
    repositories_added: Option<Vec<PRepoShort>>,
    repositories_removed: Option<Vec<PRepoShort>>,
}

#[derive(Deserialize)]
struct PInstallation {
    id: i64,
    account: Option<PUser>,
}

#[derive(Deserialize)]
struct PRepo {
    name: String,
    owner: PUser,
    clone_url: String,
    default_branch: Option<String>,
}

#[derive(Deserialize)]
struct PUser {
    login: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct PIssue {
    number: u64,
    title: String,
    body: Option<String>,
    #[serde(default)]
    labels: Vec<PLabel>,
    pull_request: Option<serde_json::Value>,
    user: Option<PUser>,
}

#[derive(Deserialize)]
struct PLabel {
    name: String,
}

#[derive(Deserialize)]
struct PComment {
    id: u64,
    body: Option<String>,
    user: PUser,
}

#[derive(Deserialize)]
struct PCheckRun {
    id: u64,
    name: String,
    external_id: Option<String>,
    head_sha: String,
}

#[derive(Deserialize)]
struct PRequestedAction {
    identifier: String,
}

#[derive(Deserialize)]
struct PRepoShort {
    full_name: String,
}

impl From<PUser> for Actor {
    fn from(u: PUser) -> Self {
        Actor {
            is_bot: u.kind.as_deref() == Some("Bot") || u.login.ends_with("[bot]"),
            login: u.login,
        }
    }
}

impl From<PRepo> for Repo {
    fn from(r: PRepo) -> Self {
        Repo {
            owner: r.owner.login,
            name: r.name,
            clone_url: r.clone_url,
            default_branch: r.default_branch.unwrap_or_default(),
        }
    }
}

impl From<PIssue> for Issue {
    fn from(i: PIssue) -> Self {
        Issue {
            number: i.number,
            title: i.title,
            body: i.body.unwrap_or_default(),
            labels: i.labels.into_iter().map(|l| l.name).collect(),
            is_pull_request: i.pull_request.is_some(),
            author: i.user.map(Actor::from),
        }
    }
}

/// Parses a delivery of `event` (the `X-GitHub-Event` header).
pub fn parse(event: &str, body: &[u8]) -> Result<Parsed, ParseError> {
    let malformed = |source| ParseError {
        event: event.to_owned(),
        source,
    };
    // An event autodev never acts on is read for its action only (its name is in the answer),
    // not into every field: most of what GitHub sends an App is such events.
    if !ACTED_ON.contains(&event) {
        let action = match leading_action(body) {
            Some(action) => action.to_owned(),
            None => {
                let head: Head = serde_json::from_slice(body).map_err(malformed)?;
                head.action.unwrap_or_default()
            }
        };
        return Ok(Parsed::Ignored(format!(
            "autodev does not act on `{event}.{action}`"
        )));
    }
    let p: Payload = serde_json::from_slice(body).map_err(malformed)?;
    let action = p.action.clone().unwrap_or_default();
    let ignored = |why: String| Ok(Parsed::Ignored(why));
    let missing = |what: &str| {
        Ok(Parsed::Ignored(format!(
            "`{event}.{action}` without `{what}`: not a delivery to a GitHub App"
        )))
    };
    let parsed = match (event, action.as_str()) {
        ("ping", _) => Event::Ping,
        ("installation", _) => {
            let Some(inst) = p.installation else {
                return missing("installation");
            };
            Event::Installation {
                installation: InstallationId(inst.id),
                account: inst.account.map(|a| a.login).unwrap_or_default(),
                action: action.clone(),
                repos: p
                    .repositories
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| r.full_name)
                    .collect(),
            }
        }
        ("installation_repositories", _) => {
            let Some(inst) = p.installation else {
                return missing("installation");
            };
            Event::InstallationRepositories {
                installation: InstallationId(inst.id),
                account: inst.account.map(|a| a.login).unwrap_or_default(),
                added: p
                    .repositories_added
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| r.full_name)
                    .collect(),
                removed: p
                    .repositories_removed
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| r.full_name)
                    .collect(),
            }
        }
        ("issues", "labeled" | "opened")
        | ("issue_comment", "created")
        | ("check_run", "rerequested" | "requested_action") => {
            let Some(inst) = p.installation else {
                return missing("installation");
            };
            let Some(repo) = p.repository else {
                return missing("repository");
            };
            let Some(sender) = p.sender else {
                return missing("sender");
            };
            let installation = InstallationId(inst.id);
            let repo = Repo::from(repo);
            match (event, action.as_str()) {
                ("issues", "labeled") => {
                    let (Some(issue), Some(label)) = (p.issue, p.label) else {
                        return missing("issue");
                    };
                    if super::event::role_from_label(&label.name).is_none() {
                        return ignored(format!(
                            "label `{}` is not an autodev:<role> label",
                            label.name
                        ));
                    }
                    Event::IssueLabeled {
                        installation,
                        repo,
                        issue: issue.into(),
                        label: label.name,
                        sender: sender.into(),
                    }
                }
                ("issues", _) => {
                    let Some(issue) = p.issue else {
                        return missing("issue");
                    };
                    let issue = Issue::from(issue);
                    if issue.autodev_role().is_none() {
                        return ignored("opened without an autodev:<role> label".into());
                    }
                    Event::IssueOpened {
                        installation,
                        repo,
                        issue,
                        sender: sender.into(),
                    }
                }
                ("issue_comment", _) => {
                    let (Some(issue), Some(comment)) = (p.issue, p.comment) else {
                        return missing("comment");
                    };
                    let body = comment.body.unwrap_or_default();
                    if !body.contains("/autodev") {
                        return ignored("comment holds no /autodev command".into());
                    }
                    Event::CommentCreated {
                        installation,
                        repo,
                        issue: issue.into(),
                        comment_id: comment.id,
                        body,
                        author: comment.user.into(),
                    }
                }
                (_, "rerequested") => {
                    let Some(run) = p.check_run else {
                        return missing("check_run");
                    };
                    if !run.name.starts_with("autodev/") {
                        return ignored(format!("check run `{}` is not autodev's", run.name));
                    }
                    Event::CheckRunRerequested {
                        installation,
                        repo,
                        check_run_id: run.id,
                        name: run.name,
                        external_id: run.external_id.filter(|e| !e.is_empty()),
                        head_sha: run.head_sha,
                        sender: sender.into(),
                    }
                }
                _ => {
                    let (Some(run), Some(req)) = (p.check_run, p.requested_action) else {
                        return missing("requested_action");
                    };
                    if !run.name.starts_with("autodev/") {
                        return ignored(format!("check run `{}` is not autodev's", run.name));
                    }
                    Event::CheckRunRequestedAction {
                        installation,
                        repo,
                        check_run_id: run.id,
                        name: run.name,
                        external_id: run.external_id.filter(|e| !e.is_empty()),
                        identifier: req.identifier,
                        sender: sender.into(),
                    }
                }
            }
        }
        _ => return ignored(format!("autodev does not act on `{event}.{action}`")),
    };
    Ok(Parsed::Event(Box::new(parsed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn githubs_own_test_vector() {
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(secret, body), expected);
        assert_eq!(verify_signature(secret, body, Some(expected)), Ok(()));
        assert_eq!(
            verify_signature(secret, b"Hello, World?", Some(expected)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(secret, body, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(
                secret,
                body,
                Some("sha1=757107ea0eb2509fc211221cce984b8a37570b6d")
            ),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(secret, body, Some("sha256=zz")),
            Err(SignatureError::Malformed)
        );
    }

    /// The action read from a body's start is the one its JSON holds, for every example
    /// payload and for starts it must not read (escapes, other first keys, other types).
    #[test]
    fn the_leading_action_is_the_payloads_action() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks");
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let body = std::fs::read(entry.unwrap().path()).unwrap();
            let Ok(head) = serde_json::from_slice::<Head>(&body) else {
                continue;
            };
            if let Some(action) = leading_action(&body) {
                assert_eq!(Some(action), head.action.as_deref());
                read += 1;
            }
        }
        assert!(
            read > 10,
            "the examples' actions are read from their start ({read})"
        );
        for (body, want) in [
            (
                &b" {\n  \"action\" : \"created\", \"x\": 1}"[..],
                Some("created"),
            ),
            (b"{\"action\": \"cre\\u0061ted\"}", None),
            (b"{\"zen\": \"x\", \"action\": \"created\"}", None),
            (b"{\"action\": null}", None),
            (b"{\"action\": \"a b\"}", None),
            (b"{\"action\": \"unterminated", None),
            (b"[\"action\"]", None),
        ] {
            assert_eq!(
                leading_action(body),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn malformed_json_is_an_error_and_unknown_events_are_ignored() {
        assert!(parse("issues", b"{not json").is_err());
        assert!(
            parse("star", b"{not json").is_err(),
            "read for its action, still JSON"
        );
        assert_eq!(
            parse(
                "star",
                b"{\"action\": \"created\", \"sender\": {\"x\": [1]}}"
            )
            .unwrap(),
            Parsed::Ignored("autodev does not act on `star.created`".into())
        );
        assert_eq!(
            parse("issues", b"{\"action\": \"closed\"}").unwrap(),
            Parsed::Ignored("autodev does not act on `issues.closed`".into()),
            "an event it acts on, with an action it does not"
        );
        assert!(matches!(
            parse("star", b"{\"action\": \"created\"}").unwrap(),
            Parsed::Ignored(_)
        ));
        assert!(
            matches!(parse("issues", b"{\"action\": \"labeled\"}").unwrap(), Parsed::Ignored(w) if w.contains("installation"))
        );
    }
}
