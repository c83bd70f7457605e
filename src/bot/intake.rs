//! Receiving a webhook delivery: verify, parse, dedup, and store the work in one transaction.
//! Nothing here calls GitHub, so the answer comes well inside GitHub's 10 seconds.

use std::time::Duration;

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

/// Verifies a delivery, records it once (by its id) and queues what it asks for. `reading`
/// is what reading the body held (the sender's turn): given back as soon as the body is
/// authenticated.
pub async fn receive(
    engine: &Engine,
    headers: DeliveryHeaders<'_>,
    body: &[u8],
    reading: impl Send,
) -> Result<Intake, IntakeError> {
    let app = engine.app().ok_or(IntakeError::NotConfigured)?;
    webhook::verify_signature(
        app.webhook_secret.expose_secret().as_bytes(),
        body,
        headers.signature,
    )?;
    // Authenticated: the turn the body's reading held (`reading`) goes to the next sender,
    // so a burst from GitHub's few addresses is written in batches, not two at a time.
    drop(reading);
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
    let payload = serde_json::to_string(&event).map_err(anyhow::Error::from)?;
    let outcome = match &event {
        Event::Ping => return Ok(Intake::Pong),
        Event::Installation { .. } | Event::InstallationRepositories { .. } => "recorded",
        _ => "queued",
    };
    let (delivery, event_name) = (delivery.to_owned(), event_name.to_owned());
    // The delivery and what it queues, in one commit shared with the other requests of the
    // moment (`store::Batcher`).
    let intake = engine
        .batcher
        .write(move |w| {
            let new = store::NewDelivery {
                id: &delivery,
                event: &event_name,
                repo: repo.as_deref(),
                installation,
                payload: &payload,
                outcome,
            };
            if !w.insert_delivery(&new)? {
                return Ok(Intake::Duplicate);
            }
            record(w, event, delivery)
        })
        .await?;
    if intake == Intake::Queued {
        engine.wakeups.wake::<crate::jobs::HandleDelivery>();
    }
    Ok(intake)
}

/// What a fresh delivery changes at once: installations are recorded, anything else is
/// queued for a worker.
fn record(w: &store::Writer<'_>, event: Event, delivery: String) -> anyhow::Result<Intake> {
    Ok(match event {
        Event::Installation {
            installation,
            account,
            action,
            repos,
        } => {
            let active = !matches!(action.as_str(), "deleted" | "suspend");
            let repos = (action == "created").then_some(repos);
            w.upsert_installation(installation.0, &account, active, repos.as_deref())?;
            Intake::Recorded
        }
        Event::InstallationRepositories {
            installation,
            account,
            added,
            removed,
        } => {
            w.upsert_installation(installation.0, &account, true, None)?;
            w.add_installation_repos(installation.0, &added)?;
            w.remove_installation_repos(installation.0, &removed)?;
            Intake::Recorded
        }
        _ => {
            let job = crate::jobs::HandleDelivery {
                delivery,
                attempt: 0,
            };
            crate::jobs::push_written(w, &job, crate::jobs::JobId::new(), Duration::ZERO)?;
            Intake::Queued
        }
    })
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
