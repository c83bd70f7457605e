//! The GitHub REST API as autodev calls it: one method per call, with typed requests and
//! answers, over [`GithubClient::call`] (which keeps GitHub's retry advice). No URL or JSON
//! field of GitHub's is built or read outside this module. Owns no policy: what to post, and
//! when, is the outbox's and the handler's. Never imports the store or the engine.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{ApiError, GithubClient, Identity, Method};
use super::event::InstallationId;

/// The largest page GitHub serves, and how many pages a listing reads at most.
pub const PAGE: usize = 100;
pub const MAX_PAGES: usize = 10;

/// `owner/name` of a repository.
#[derive(Debug, Clone, Copy)]
pub struct RepoPath<'a> {
    pub owner: &'a str,
    pub name: &'a str,
}

impl std::fmt::Display for RepoPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// An account as GitHub shows it on comments and pull requests.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct User {
    #[serde(default)]
    pub login: String,
    /// `User`, `Bot` or `Organization`.
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl User {
    pub fn is_bot(&self) -> bool {
        self.kind == "Bot" || self.login.ends_with("[bot]")
    }
}

/// A comment on an issue or pull request.
#[derive(Debug, Clone, Deserialize)]
pub struct Comment {
    pub id: u64,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub body: Option<String>,
}

/// A review comment on a pull request's diff.
#[derive(Debug, Clone, Deserialize)]
pub struct ReviewComment {
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub line: Option<u64>,
}

/// A pull request, as far as autodev reads one.
#[derive(Debug, Clone, Deserialize)]
pub struct PullRequest {
    pub number: i64,
    /// `open` or `closed`.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub user: Option<User>,
    pub head: PullHead,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PullHead {
    #[serde(rename = "ref")]
    pub branch: String,
}

/// A pull request to open.
#[derive(Debug, Clone, Serialize)]
pub struct NewPullRequest<'a> {
    pub title: &'a str,
    pub head: &'a str,
    pub base: &'a str,
    pub body: &'a str,
    pub draft: bool,
}

/// A check run's fields autodev reads back.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckRunRef {
    pub id: u64,
    #[serde(default)]
    pub external_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct CheckRunList {
    #[serde(default)]
    check_runs: Vec<CheckRunRef>,
}

/// Where a check run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    InProgress,
    Completed,
}

/// A check run's output panel.
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutput {
    pub title: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A button on a check run.
#[derive(Debug, Clone, Serialize)]
pub struct CheckAction {
    pub label: String,
    pub description: String,
    pub identifier: String,
}

/// A check run to create, or the new state of one.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRun {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_sha: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub status: CheckStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub output: CheckOutput,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<CheckAction>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Created {
    id: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct InstallationRepos {
    #[serde(default)]
    repositories: Vec<FullName>,
}

#[derive(Debug, Clone, Deserialize)]
struct FullName {
    full_name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct PermissionAnswer {
    #[serde(default)]
    permission: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct App {
    #[serde(default)]
    slug: Option<String>,
}

/// An answer that does not have the shape GitHub documents.
fn shape(method: Method, path: &str, e: serde_json::Error) -> ApiError {
    ApiError::Transport {
        method: method.name(),
        path: path.to_owned(),
        message: format!("unexpected answer: {e}"),
    }
}

fn to_value<T: Serialize>(body: &T) -> Value {
    serde_json::to_value(body).expect("request bodies serialize")
}

impl GithubClient {
    async fn get<T: for<'de> Deserialize<'de>>(
        &self,
        who: Identity,
        path: &str,
    ) -> Result<T, ApiError> {
        let answer = self.call(who, Method::Get, path, None).await?;
        serde_json::from_value(answer).map_err(|e| shape(Method::Get, path, e))
    }

    /// The App's own slug (`GET /app`, with the App's token).
    pub(super) async fn app_slug(&self) -> Result<String, ApiError> {
        let path = "/app";
        let answer = self.call_as_app(Method::Get, path).await?;
        let app: App = serde_json::from_value(answer).map_err(|e| shape(Method::Get, path, e))?;
        app.slug
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::Transport {
                method: "GET",
                path: path.into(),
                message: "GitHub's answer names no App slug".into(),
            })
    }

    /// `login`'s permission on the repository as GitHub names it (`None`: not a collaborator).
    pub(super) async fn collaborator_permission(
        &self,
        inst: InstallationId,
        repo: RepoPath<'_>,
        login: &str,
    ) -> Result<Option<String>, ApiError> {
        let path = format!("/repos/{repo}/collaborators/{login}/permission");
        match self.get::<PermissionAnswer>(inst.into(), &path).await {
            Ok(a) => Ok(Some(a.permission.unwrap_or_else(|| "none".into()))),
            Err(ApiError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The repositories the installation covers, as `owner/name`.
    pub async fn installation_repositories(
        &self,
        inst: InstallationId,
    ) -> Result<Vec<String>, ApiError> {
        let mut names = Vec::new();
        for page in 1..=MAX_PAGES {
            let answer: InstallationRepos = self
                .get(
                    inst.into(),
                    &format!("/installation/repositories?per_page={PAGE}&page={page}"),
                )
                .await?;
            let n = answer.repositories.len();
            names.extend(answer.repositories.into_iter().map(|r| r.full_name));
            if n < PAGE {
                break;
            }
        }
        Ok(names)
    }

    pub async fn add_reaction(
        &self,
        inst: InstallationId,
        repo: RepoPath<'_>,
        issue: u64,
        content: &str,
    ) -> Result<(), ApiError> {
        let path = format!("/repos/{repo}/issues/{issue}/reactions");
        let body = serde_json::json!({ "content": content });
        self.call(inst, Method::Post, &path, Some(&body)).await?;
        Ok(())
    }

    /// One page (from 1) of the issue's comments, oldest first; a page holds [`PAGE`].
    pub async fn issue_comments_page(
        &self,
        inst: InstallationId,
        repo: RepoPath<'_>,
        issue: u64,
        page: usize,
    ) -> Result<Vec<Comment>, ApiError> {
        self.get(
            inst.into(),
            &format!("/repos/{repo}/issues/{issue}/comments?per_page={PAGE}&page={page}"),
        )
        .await
    }

    /// Posts a comment; its id.
    pub async fn create_comment(
        &self,
        inst: InstallationId,
        repo: RepoPath<'_>,
        issue: u64,
        body: &str,
    ) -> Result<u64, ApiError> {
        let path = format!("/repos/{repo}/issues/{issue}/comments");
        let answer = self
            .call(
                inst,
                Method::Post,
                &path,
                Some(&serde_json::json!({ "body": body })),
            )
            .await?;
        let created: Created =
            serde_json::from_value(answer).map_err(|e| shape(Method::Post, &path, e))?;
        Ok(created.id)
    }

    pub async fn update_comment(
        &self,
        inst: InstallationId,
        repo: RepoPath<'_>,
        id: u64,
        body: &str,
    ) -> Result<(), ApiError> {
        let path = format!("/repos/{repo}/issues/comments/{id}");
        self.call(
            inst,
            Method::Patch,
            &path,
            Some(&serde_json::json!({ "body": body })),
        )
        .await?;
        Ok(())
    }

    /// The check runs named `name` on `sha`.
    pub async fn check_runs(
        &self,
        inst: InstallationId,
        repo: RepoPath<'_>,
        sha: &str,
        name: &str,
    ) -> Result<Vec<CheckRunRef>, ApiError> {
        let path =
            format!("/repos/{repo}/commits/{sha}/check-runs?check_name={name}&per_page={PAGE}");
        let list: CheckRunList = self.get(inst.into(), &path).await?;
        Ok(list.check_runs)
    }

    /// Creates a check run; its id.
    pub async fn create_check_run(
        &self,
        inst: InstallationId,
        repo: RepoPath<'_>,
        run: &CheckRun,
    ) -> Result<u64, ApiError> {
        let path = format!("/repos/{repo}/check-runs");
        let answer = self
            .call(inst, Method::Post, &path, Some(&to_value(run)))
            .await?;
        let created: Created =
            serde_json::from_value(answer).map_err(|e| shape(Method::Post, &path, e))?;
        Ok(created.id)
    }

    pub async fn update_check_run(
        &self,
        inst: InstallationId,
        repo: RepoPath<'_>,
        id: u64,
        run: &CheckRun,
    ) -> Result<(), ApiError> {
        let path = format!("/repos/{repo}/check-runs/{id}");
        self.call(inst, Method::Patch, &path, Some(&to_value(run)))
            .await?;
        Ok(())
    }

    pub async fn pull_request(
        &self,
        who: Identity,
        repo: RepoPath<'_>,
        number: i64,
    ) -> Result<PullRequest, ApiError> {
        self.get(who, &format!("/repos/{repo}/pulls/{number}"))
            .await
    }

    /// The open pull request from `branch` of the repository itself, if there is one.
    pub async fn open_pull_from(
        &self,
        who: Identity,
        repo: RepoPath<'_>,
        branch: &str,
    ) -> Result<Option<PullRequest>, ApiError> {
        let path = format!(
            "/repos/{repo}/pulls?state=open&head={}:{branch}&per_page={PAGE}",
            repo.owner
        );
        let open: Vec<PullRequest> = self.get(who, &path).await?;
        Ok(open.into_iter().find(|p| p.head.branch == branch))
    }

    pub async fn create_pull_request(
        &self,
        who: Identity,
        repo: RepoPath<'_>,
        pull: &NewPullRequest<'_>,
    ) -> Result<PullRequest, ApiError> {
        let path = format!("/repos/{repo}/pulls");
        let answer = self
            .call(who, Method::Post, &path, Some(&to_value(pull)))
            .await?;
        serde_json::from_value(answer).map_err(|e| shape(Method::Post, &path, e))
    }

    pub async fn request_reviewers(
        &self,
        who: Identity,
        repo: RepoPath<'_>,
        number: i64,
        users: &[String],
        teams: &[String],
    ) -> Result<(), ApiError> {
        let path = format!("/repos/{repo}/pulls/{number}/requested_reviewers");
        let body = serde_json::json!({ "reviewers": users, "team_reviewers": teams });
        self.call(who, Method::Post, &path, Some(&body)).await?;
        Ok(())
    }

    /// The pull request's review comments (the first hundred).
    pub async fn review_comments(
        &self,
        inst: InstallationId,
        repo: RepoPath<'_>,
        number: u64,
    ) -> Result<Vec<ReviewComment>, ApiError> {
        self.get(
            inst.into(),
            &format!("/repos/{repo}/pulls/{number}/comments?per_page={PAGE}"),
        )
        .await
    }
}
