//! Acting on a stored delivery: check the repository is installed and the person may steer
//! autodev, then create or re-run the issue's task, cancel it, or answer. Runs in a worker,
//! never in the webhook request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::command::{self, Command};
use super::issue_spec;
use super::messages;
use super::outbox::Effect;
use crate::core::trust::BlockAuthor;
use crate::engine::Engine;
use crate::github::api::RepoPath;
use crate::github::client::{ApiError, GithubClient, Retry};
use crate::github::event::{Actor, Event, InstallationId, Issue, Repo};
use crate::jobs::{self, RunTask};
use crate::store::{self, TaskState};

/// How long after answering an outsider autodev stays silent to them on the same issue.
const OUTSIDER_REPLY_WINDOW: Duration = Duration::from_secs(3600);

/// Acts on delivery `id`. `Ok(Some(wait))` asks to be run again after `wait` (GitHub was
/// unavailable or rate-limited us).
pub async fn handle(engine: &Arc<Engine>, id: &str) -> anyhow::Result<Option<Duration>> {
    let Some(gh) = engine.github() else {
        return Ok(None);
    };
    let Some(payload) = store::delivery_payload(&engine.pool, id).await? else {
        return Ok(None);
    };
    let event: Event = serde_json::from_str(&payload).context("reading the stored event")?;
    let ctx = Ctx {
        engine,
        gh: &gh,
        delivery: id,
    };
    match ctx.dispatch(event).await {
        Ok(()) => Ok(None),
        Err(Failure::Api(e)) => match e.retry() {
            Retry::Never => {
                tracing::error!(delivery = id, "giving up on delivery: {e}");
                Ok(None)
            }
            Retry::After(d) => Ok(Some(d)),
            Retry::Backoff => Ok(Some(Duration::from_secs(10))),
        },
        Err(Failure::Other(e)) => Err(e),
    }
}

enum Failure {
    Api(ApiError),
    Other(anyhow::Error),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Whether the task is the one this label event's twin just made: same person, same role,
/// its first run, within the last minute.
fn is_paired_copy(task: &store::TaskRow, role: &str, sender: &Actor) -> bool {
    task.run_seq == 1
        && task.role == role
        && task.requested_by.as_deref() == Some(sender.login.as_str())
        && task.created_at > chrono::Utc::now() - chrono::Duration::seconds(60)
}

/// Whether to say so when the task is already queued or running.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Announce {
    Always,
    /// Not for the second copy of an issue opened with its label (same person, just now).
    UnlessPairedCopy,
    Never,
}

struct Ctx<'a> {
    engine: &'a Arc<Engine>,
    gh: &'a GithubClient,
    delivery: &'a str,
}

/// Where a reply goes.
struct Thread<'a> {
    inst: InstallationId,
    repo: &'a Repo,
    issue: u64,
}

impl Ctx<'_> {
    async fn dispatch(&self, event: Event) -> Result<(), Failure> {
        if let (Some(inst), Some(repo)) = (event.installation(), event.repo())
            && !self.installed(inst, repo).await?
        {
            let why = format!(
                "refused: {}/{} is not among the repositories installation {inst} covers",
                repo.owner, repo.name
            );
            tracing::warn!(delivery = self.delivery, "{why}");
            store::set_delivery_outcome(&self.engine.pool, self.delivery, &why).await?;
            return Ok(());
        }
        match event {
            Event::IssueLabeled {
                installation,
                repo,
                issue,
                label,
                sender,
            } => {
                let role = crate::github::event::role_from_label(&label)
                    .unwrap_or_default()
                    .to_owned();
                self.on_issue(
                    installation,
                    &repo,
                    &issue,
                    &role,
                    &sender,
                    Announce::UnlessPairedCopy,
                )
                .await
            }
            // An issue opened with the label also arrives as `labeled`; that copy speaks.
            Event::IssueOpened {
                installation,
                repo,
                issue,
                sender,
            } => {
                let role = issue.autodev_role().unwrap_or_default().to_owned();
                self.on_issue(installation, &repo, &issue, &role, &sender, Announce::Never)
                    .await
            }
            Event::CommentCreated {
                installation,
                repo,
                issue,
                comment_id,
                body,
                author,
            } => {
                self.on_comment(installation, &repo, &issue, comment_id, &body, &author)
                    .await
            }
            Event::CheckRunRerequested {
                installation,
                repo,
                external_id,
                sender,
                ..
            } => {
                self.on_rerun(installation, &repo, external_id.as_deref(), &sender)
                    .await
            }
            Event::CheckRunRequestedAction {
                installation,
                repo,
                external_id,
                identifier,
                sender,
                ..
            } => {
                self.on_action(
                    installation,
                    &repo,
                    external_id.as_deref(),
                    &identifier,
                    &sender,
                )
                .await
            }
            Event::Ping | Event::Installation { .. } | Event::InstallationRepositories { .. } => {
                Ok(())
            }
        }
    }

    /// Whether the installation covers the repository.
    async fn installed(&self, inst: InstallationId, repo: &Repo) -> Result<bool, Failure> {
        let full = format!("{}/{}", repo.owner, repo.name);
        // What autodev recorded may be partial (it saw only some installation events): a
        // repository not on the record is checked with GitHub before it is refused.
        if !store::repo_installed(&self.engine.pool, inst.0, &full).await? {
            let names = self.gh.installation_repositories(inst).await?;
            let owner = repo.owner.clone();
            self.engine
                .batcher
                .write(move |w| w.upsert_installation(inst.0, &owner, true, Some(&names)))
                .await?;
        }
        Ok(store::repo_installed(&self.engine.pool, inst.0, &full).await?)
    }

    async fn reply(&self, t: &Thread<'_>, key: &str, body: String) -> Result<(), Failure> {
        let effect = Effect::Reply {
            installation: t.inst.0,
            owner: t.repo.owner.clone(),
            repo: t.repo.name.clone(),
            issue: t.issue,
            key: format!("{}-{key}", self.delivery),
            body,
        };
        crate::jobs::push_now(&self.engine.pool, &crate::jobs::OutboxJob::new(effect)).await?;
        Ok(())
    }

    /// Whether `actor` may steer autodev here; refuses (once) if not.
    async fn allowed(&self, t: &Thread<'_>, actor: &Actor) -> Result<bool, Failure> {
        let p = self
            .gh
            .permission(t.inst, &t.repo.owner, &t.repo.name, &actor.login)
            .await?;
        if p.may_command() {
            return Ok(true);
        }
        // An outsider gets one answer per issue an hour, however often they ask.
        if store::claim_outsider_reply(
            &self.engine.pool,
            t.repo.repo_name().as_str(),
            t.issue as i64,
            &actor.login,
            OUTSIDER_REPLY_WINDOW,
        )
        .await?
        {
            self.reply(t, "refused", messages::refusal(&actor.login))
                .await?;
        }
        Ok(false)
    }

    /// Whose words an issue's ```autodev block is: asked of GitHub when the task is triggered,
    /// and only when there is a block.
    async fn block_author(&self, t: &Thread<'_>, issue: &Issue) -> Result<BlockAuthor, Failure> {
        if !issue_spec::has_block(issue) {
            return Ok(BlockAuthor::Writer);
        }
        let Some(author) = &issue.author else {
            return Ok(BlockAuthor::Outsider {
                login: "(unknown)".into(),
            });
        };
        let p = self
            .gh
            .permission(t.inst, &t.repo.owner, &t.repo.name, &author.login)
            .await?;
        Ok(
            if p.may_command() && (!author.is_bot || self.bot_allowed(&author.login)) {
                BlockAuthor::Writer
            } else {
                BlockAuthor::Outsider {
                    login: author.login.clone(),
                }
            },
        )
    }

    fn bot_allowed(&self, login: &str) -> bool {
        self.engine
            .settings
            .file
            .github
            .allowed_bots
            .iter()
            .any(|b| b.eq_ignore_ascii_case(login))
    }

    async fn on_issue(
        &self,
        inst: InstallationId,
        repo: &Repo,
        issue: &Issue,
        role: &str,
        sender: &Actor,
        announce: Announce,
    ) -> Result<(), Failure> {
        let t = Thread {
            inst,
            repo,
            issue: issue.number,
        };
        if !self.allowed(&t, sender).await? {
            return Ok(());
        }
        let effect = Effect::Reaction {
            installation: inst.0,
            owner: repo.owner.clone(),
            repo: repo.name.clone(),
            issue: issue.number,
            content: "eyes".into(),
        };
        crate::jobs::push_now(&self.engine.pool, &crate::jobs::OutboxJob::new(effect)).await?;
        self.start(&t, issue, role, sender, announce).await
    }

    /// Creates the issue's task, or re-runs it when it has ended; says so when it is active.
    async fn start(
        &self,
        t: &Thread<'_>,
        issue: &Issue,
        role: &str,
        sender: &Actor,
        announce: Announce,
    ) -> Result<(), Failure> {
        let engine = self.engine;
        let Some(role_def) = engine.roles.get(role) else {
            return self
                .reply(
                    t,
                    "role",
                    messages::unknown_role(role, &engine.roles.names()),
                )
                .await;
        };
        let rules = issue_spec::BlockRules {
            author: self.block_author(t, issue).await?,
            allowed_overrides: &engine.settings.file.allowed_overrides.0,
            limits: &engine.settings.file.limits,
        };
        let (spec, notice) =
            match issue_spec::spec_from_issue(issue, t.repo, role, &engine.roles, &rules) {
                Ok(found) => (found.spec, found.notice),
                Err(e) => {
                    return self
                        .reply(t, "spec", messages::bad_spec(&e.to_string()))
                        .await;
                }
            };
        let repo_name = t.repo.repo_name();
        let spec_json = serde_json::to_string(&spec).map_err(anyhow::Error::from)?;
        let branch = role_def.branch_for(&spec.id);
        let mut tx = store::begin_write(&engine.pool).await?;
        let existing = store::find_task(&mut *tx, &repo_name, spec.id.as_str()).await?;
        let (key, run) = match existing {
            None => {
                let new = store::NewTask {
                    repo: &repo_name,
                    task_id: spec.id.as_str(),
                    role,
                    title: &spec.title,
                    spec_json: &spec_json,
                    branch: &branch,
                    job_id: None,
                };
                let Some(key) = store::insert_task(&mut *tx, &new).await? else {
                    // Another delivery for this issue made it at the same moment.
                    tracing::info!(
                        delivery = self.delivery,
                        "task {} was just created by another delivery",
                        spec.id
                    );
                    return Ok(());
                };
                (key, 1)
            }
            // An issue opened with its label arrives as two deliveries (`opened`, `labeled`),
            // which may be handled in either order: the second is the same request, not a new
            // one, whatever state the first one's run has reached.
            Some(task) if announce != Announce::Always && is_paired_copy(&task, role, sender) => {
                return Ok(());
            }
            Some(task) if !task.state.is_terminal() => {
                drop(tx);
                if announce != Announce::Never {
                    self.reply(t, "active", messages::already_active(&task))
                        .await?;
                }
                return Ok(());
            }
            Some(task) => {
                store::replace_spec(&mut *tx, task.pk, role, &spec.title, &spec_json, &branch)
                    .await?;
                let run = store::requeue(&mut *tx, task.pk)
                    .await?
                    .context("task became active")?;
                (task.pk, run)
            }
        };
        store::set_github_origin(
            &mut *tx,
            key,
            t.inst.0,
            t.issue as i64,
            &sender.login,
            &t.repo.clone_url,
        )
        .await?;
        store::set_notice(&mut *tx, key, notice.as_deref()).await?;
        let job = jobs::push(&mut tx, &RunTask { task: key, run }, Duration::ZERO).await?;
        store::set_job_id(&mut *tx, key, &job).await?;
        tx.commit().await.map_err(anyhow::Error::from)?;
        engine.wakeups.wake::<RunTask>();
        if let Some(notice) = &notice {
            engine
                .record(key, run, crate::store::EventKind::Settings, notice)
                .await;
        }
        engine
            .record(
                key,
                run,
                crate::store::EventKind::Queued,
                &format!(
                    "queued by @{} from issue #{} as job {job} for branch {branch}",
                    sender.login, t.issue
                ),
            )
            .await;
        Ok(())
    }

    async fn on_comment(
        &self,
        inst: InstallationId,
        repo: &Repo,
        issue: &Issue,
        comment_id: u64,
        body: &str,
        author: &Actor,
    ) -> Result<(), Failure> {
        let commands = command::parse_comment(body);
        if commands.is_empty() {
            return Ok(());
        }
        let t = Thread {
            inst,
            repo,
            issue: issue.number,
        };
        if !self.allowed(&t, author).await? {
            return Ok(());
        }
        let task = store::find_task(
            &self.engine.pool,
            &repo.repo_name(),
            &issue_spec::task_id(issue.number),
        )
        .await?;
        for (i, parsed) in commands.into_iter().enumerate() {
            let key = format!("{comment_id}-{i}");
            match parsed {
                Err(e) => {
                    self.reply(&t, &key, messages::command_error(&e.to_string()))
                        .await?
                }
                Ok(Command::Help) => self.reply(&t, &key, messages::help()).await?,
                Ok(Command::Status) => {
                    self.reply(&t, &key, messages::status_reply(task.as_ref()))
                        .await?
                }
                Ok(Command::Fix { instructions }) => {
                    self.fix(&t, issue, &instructions, author, &key).await?
                }
                Ok(Command::Run { role }) => {
                    let role = role
                        .or_else(|| task.as_ref().map(|t| t.role.clone()))
                        .or_else(|| issue.autodev_role().map(str::to_owned));
                    match role {
                        Some(role) => {
                            self.start(&t, issue, &role, author, Announce::Always)
                                .await?
                        }
                        None => self.reply(&t, &key, messages::no_role()).await?,
                    }
                }
                Ok(Command::Retry) => {
                    let role = task
                        .as_ref()
                        .map(|t| t.role.clone())
                        .or_else(|| issue.autodev_role().map(str::to_owned));
                    match role {
                        Some(role) => {
                            self.start(&t, issue, &role, author, Announce::Always)
                                .await?
                        }
                        None => self.reply(&t, &key, messages::no_role()).await?,
                    }
                }
                Ok(Command::Pr) => match &task {
                    Some(task) if task.state == TaskState::Passed && task.pushed_sha.is_some() => {
                        crate::jobs::push_now(
                            &self.engine.pool,
                            &crate::jobs::OutboxJob::new(Effect::OpenPr { task: task.pk }),
                        )
                        .await?;
                    }
                    _ => self.reply(&t, &key, messages::nothing_to_open()).await?,
                },
                Ok(Command::Cancel) => match &task {
                    Some(task) if matches!(task.state, TaskState::Queued | TaskState::Running) => {
                        self.engine.cancel(task.pk).await?;
                    }
                    _ => self.reply(&t, &key, messages::nothing_to_cancel()).await?,
                },
            }
        }
        Ok(())
    }

    /// `/autodev fix` on a pull request from an autodev branch: another run of that branch's
    /// task, with the instructions and the pull request's review comments.
    async fn fix(
        &self,
        t: &Thread<'_>,
        issue: &Issue,
        instructions: &str,
        author: &Actor,
        key: &str,
    ) -> Result<(), Failure> {
        let (owner, name) = (&t.repo.owner, &t.repo.name);
        if !issue.is_pull_request {
            return self.reply(t, key, messages::fix_needs_pull_request()).await;
        }
        let repo_path = RepoPath { owner, name };
        let head = self
            .gh
            .pull_request(t.inst.into(), repo_path, issue.number as i64)
            .await?
            .head
            .branch;
        let task = store::task_on_branch(&self.engine.pool, &t.repo.repo_name(), &head).await?;
        let Some(task) = task else {
            return self.reply(t, key, messages::fix_not_autodev(&head)).await;
        };
        if !task.state.is_terminal() {
            return self.reply(t, key, messages::already_active(&task)).await;
        }
        let comments = self
            .gh
            .review_comments(t.inst, repo_path, issue.number)
            .await?;
        // Review comments count only from people who may write: anyone can comment on a
        // public pull request.
        let mut review: Vec<serde_json::Value> = Vec::new();
        let mut left_out = 0;
        for c in &comments {
            let user = c.user.clone().unwrap_or_default();
            let login = user.login.as_str();
            let is_bot = user.is_bot();
            let writer = !login.is_empty()
                && (!is_bot || self.bot_allowed(login))
                && self
                    .gh
                    .permission(t.inst, owner, name, login)
                    .await?
                    .may_command();
            if !writer {
                left_out += 1;
                continue;
            }
            review.push(serde_json::json!({
                "path": c.path,
                "line": c.line,
                "author": login,
                "comment": issue_spec::sanitize(c.body.as_deref().unwrap_or_default()),
            }));
        }
        let mut spec: serde_json::Value =
            serde_json::from_str(&task.spec).map_err(anyhow::Error::from)?;
        spec["fix_request"] = serde_json::json!({
            "pull_request": issue.number,
            "instructions": issue_spec::sanitize(instructions),
            "review_comments": review,
        });
        let spec_json = spec.to_string();
        let mut tx = store::begin_write(&self.engine.pool).await?;
        store::replace_spec(
            &mut *tx,
            task.pk,
            &task.role,
            &task.title,
            &spec_json,
            &task.branch,
        )
        .await?;
        let Some(run) = store::requeue(&mut *tx, task.pk).await? else {
            return Ok(());
        };
        let job = jobs::push(&mut tx, &RunTask { task: task.pk, run }, Duration::ZERO).await?;
        store::set_job_id(&mut *tx, task.pk, &job).await?;
        tx.commit().await.map_err(anyhow::Error::from)?;
        self.engine.wakeups.wake::<RunTask>();
        self.engine
            .record(
                task.pk,
                run,
                crate::store::EventKind::Queued,
                &format!(
                    "fix requested by @{} on pull request #{} as job {job}{}",
                    author.login,
                    issue.number,
                    if left_out > 0 {
                        format!(
                            "; {left_out} review comment(s) by people without write permission left out"
                        )
                    } else {
                        String::new()
                    }
                ),
            )
            .await;
        Ok(())
    }

    /// The task an autodev check run belongs to (its `external_id`), if `sender` may act on it.
    async fn check_run_task(
        &self,
        inst: InstallationId,
        repo: &Repo,
        task_id: Option<&str>,
        sender: &Actor,
    ) -> Result<Option<store::TaskRow>, Failure> {
        let Some(task_id) = task_id else {
            return Ok(None);
        };
        let Some(task) = store::find_task(&self.engine.pool, &repo.repo_name(), task_id).await?
        else {
            return Ok(None);
        };
        let Some(issue) = task.issue_number else {
            return Ok(None);
        };
        let t = Thread {
            inst,
            repo,
            issue: issue as u64,
        };
        Ok(self.allowed(&t, sender).await?.then_some(task))
    }

    /// The "Open PR" button on an autodev check run.
    async fn on_action(
        &self,
        inst: InstallationId,
        repo: &Repo,
        task_id: Option<&str>,
        identifier: &str,
        sender: &Actor,
    ) -> Result<(), Failure> {
        if identifier != super::messages::OPEN_PR_ACTION {
            return Ok(());
        }
        if let Some(task) = self.check_run_task(inst, repo, task_id, sender).await? {
            crate::jobs::push_now(
                &self.engine.pool,
                &crate::jobs::OutboxJob::new(Effect::OpenPr { task: task.pk }),
            )
            .await?;
        }
        Ok(())
    }

    /// "Re-run" on an autodev check run retries the task it belongs to.
    async fn on_rerun(
        &self,
        inst: InstallationId,
        repo: &Repo,
        task_id: Option<&str>,
        sender: &Actor,
    ) -> Result<(), Failure> {
        let Some(task) = self.check_run_task(inst, repo, task_id, sender).await? else {
            return Ok(());
        };
        if let Some(job) = self.engine.retry(task.pk).await? {
            tracing::info!(task = %task.task_id, "re-run requested from the check run: job {job}");
        }
        Ok(())
    }
}
