//! Receiving a webhook delivery: verify, parse, dedup, and store the work in one transaction.
//! Nothing here calls GitHub, so the answer comes well inside GitHub's 10 seconds.

use secrecy::ExposeSecret;

use crate::engine::Engine;
use crate::github::event::{Actor, Event};
use crate::github::webhook::{self, ParseError, Parsed, SignatureError};
use crate::store;

/// The headers of a delivery that matter.
pub struct DeliveryHeaders<'a> {
    pub event: Option<&'a str>,
    pub delivery: Option<&'a str>,
    pub signature: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Intake {
    Pong,
    Ignored(String),
    /// This delivery id was already received; nothing new was done.
    Duplicate,
    /// Installation records updated.
    Recorded,
    /// Stored and queued for a worker.
    Queued,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(
        "GitHub App mode is not configured: set GITHUB_APP_ID, GITHUB_PRIVATE_KEY_PATH and GITHUB_WEBHOOK_SECRET"
    )]
    NotConfigured,
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error(transparent)]
    Malformed(#[from] ParseError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub async fn receive(
    engine: &Engine,
    headers: DeliveryHeaders<'_>,
    body: &[u8],
) -> Result<Intake, IntakeError> {
    let app = engine.app().ok_or(IntakeError::NotConfigured)?;
    webhook::verify_signature(
        app.webhook_secret.expose_secret().as_bytes(),
        body,
        headers.signature,
    )?;
    let event_name = headers
        .event
        .ok_or(IntakeError::MissingHeader("X-GitHub-Event"))?;
    let delivery = headers
        .delivery
        .ok_or(IntakeError::MissingHeader("X-GitHub-Delivery"))?;
    let event = match webhook::parse(event_name, body)? {
        Parsed::Ignored(why) => return Ok(Intake::Ignored(why)),
        Parsed::Event(e) => *e,
    };
    if let Some(why) = unwanted_actor(&event, &engine.settings.file.github.allowed_bots) {
        return Ok(Intake::Ignored(why));
    }
    let repo = event.repo().map(|r| r.repo_name().to_string());
    let installation = event.installation().map(|i| i.0);
    let mut tx = store::begin_write(&engine.pool).await?;
    let payload = serde_json::to_string(&event).map_err(anyhow::Error::from)?;
    let outcome = match &event {
        Event::Ping => return Ok(Intake::Pong),
        Event::Installation { .. } | Event::InstallationRepositories { .. } => "recorded",
        _ => "queued",
    };
    let new = store::NewDelivery {
        id: delivery,
        event: event_name,
        repo: repo.as_deref(),
        installation,
        payload: &payload,
        outcome,
    };
    let fresh = store::insert_delivery(&mut *tx, &new).await?;
    if !fresh {
        return Ok(Intake::Duplicate);
    }
    let intake = match event {
        Event::Installation {
            installation,
            account,
            action,
            repos,
        } => {
            let active = !matches!(action.as_str(), "deleted" | "suspend");
            let repos = (action == "created").then_some(repos);
            store::upsert_installation(&mut tx, installation.0, &account, active, repos.as_deref())
                .await?;
            Intake::Recorded
        }
        Event::InstallationRepositories {
            installation,
            account,
            added,
            removed,
        } => {
            store::upsert_installation(&mut tx, installation.0, &account, true, None).await?;
            store::add_installation_repos(&mut tx, installation.0, &added).await?;
            store::remove_installation_repos(&mut tx, installation.0, &removed).await?;
            Intake::Recorded
        }
        _ => {
            let job = crate::jobs::HandleDelivery {
                delivery: delivery.to_owned(),
                attempt: 0,
            };
            crate::jobs::push(&mut tx, &job, std::time::Duration::ZERO).await?;
            Intake::Queued
        }
    };
    tx.commit().await.map_err(anyhow::Error::from)?;
    if intake == Intake::Queued {
        engine.wakeups.wake::<crate::jobs::HandleDelivery>();
    }
    Ok(intake)
}

/// Bots are ignored unless allow-listed; autodev's own comments are bot comments.
fn unwanted_actor(event: &Event, allowed_bots: &[String]) -> Option<String> {
    let actor: &Actor = match event {
        Event::IssueLabeled { sender, .. }
        | Event::IssueOpened { sender, .. }
        | Event::CheckRunRerequested { sender, .. }
        | Event::CheckRunRequestedAction { sender, .. } => sender,
        Event::CommentCreated { author, .. } => author,
        Event::Ping | Event::Installation { .. } | Event::InstallationRepositories { .. } => {
            return None;
        }
    };
    (actor.is_bot
        && !allowed_bots
            .iter()
            .any(|b| b.eq_ignore_ascii_case(&actor.login)))
    .then(|| {
        format!(
            "`{}` is a bot that is not in github.allowed_bots",
            actor.login
        )
    })
}
