//! GitHub side effects as durable jobs: reactions, replies and status comments. Each effect is
//! idempotent (look before create), so a job that runs twice posts nothing twice. A failure
//! GitHub says will pass (5xx, rate limits) is queued again after the wait it asks for; one
//! that will not (422, 404) is logged and dropped, not retried forever.

use std::sync::Arc;
use std::time::Duration;

use super::messages;
use crate::core::faults::crash_point;
use crate::core::ids::TaskKey;
use crate::engine::Engine;
use crate::github::api::{
    self, CheckAction, CheckOutput, CheckRun, CheckStatus, NewPullRequest, RepoPath,
};
use crate::github::client::{ApiError, GithubClient, Identity, Retry};
use crate::github::event::InstallationId;
pub use crate::jobs::{Effect, OutboxJob};
use crate::store::{self, Claim, GithubObject};

/// Runs one outbox job; retryable failures are queued again with GitHub's wait.
pub async fn run(engine: &Arc<Engine>, job: OutboxJob) -> anyhow::Result<()> {
    let Some(gh) = engine.github() else {
        return Ok(());
    };
    let result = perform(engine, &gh, &job.effect).await;
    let Err(e) = result else { return Ok(()) };
    let wait = match e.retry() {
        Retry::Never => None,
        Retry::After(d) => Some(d),
        Retry::Backoff => Some(Duration::from_secs(2u64.pow(job.attempt.min(8)))),
    };
    let effect = job.effect.clone();
    let (attempt, rounds) = (job.attempt, job.rounds);
    let retried = match wait {
        Some(d) => crate::jobs::retry(&engine.pool, job, d).await?,
        None => false,
    };
    match (retried, wait) {
        (true, Some(d)) => {
            tracing::warn!(
                attempt,
                "GitHub side effect failed, again in {}s: {e}",
                d.as_secs()
            );
            Ok(())
        }
        // It may pass: kept for the reconciler, which queues it again later.
        (false, Some(_)) if rounds < crate::jobs::MAX_ROUNDS => {
            tracing::warn!("GitHub side effect stalled, left to the reconciler: {e}");
            let json = serde_json::to_string(&effect)?;
            store::stall_effect(&engine.pool, &json, rounds, &e.to_string()).await
        }
        _ => {
            tracing::error!("GitHub side effect dropped: {e}");
            if let Effect::Status { task } | Effect::OpenPr { task } = effect
                && let Ok(Some(t)) = store::get_task(&engine.pool, task).await
            {
                let _ = store::add_event(
                    &engine.pool,
                    task,
                    t.run_seq,
                    crate::store::EventKind::Github,
                    &format!("could not update GitHub: {e}"),
                )
                .await;
            }
            Ok(())
        }
    }
}

async fn perform(engine: &Engine, gh: &GithubClient, effect: &Effect) -> Result<(), ApiError> {
    match effect {
        Effect::Reaction {
            installation,
            owner,
            repo,
            issue,
            content,
        } => {
            let inst = InstallationId(*installation);
            let _write = gh.write_lock(inst).await?;
            gh.add_reaction(inst, RepoPath { owner, name: repo }, *issue, content)
                .await
        }
        Effect::Reply {
            installation,
            owner,
            repo,
            issue,
            key,
            body,
        } => {
            let inst = InstallationId(*installation);
            let marker = messages::reply_marker(key);
            // Lock first, then look: two jobs of one reply (two ticks of a schedule) must not
            // both find nothing and both post.
            let _write = gh.write_lock(inst).await?;
            if find_comment(gh, inst, owner, repo, *issue, &marker)
                .await?
                .is_some()
            {
                return Ok(());
            }
            let repo = RepoPath { owner, name: repo };
            gh.create_comment(inst, repo, *issue, &format!("{marker}\n{body}"))
                .await?;
            crash_point("comment-posted");
            Ok(())
        }
        Effect::CheckRun { task } => check_run(engine, gh, *task).await,
        Effect::OpenPr { task } => open_pr(engine, gh, *task).await.map(|_| ()),
        Effect::Reviewers { .. } => request_reviewers(engine, gh, effect).await,
        Effect::Status { task } => {
            let Some(t) = store::get_task(&engine.pool, *task)
                .await
                .map_err(internal)?
            else {
                return Ok(());
            };
            let (Some(installation), Some(issue)) = (t.installation_id, t.issue_number) else {
                return Ok(());
            };
            let Some((owner, repo)) = t.repo.split_once('/') else {
                return Ok(());
            };
            let inst = InstallationId(installation);
            let gates = store::gate_results(&engine.pool, t.pk)
                .await
                .map_err(internal)?;
            let link = crate::links::link(&engine.settings, &t);
            let body = messages::status_comment(&t, &gates, link.as_deref());
            // Lock first, then look: two status jobs of one new task must not both find
            // nothing and both post.
            let _write = gh.write_lock(inst).await?;
            let recorded = store::get_task(&engine.pool, t.pk)
                .await
                .map_err(internal)?
                .and_then(|t| t.status_comment_id);
            let (existing, claimed) = match recorded {
                Some(id) => (Some(id as u64), false),
                // One status comment per task, whichever process gets here first.
                None => match claim(engine, t.pk, GithubObject::StatusComment, "").await? {
                    Claim::Made(id) => (Some(id as u64), false),
                    Claim::Busy => return Err(busy("the status comment")),
                    Claim::Ours { .. } => (None, true),
                },
            };
            let result = async {
                let existing = match existing {
                    Some(id) => Some(id),
                    None => {
                        find_comment(
                            gh,
                            inst,
                            owner,
                            repo,
                            issue as u64,
                            &messages::status_marker(&t.task_id),
                        )
                        .await?
                    }
                };
                let repo = RepoPath { owner, name: repo };
                let id = match existing {
                    Some(id) => {
                        gh.update_comment(inst, repo, id, &body).await?;
                        id
                    }
                    None => {
                        let id = gh.create_comment(inst, repo, issue as u64, &body).await?;
                        crash_point("comment-posted");
                        id
                    }
                };
                if t.status_comment_id != Some(id as i64) {
                    let recorded = async {
                        let mut tx = store::begin_write(&engine.pool).await?;
                        store::set_status_comment(&mut *tx, t.pk, id as i64).await?;
                        store::claim_made(
                            &mut *tx,
                            t.pk,
                            GithubObject::StatusComment,
                            "",
                            id as i64,
                        )
                        .await?;
                        tx.commit().await?;
                        anyhow::Ok(())
                    };
                    recorded.await.map_err(internal)?;
                }
                Ok(())
            }
            .await;
            if claimed && result.is_err() {
                release(engine, t.pk, GithubObject::StatusComment, "").await;
            }
            result
        }
    }
}

/// The id of the first of the App's own comments on the issue holding `marker`. Anyone can
/// write a marker into a comment of theirs; only autodev's own comments are autodev's.
async fn find_comment(
    gh: &GithubClient,
    inst: InstallationId,
    owner: &str,
    repo: &str,
    issue: u64,
    marker: &str,
) -> Result<Option<u64>, ApiError> {
    let me = gh.app_login().await?;
    let repo = RepoPath { owner, name: repo };
    for page in 1..=api::MAX_PAGES {
        let items = gh.issue_comments_page(inst, repo, issue, page).await?;
        if let Some(c) = items.iter().find(|c| {
            c.user
                .as_ref()
                .is_some_and(|u| u.login.eq_ignore_ascii_case(&me))
                && c.body.as_deref().is_some_and(|b| b.contains(marker))
        }) {
            return Ok(Some(c.id));
        }
        if items.len() < api::PAGE {
            break;
        }
    }
    Ok(None)
}

async fn check_run(engine: &Engine, gh: &GithubClient, task: TaskKey) -> Result<(), ApiError> {
    let Some(t) = store::get_task(&engine.pool, task)
        .await
        .map_err(internal)?
    else {
        return Ok(());
    };
    let (Some(installation), Some(sha)) = (t.installation_id, t.pushed_sha.clone()) else {
        return Ok(());
    };
    let Some((owner, repo)) = t.repo.split_once('/') else {
        return Ok(());
    };
    let inst = InstallationId(installation);
    let name = format!("autodev/{}", t.role);
    let gates = store::gate_results(&engine.pool, t.pk)
        .await
        .map_err(internal)?;
    let (title, summary, text) = messages::check_output(&t, &gates);
    let conclusion = messages::check_conclusion(&t);
    let run = CheckRun {
        name: Some(name.clone()),
        head_sha: Some(sha.clone()),
        external_id: Some(t.task_id.clone()),
        status: if conclusion.is_some() {
            CheckStatus::Completed
        } else {
            CheckStatus::InProgress
        },
        completed_at: conclusion
            .map(|_| t.finished_at.unwrap_or_else(chrono::Utc::now).to_rfc3339()),
        conclusion: conclusion.map(str::to_owned),
        output: CheckOutput {
            title,
            summary,
            text: Some(text),
        },
        actions: (t.state == crate::store::TaskState::Passed && t.pr_number.is_none()).then(|| {
            vec![CheckAction {
                label: "Open PR".into(),
                description: "Open a pull request for this branch".into(),
                identifier: messages::OPEN_PR_ACTION.into(),
            }]
        }),
        details_url: crate::links::link(&engine.settings, &t),
    };
    let repo = RepoPath { owner, name: repo };
    // One check run per commit, whichever process gets here first: claimed, then made.
    let made = match claim(engine, t.pk, GithubObject::CheckRun, &sha).await? {
        Claim::Made(id) => Some(id as u64),
        Claim::Busy => return Err(busy("the check run")),
        Claim::Ours { .. } => None,
    };
    let result = async {
        let existing = match made {
            Some(id) => Some(id),
            // Look before create: this task's run on this commit, by external id, made by a
            // process that died before recording it.
            None => gh
                .check_runs(inst, repo, &sha, &name)
                .await?
                .into_iter()
                .find(|r| r.external_id.as_deref() == Some(t.task_id.as_str()))
                .map(|r| r.id),
        };
        let _write = gh.write_lock(inst).await?;
        // A run on an earlier commit (a checkpoint) is concluded as superseded, not left going.
        if let (None, Some(previous)) = (existing, t.check_run_id) {
            let superseded = CheckRun {
                name: None,
                head_sha: None,
                external_id: None,
                status: CheckStatus::Completed,
                conclusion: Some("neutral".into()),
                completed_at: None,
                output: CheckOutput {
                    title: "Superseded".into(),
                    summary: format!("autodev pushed a newer commit of this task: {sha}"),
                    text: None,
                },
                actions: None,
                details_url: None,
            };
            gh.update_check_run(inst, repo, previous as u64, &superseded)
                .await?;
        }
        let id = match existing {
            Some(id) => {
                gh.update_check_run(inst, repo, id, &run).await?;
                id
            }
            None => {
                let id = gh.create_check_run(inst, repo, &run).await?;
                crash_point("check-run-created");
                id
            }
        };
        let recorded = async {
            let mut tx = store::begin_write(&engine.pool).await?;
            store::set_check_run(&mut *tx, t.pk, id as i64).await?;
            store::claim_made(&mut *tx, t.pk, GithubObject::CheckRun, &sha, id as i64).await?;
            tx.commit().await?;
            anyhow::Ok(())
        };
        recorded.await.map_err(internal)
    }
    .await;
    if made.is_none() && result.is_err() {
        release(engine, t.pk, GithubObject::CheckRun, &sha).await;
    }
    result
}

/// How long a claim on a GitHub object holds while its holder makes it.
const CLAIM_TTL: Duration = Duration::from_secs(60);

/// Claims the `kind` object of task `key` for `head` for this process. A claim whose holder
/// is known to have died (a process of this host that is gone) is taken over at once.
async fn claim(
    engine: &Engine,
    key: TaskKey,
    kind: GithubObject,
    head: &str,
) -> Result<Claim, ApiError> {
    let gone = |holder: &str| engine.holder_gone(holder);
    store::claim(
        &engine.pool,
        key,
        kind,
        head,
        &engine.owner,
        CLAIM_TTL,
        gone,
    )
    .await
    .map_err(internal)
}

/// Gives up this process's claim when it did not make the object, so that the next try need
/// not wait for the claim to run out.
async fn release(engine: &Engine, key: TaskKey, kind: GithubObject, head: &str) {
    if let Err(e) = store::release_claim(&engine.pool, key, kind, head, &engine.owner).await {
        tracing::warn!("releasing a claim on GitHub's {kind:?}: {e:#}");
    }
}

/// Another process holds the claim on `what`: the effect is tried again after a wait.
fn busy(what: &str) -> ApiError {
    ApiError::Transport {
        method: "CLAIM",
        path: String::new(),
        message: format!("another autodev process is making {what}"),
    }
}

/// Most reviewers GitHub takes in one request.
const MAX_REVIEWERS: usize = 15;

/// What asking for a task's pull request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrOutcome {
    /// Open (made now, or found), with this number.
    Open(i64),
    /// Not opened, and why (also on the task's timeline, and on its issue if it has one).
    NotOpened(String),
}

/// Where a task's pull request goes, and where its CODEOWNERS and changes are read.
struct PrTarget {
    who: Identity,
    owner: String,
    repo: String,
    /// The repository holding the base and head commits: the mirror, or local mode's own.
    git_dir: std::path::PathBuf,
    /// The base branch as a ref in `git_dir`.
    base_ref: String,
    /// The commit pushed, which the pull request shows.
    head: String,
}

/// Opens the pull request of a passed task now (App tasks through the installation, local ones
/// through `GITHUB_TOKEN` on `origin`, pushing the branch there first).
pub async fn open_pr_now(engine: &Engine, task: TaskKey) -> Result<PrOutcome, ApiError> {
    let client = engine.github();
    let Some(gh) = client.as_deref() else {
        return Ok(PrOutcome::NotOpened(
            "there is nowhere to open pull requests: no GitHub App and no GITHUB_TOKEN".into(),
        ));
    };
    open_pr(engine, gh, task).await
}

async fn open_pr(engine: &Engine, gh: &GithubClient, task: TaskKey) -> Result<PrOutcome, ApiError> {
    let Some(t) = store::get_task(&engine.pool, task)
        .await
        .map_err(internal)?
    else {
        return Ok(PrOutcome::NotOpened(format!("no task {task}")));
    };
    if let Some(n) = t.pr_number {
        // A local task run again after its pull request opened: the new work goes there too.
        if t.installation_id.is_none() && t.state == store::TaskState::Passed {
            republish_local(engine, task).await.map_err(internal)?;
        }
        return Ok(PrOutcome::Open(n));
    }
    if t.state != store::TaskState::Passed {
        return Ok(PrOutcome::NotOpened(format!(
            "the task is {}: only a passed task gets a pull request",
            t.state
        )));
    }
    let target = match pr_target(engine, gh, &t).await? {
        Ok(target) => target,
        Err(why) => return Ok(PrOutcome::NotOpened(why)),
    };
    let who = target.who;
    // Lock, then look: two jobs for one task (the on-pass trigger and the schedule, or a
    // foreground `autodev run`) must not both find nothing and both create.
    let _write = gh.write_lock(who).await?;
    if let Some(n) = store::get_task(&engine.pool, task)
        .await
        .map_err(internal)?
        .and_then(|t| t.pr_number)
    {
        return Ok(PrOutcome::Open(n));
    }
    // One pull request per task, whichever process (or host) gets here first.
    match claim(engine, t.pk, GithubObject::PullRequest, "").await? {
        Claim::Made(n) => return Ok(PrOutcome::Open(n)),
        Claim::Busy => return Err(busy("the pull request")),
        Claim::Ours { .. } => {}
    }
    let made = make_pr(engine, gh, &t, &target).await;
    if !matches!(made, Ok(PrOutcome::Open(_))) {
        release(engine, t.pk, GithubObject::PullRequest, "").await;
    }
    made
}

/// Makes the pull request claimed for `t` (or finds the one a crash left unrecorded), and
/// records it with its reviewers and the status comment's update.
async fn make_pr(
    engine: &Engine,
    gh: &GithubClient,
    t: &store::TaskRow,
    target: &PrTarget,
) -> Result<PrOutcome, ApiError> {
    let (owner, repo, who) = (&target.owner, &target.repo, target.who);
    let base = t.base_branch.clone().unwrap_or_default();
    // Look before create: a pull request made before a crash, and not yet recorded, is reused.
    let repo_path = RepoPath { owner, name: repo };
    // Worked out before the pull request is made, so that its body can say who is left out.
    let reviewers = reviewers_for(engine, t, target).await;
    let left_out = reviewers
        .as_ref()
        .map(|r| r.left_out.clone())
        .unwrap_or_default();
    let existing = gh.open_pull_from(who, repo_path, &t.branch).await?;
    let pr = match existing {
        Some(pr) => pr,
        None => {
            let gates = store::gate_results(&engine.pool, t.pk)
                .await
                .map_err(internal)?;
            let message = crate::git::ops::commit_message(&t.role, &t.title, &t.task_id, true);
            let body = messages::pr_body(t, &gates, &left_out);
            let new = NewPullRequest {
                title: message.lines().next().unwrap_or_default(),
                head: &t.branch,
                base: &base,
                body: &body,
                draft: engine.settings.file.hygiene.draft,
            };
            match gh.create_pull_request(who, repo_path, &new).await {
                Ok(pr) => pr,
                Err(ApiError::Status {
                    status: 422,
                    message,
                    ..
                }) => {
                    // Refused for a reason waiting will not change: the schedule stops asking;
                    // `/autodev pr`, the button or `autodev open-prs` ask again.
                    store::set_pr_state(&engine.pool, t.pk, store::PrState::Refused)
                        .await
                        .map_err(internal)?;
                    let why = format!("could not open a pull request: {message}");
                    report(engine, t, &why).await;
                    return Ok(PrOutcome::NotOpened(why));
                }
                Err(e) => return Err(e),
            }
        }
    };
    crash_point("pr-created");
    let number = pr.number;
    let author = pr.user.map(|u| u.login).unwrap_or_default();
    let mut after = Vec::new();
    match reviewers.map(|r| askable(r, &author)) {
        Ok((users, teams)) if users.is_empty() && teams.is_empty() => {}
        Ok((users, teams)) => after.push(Effect::Reviewers {
            task: t.pk,
            installation: t.installation_id,
            owner: owner.clone(),
            repo: repo.clone(),
            number,
            users,
            teams,
        }),
        Err(e) => {
            report(
                engine,
                t,
                &format!("pull request #{number} is open, but its reviewers could not be worked out: {e:#}"),
            )
            .await;
        }
    }
    if t.issue_number.is_some() {
        after.push(Effect::Status { task: t.pk });
    }
    // Recorded with what follows it, in one transaction: an open pull request is never asked
    // for again, and its reviewers and the status comment's update are not lost.
    let recorded = async {
        let mut tx = store::begin_write(&engine.pool).await?;
        store::set_pr(&mut *tx, t.pk, number).await?;
        store::claim_made(&mut *tx, t.pk, GithubObject::PullRequest, "", number).await?;
        store::add_event(
            &mut *tx,
            t.pk,
            t.run_seq,
            crate::store::EventKind::PullRequest,
            &format!(
                "pull request #{number} open for {} on {owner}/{repo}",
                t.branch
            ),
        )
        .await?;
        for effect in after {
            crate::jobs::push(&mut tx, &OutboxJob::new(effect), Duration::ZERO).await?;
        }
        tx.commit().await?;
        anyhow::Ok(())
    };
    recorded.await.map_err(internal)?;
    Ok(PrOutcome::Open(number))
}

/// Asks for the reviews worked out when the pull request was opened. A refusal (a reviewer who
/// cannot review, a team GitHub does not know) is said on the task's timeline and its issue,
/// not retried; what may pass is.
async fn request_reviewers(
    engine: &Engine,
    gh: &GithubClient,
    effect: &Effect,
) -> Result<(), ApiError> {
    let Effect::Reviewers {
        task,
        installation,
        owner,
        repo,
        number,
        users,
        teams,
    } = effect
    else {
        return Ok(());
    };
    let who = match installation {
        Some(id) => InstallationId(*id).into(),
        None => Identity::Token,
    };
    let repo_path = RepoPath { owner, name: repo };
    let asked = gh
        .request_reviewers(who, repo_path, *number, users, teams)
        .await;
    match asked {
        Ok(()) => {
            crash_point("reviewers-requested");
            Ok(())
        }
        Err(e) if matches!(e.retry(), Retry::Never) => {
            let why = match e {
                ApiError::Status { message, .. } => message,
                other => other.to_string(),
            };
            if let Some(t) = store::get_task(&engine.pool, *task)
                .await
                .map_err(internal)?
            {
                report(
                    engine,
                    &t,
                    &format!(
                        "pull request #{number} is open, but GitHub refused its reviewers: {why}"
                    ),
                )
                .await;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// App tasks: their repository, through the installation, once pushed. Local tasks: `origin`
/// on GitHub, through the token, once their branch is pushed there (which this does first).
/// `Err` says why there is no pull request to open.
async fn pr_target(
    engine: &Engine,
    gh: &GithubClient,
    t: &store::TaskRow,
) -> Result<Result<PrTarget, String>, ApiError> {
    let base = t.base_branch.clone().unwrap_or_default();
    if let Some(installation) = t.installation_id {
        let (Some(head), Some((owner, repo))) = (t.pushed_sha.clone(), t.repo.split_once('/'))
        else {
            return Ok(Err("the branch has not been pushed".into()));
        };
        return Ok(Ok(PrTarget {
            who: InstallationId(installation).into(),
            owner: owner.to_owned(),
            repo: repo.to_owned(),
            git_dir: engine.mirror_path(&t.repo_name()),
            // The base commit the run took from GitHub: the mirror's refs are the agents' to
            // move, and CODEOWNERS decides who is asked to review.
            base_ref: t
                .base_sha
                .clone()
                .unwrap_or_else(|| format!("refs/remotes/origin/{base}")),
            head,
        }));
    }
    if !t.repo_name().is_local() {
        return Ok(Err("the task has no GitHub installation".into()));
    }
    let remote = match super::origin::task_remote(engine, t).await {
        Ok(remote) => remote,
        Err(why) => {
            report(engine, t, &why).await;
            return Ok(Err(why));
        }
    };
    let (head, base_sha) = match publish_local(engine, gh, t, &remote, &base).await? {
        Ok(found) => found,
        Err(why) => {
            // Nothing to push (the branch is gone, or holds nothing new) or not allowed to:
            // the schedule stops asking.
            store::set_pr_state(&engine.pool, t.pk, store::PrState::Refused)
                .await
                .map_err(internal)?;
            report(engine, t, &why).await;
            return Ok(Err(why));
        }
    };
    Ok(Ok(PrTarget {
        who: Identity::Token,
        owner: remote.owner,
        repo: remote.repo,
        git_dir: engine.settings.repo_path.clone(),
        base_ref: base_sha,
        head,
    }))
}

/// Pushes a local task's branch to `origin` again after hygiene moved it (its pull request
/// follows); a reason not to is put on the task's timeline.
pub async fn republish_local(engine: &Engine, task: TaskKey) -> anyhow::Result<()> {
    let client = engine.github();
    let (Some(gh), Some(t)) = (
        client.as_deref(),
        store::get_task(&engine.pool, task).await?,
    ) else {
        return Ok(());
    };
    let remote = match super::origin::task_remote(engine, &t).await {
        Ok(remote) => remote,
        Err(why) => {
            report(engine, &t, &why).await;
            return Ok(());
        }
    };
    let base = t.base_branch.clone().unwrap_or_default();
    if let Err(why) = publish_local(engine, gh, &t, &remote, &base).await? {
        report(engine, &t, &why).await;
    }
    Ok(())
}

/// Pushes a local task's branch to `origin` with `GITHUB_TOKEN`, leasing over what autodev
/// pushed there before, unless it is there already. The head now on `origin` and the base
/// commit, or why there is nothing to push.
async fn publish_local(
    engine: &Engine,
    gh: &GithubClient,
    t: &store::TaskRow,
    remote: &super::origin::GithubRemote,
    base: &str,
) -> Result<Result<(String, String), String>, ApiError> {
    let git = &engine.git;
    let repo = &engine.settings.repo_path;
    let Some(token) = gh.personal_token() else {
        return Ok(Err("GITHUB_TOKEN is not set".into()));
    };
    let _lock = crate::proc::lock::FileLock::acquire(engine.repo_lock(&t.repo_name()))
        .await
        .map_err(internal)?;
    let Ok((_, head)) = git.resolve_base(repo, Some(&t.branch)).await else {
        return Ok(Err(format!(
            "branch {} is no longer in {}: no pull request",
            t.branch,
            repo.display()
        )));
    };
    let Ok((_, base_sha)) = git.resolve_base(repo, Some(base)).await else {
        return Ok(Err(format!(
            "base branch {base} is not in {}: no pull request",
            repo.display()
        )));
    };
    if t.pushed_sha.as_deref() == Some(head.as_str()) {
        return Ok(Ok((head, base_sha)));
    }
    if git
        .is_ancestor(repo, &head, &base_sha)
        .await
        .map_err(internal)?
    {
        return Ok(Err(format!(
            "{} has no commits that {base} lacks: no pull request",
            t.branch
        )));
    }
    let full_name = remote.full_name();
    let url = &remote.push_url;
    // Checked from the base as GitHub has it: the base branch here is in the repository the
    // agent worked in, and the agent can move it.
    let transport = |e: anyhow::Error| ApiError::Transport {
        method: "FETCH",
        path: url.clone(),
        message: format!("{e:#}"),
    };
    let Some(server_base) = git
        .remote_branch(repo, url, base, token)
        .await
        .map_err(transport)?
    else {
        return Ok(Err(format!(
            "base branch {base} is not on {full_name}: no pull request"
        )));
    };
    git.ensure_commit(repo, url, base, &server_base, token)
        .await
        .map_err(transport)?;
    let guard = engine.push_guard(&full_name, &server_base);
    store::set_local_remote(&engine.pool, t.pk, url)
        .await
        .map_err(internal)?;
    let pushed = git
        .push(
            repo,
            url,
            &head,
            &t.branch,
            token,
            t.pushed_sha.as_deref(),
            &guard,
        )
        .await;
    if let Err(e) = pushed {
        if e.is::<crate::git::ops::HeldBack>() {
            return Ok(Err(format!("{e:#}")));
        }
        // Pushed before a crash, and not recorded: it is there already.
        let there = git.remote_branch(repo, url, &t.branch, token).await.ok();
        if there.flatten().as_deref() != Some(head.as_str()) {
            let message = format!("{e:#}");
            if crate::git::ops::push_may_pass_later(&message) {
                return Err(ApiError::Transport {
                    method: "PUSH",
                    path: url.clone(),
                    message,
                });
            }
            // Refused (no permission, a protected branch, someone else's commits there):
            // trying again will not change that.
            return Ok(Err(format!(
                "GitHub refused the push of {} to {full_name}: {message}",
                t.branch
            )));
        }
    }
    store::set_pushed(&engine.pool, t.pk, &head)
        .await
        .map_err(internal)?;
    let _ = store::add_event(
        &engine.pool,
        t.pk,
        t.run_seq,
        crate::store::EventKind::Push,
        &format!(
            "pushed {} to {} on {full_name}",
            &head[..10.min(head.len())],
            t.branch
        ),
    )
    .await;
    Ok(Ok((head, base_sha)))
}

/// CODEOWNERS (read from the base branch) of the changed files, then the role's reviewers,
/// and who of them cannot be asked.
async fn reviewers_for(
    engine: &Engine,
    t: &store::TaskRow,
    target: &PrTarget,
) -> anyhow::Result<crate::git::codeowners::Reviewers> {
    use crate::git::codeowners::{self, Codeowners};
    let (dir, base_ref) = (&target.git_dir, &target.base_ref);
    let mut text = None;
    for location in codeowners::LOCATIONS {
        if let Some(found) = engine.git.read_at(dir, base_ref, location).await? {
            text = Some(found);
            break;
        }
    }
    let owners = Codeowners::parse(text.as_deref().unwrap_or_default());
    let changed = engine
        .git
        .changed_between(dir, base_ref, &target.head)
        .await?;
    let mut r = owners.reviewers_for(changed.iter().map(String::as_str), &target.owner);
    if let Some(role) = engine.roles.get(&t.role) {
        for reviewer in &role.reviewers {
            codeowners::add_owner(&mut r, reviewer, &target.owner);
        }
    }
    Ok(r)
}

/// Who of `r` is asked to review a pull request opened by `author`: never its author or a bot,
/// at most fifteen.
fn askable(mut r: crate::git::codeowners::Reviewers, author: &str) -> (Vec<String>, Vec<String>) {
    r.users
        .retain(|u| !u.eq_ignore_ascii_case(author) && !u.ends_with("[bot]"));
    r.users.truncate(MAX_REVIEWERS);
    r.teams.truncate(MAX_REVIEWERS - r.users.len());
    (r.users, r.teams)
}

/// A problem worth a person's attention: on the task's timeline and as a reply on its issue.
async fn report(engine: &Engine, t: &store::TaskRow, message: &str) {
    let _ = store::add_event(
        &engine.pool,
        t.pk,
        t.run_seq,
        crate::store::EventKind::Github,
        message,
    )
    .await;
    let (Some(installation), Some(issue), Some((owner, repo))) =
        (t.installation_id, t.issue_number, t.repo.split_once('/'))
    else {
        return;
    };
    let effect = Effect::Reply {
        installation,
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        issue: issue as u64,
        key: format!("{}-run{}-{}", t.task_id, t.run_seq, short_hash(message)),
        body: message.to_owned(),
    };
    let _ = crate::jobs::push_now(&engine.pool, &OutboxJob::new(effect)).await;
}

/// A short stable fingerprint of a message, for reply keys.
fn short_hash(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..6])
}

/// A database failure inside an effect: retried like a network fault.
fn internal(e: anyhow::Error) -> ApiError {
    ApiError::Transport {
        method: "DB",
        path: String::new(),
        message: format!("{e:#}"),
    }
}
