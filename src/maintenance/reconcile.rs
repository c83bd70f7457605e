//! The reconciler, at start and on schedule (`hygiene.reconcile_minutes`): finishes the GitHub
//! effects left half-done. Those the outbox gave up on after its retries are queued again (a
//! bounded number of times), and a push whose record a stop cut off, in a task no run holds
//! now, is looked up on GitHub: recorded with its check run and status when it is there,
//! forgotten when it is not. Never imports `web` or `app`.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::github::event::InstallationId;
use crate::jobs::{Effect, OutboxJob};
use crate::proc::lock::FileLock;
use crate::store;

/// Stalled effects queued again per pass at most.
const BATCH: i64 = 500;

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Effects queued again.
    pub effects: usize,
    /// Pushes found on GitHub and recorded.
    pub pushes: usize,
}

pub async fn run(engine: &Arc<Engine>) -> anyhow::Result<Reconciled> {
    Ok(Reconciled {
        effects: requeue_stalled(engine).await?,
        pushes: settle_pushes(engine).await?,
    })
}

/// Queues the stalled effects again, each in the transaction that forgets it.
async fn requeue_stalled(engine: &Engine) -> anyhow::Result<usize> {
    let mut tx = store::begin_write(&engine.pool).await?;
    let stalled = store::stalled_effects(&mut *tx, BATCH).await?;
    for s in &stalled {
        store::forget_stalled(&mut *tx, s.id).await?;
        let effect: Effect = match serde_json::from_str(&s.effect) {
            Ok(effect) => effect,
            Err(e) => {
                tracing::error!("dropping a stalled effect autodev cannot read: {e}");
                continue;
            }
        };
        let job = OutboxJob {
            effect,
            attempt: 0,
            rounds: s.rounds as u32 + 1,
        };
        crate::jobs::push(&mut tx, &job, Duration::ZERO).await?;
    }
    tx.commit().await?;
    Ok(stalled.len())
}

/// Records the pushes GitHub has that their tasks do not (see the module's comment).
async fn settle_pushes(engine: &Engine) -> anyhow::Result<usize> {
    let Some(gh) = engine.github() else {
        return Ok(0);
    };
    let mut settled = 0;
    for task in store::unsettled_pushes(&engine.pool).await? {
        // One repository GitHub will not answer for does not hold up the others.
        match settle_push(engine, &gh, task).await {
            Ok(true) => settled += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!("reconciling a push: {e:#}"),
        }
    }
    Ok(settled)
}

/// Settles one task's push; whether GitHub had it.
async fn settle_push(
    engine: &Engine,
    gh: &crate::github::client::GithubClient,
    task: store::TaskRow,
) -> anyhow::Result<bool> {
    let (Some(installation), Some(url)) = (task.installation_id, task.clone_url.as_deref()) else {
        return Ok(false);
    };
    let repo = task.repo_name();
    // The rebase chore pushes under this lock: no push of it is under way meanwhile.
    let _lock = FileLock::acquire(engine.repo_lock(&repo)).await?;
    let Some(t) = store::get_task(&engine.pool, task.pk).await? else {
        return Ok(false);
    };
    let Some(intent) = t
        .push_intent
        .clone()
        .filter(|i| t.pushed_sha.as_ref() != Some(i))
    else {
        return Ok(false);
    };
    if !t.state.is_terminal() {
        return Ok(false);
    }
    let mirror = engine.mirror_path(&repo);
    if !mirror.join("HEAD").exists() {
        return Ok(false);
    }
    let token = gh.installation_token(InstallationId(installation)).await?;
    let there = engine
        .git
        .remote_branch(&mirror, url, &t.branch, &token)
        .await?;
    let found = there.as_deref() == Some(intent.as_str());
    let mut tx = store::begin_write(&engine.pool).await?;
    if found {
        store::set_pushed(&mut *tx, t.pk, &intent).await?;
        for effect in [
            Effect::CheckRun { task: t.pk },
            Effect::Status { task: t.pk },
        ] {
            crate::jobs::push(&mut tx, &OutboxJob::new(effect), Duration::ZERO).await?;
        }
        engine
            .record_in(
                &mut tx,
                t.pk,
                t.run_seq,
                store::EventKind::Push,
                &format!(
                    "found {} on {}: pushed before autodev stopped, and recorded now",
                    &intent[..intent.len().min(10)],
                    t.branch
                ),
            )
            .await?;
    } else {
        store::drop_push_intent(&mut *tx, t.pk, &intent).await?;
    }
    tx.commit().await?;
    if found {
        engine.announce(
            t.pk,
            t.run_seq,
            store::EventKind::Push,
            "a push recorded late",
        );
    }
    Ok(found)
}
