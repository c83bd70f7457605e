//! Pushing a task's branch to GitHub, and recording it, so that no crash between the two
//! wedges the task: the commit about to be pushed is recorded first (the intent), and the next
//! push reconciles from GitHub. Shared by the end of a run, the checkpointer and the rebase
//! chore. Part of `run`: imports the engine, `git`, `store` and `jobs`; never `maintenance`,
//! `web` or `app`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;

use crate::core::faults::crash_point;
use crate::core::ids::TaskKey;
use crate::engine::Engine;
use crate::git::ops::PushGuard;
use crate::jobs::{Effect, OutboxJob};
use crate::store;

/// One push of a task's branch.
pub struct Push<'a> {
    /// The git directory holding `head`.
    pub dir: &'a Path,
    pub url: &'a str,
    pub token: &'a SecretString,
    pub branch: &'a str,
    pub head: &'a str,
    pub guard: &'a PushGuard<'a>,
}

/// Pushes `push.head` to the task's branch, replacing only what autodev pushed there last, and
/// records it together with `effects` (queued in the same transaction). A push whose record a
/// crash cut off is found on GitHub by the next push, and taken as the branch's last push.
pub async fn push_branch(
    engine: &Engine,
    key: TaskKey,
    push: Push<'_>,
    effects: &[Effect],
) -> anyhow::Result<()> {
    let lease = reconcile(engine, key, &push).await?;
    store::set_push_intent(&engine.pool, key, push.head).await?;
    engine
        .git
        .push(
            push.dir,
            push.url,
            push.head,
            push.branch,
            push.token,
            lease.as_deref(),
            push.guard,
        )
        .await?;
    crash_point("push-done");
    let mut tx = store::begin_write(&engine.pool).await?;
    store::set_pushed(&mut *tx, key, push.head).await?;
    for effect in effects {
        crate::jobs::push(&mut tx, &OutboxJob::new(effect.clone()), Duration::ZERO).await?;
    }
    tx.commit().await.context("recording a push")?;
    Ok(())
}

/// The commit the branch on GitHub may be replaced from: the last push recorded, or the one
/// recorded as about to be pushed when GitHub has it (the process died between the push and
/// its record; it is recorded now).
async fn reconcile(
    engine: &Engine,
    key: TaskKey,
    push: &Push<'_>,
) -> anyhow::Result<Option<String>> {
    let t = store::get_task(&engine.pool, key)
        .await?
        .with_context(|| format!("task {key} is gone"))?;
    let Some(intent) = t.push_intent.filter(|i| t.pushed_sha.as_ref() != Some(i)) else {
        return Ok(t.pushed_sha);
    };
    let there = engine
        .git
        .remote_branch(push.dir, push.url, push.branch, push.token)
        .await?;
    if there.as_deref() != Some(intent.as_str()) {
        return Ok(t.pushed_sha);
    }
    store::set_pushed(&engine.pool, key, &intent).await?;
    engine
        .record(
            key,
            t.run_seq,
            store::EventKind::Push,
            &format!(
                "found {} on {}: pushed before autodev stopped, and recorded now",
                super::pipeline::short(&intent),
                push.branch
            ),
        )
        .await;
    Ok(Some(intent))
}
