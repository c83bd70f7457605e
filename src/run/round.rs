//! One round of a run: the prompt, the agent (through the provider chain), then, if the agent
//! changed anything, the gates. Part of `run`: imports what `pipeline` does, never
//! `maintenance`, `web` or `app`.

use std::time::Duration;

use super::pipeline::{Outcome, Run, StopSignal, interrupted};
use super::workspace::Workspace;
use crate::agent::providers::{self, AgentRequest, AttemptStatus};
use crate::proc::exec;
use crate::run::gates::{self, GateResult};
use crate::run::prompt::{self, PromptInput};
use crate::store::{self, TaskState};

/// What one round came to.
pub(super) enum Round {
    /// Every gate passed.
    Passed,
    /// These gates failed: the next round tells the agent.
    Retry(Vec<GateResult>),
    /// The run ends here, with this outcome.
    Stop(Outcome),
}

/// The rounds of a run.
pub(super) struct Rounds<'a> {
    pub run: &'a Run<'a>,
    pub ws: &'a Workspace,
    pub stop: &'a StopSignal,
}

impl Rounds<'_> {
    /// Plays rounds until the gates pass, a round stops the run, or the rounds run out; the
    /// outcome is the run's verdict before its work is committed.
    pub async fn play_all(&self) -> anyhow::Result<Outcome> {
        let max_rounds = self.run.settings.max_rounds;
        let mut failures: Vec<GateResult> = Vec::new();
        for round in 1..=max_rounds {
            match self.play(round, &failures).await? {
                Round::Passed => return Ok(Outcome::passed()),
                Round::Retry(failed) => failures = failed,
                Round::Stop(outcome) => return Ok(outcome),
            }
        }
        let why = failures
            .iter()
            .map(|f| {
                format!(
                    "{}: {}",
                    f.summary(),
                    exec::tail_chars(f.output.trim(), 600)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        Ok(Outcome::ended(
            TaskState::Failed,
            format!("acceptance not met after {max_rounds} round(s): {why}"),
        ))
    }

    /// Round `round`: the agent (told what failed before), then, if it changed anything, the
    /// gates.
    async fn play(&self, round: u32, failures: &[GateResult]) -> anyhow::Result<Round> {
        let run = self.run;
        let stop = self.stop;
        let engine = run.engine;
        let row = run.row;
        let spec = &run.spec;
        let task = &run.settings;
        let settings = &engine.settings;
        let cancel = run.cancel;
        if let Some(o) = interrupted(run, stop) {
            return Ok(Round::Stop(o));
        }
        let ws = self.ws;
        let round_start = ws.round_start(engine).await?;
        let text = prompt::build(&PromptInput {
            role: &run.role,
            spec,
            settings: task,
            untrusted: ws.untrusted.as_deref(),
            branch: &ws.worktree.branch,
            gates: &ws.planned,
            round,
            failures,
        });
        run.note(
            store::EventKind::Agent,
            &format!("round {round} of {}: running the agent", task.max_rounds),
        )
        .await;
        let request = AgentRequest {
            jail: engine.jail(&ws.paths, ws.egress.agent_net()),
            prompt: &text,
            cwd: &ws.workdir,
            model: task.model.as_deref(),
            time_left: run.time_left(),
            marker: &ws.marker,
            homes_dir: ws.homes.path(),
            git_name: &settings.file.agent.git_user_name,
            git_email: &settings.file.agent.git_user_email,
            extra_env: &settings.file.agent.env,
            output_limit: settings.file.agent.max_output_bytes,
        };
        let chain =
            providers::run_chain(&ws.providers, &settings.env, &request, cancel, &*ws.record).await;
        for a in &chain.attempts {
            engine
                .metrics
                .provider_requests_total
                .with_label_values(&[&a.provider, a.status.as_str()])
                .inc();
            run.note(
                store::EventKind::Provider,
                &format!("{}: {} ({})", a.provider, a.status.as_str(), a.detail),
            )
            .await;
        }
        count_spending(engine, &row.role, &chain);
        // Failed attempts that still cost something (API runs with prices) count too.
        let failed_cost = chain
            .attempts
            .iter()
            .filter_map(|a| a.cost_usd)
            .reduce(|a, b| a + b);
        let Some(report) = chain.report else {
            if failed_cost.is_some() {
                store::set_progress(&engine.pool, row.pk, i64::from(round), None, failed_cost)
                    .await?;
            }
            return Ok(Round::Stop(if let Some(o) = interrupted(run, stop) {
                o
            } else if chain.stopped_by(AttemptStatus::Timeout) {
                Outcome::ended(
                    TaskState::Failed,
                    format!(
                        "timed out: the task's {}s budget ran out while the agent worked ({})",
                        run.budget().as_secs(),
                        chain.reasons()
                    ),
                )
            } else {
                Outcome::ended(
                    TaskState::Error,
                    format!("no provider could run the task: {}", chain.reasons()),
                )
            }));
        };
        store::set_progress(
            &engine.pool,
            row.pk,
            i64::from(round),
            Some(&report.provider),
            match (report.cost_usd, failed_cost) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
        )
        .await?;
        let unchanged = ws.snapshot(engine).await?.same_as(&round_start);
        let earlier_work =
            unchanged && round == 1 && holds_cut_off_work(run, ws, &round_start).await?;
        if earlier_work {
            run.note(
                store::EventKind::Agent,
                "the agent changed nothing: the gates check the work the branch holds from an earlier run",
            )
            .await;
        } else if unchanged {
            return Ok(Round::Stop(Outcome::ended(
                TaskState::Failed,
                format!(
                    "the agent ({}) changed nothing in round {round}",
                    report.provider
                ),
            )));
        }
        run.note(
            store::EventKind::Gates,
            &format!("round {round}: running {} gate(s)", ws.planned.len()),
        )
        .await;
        let mut gate_config = ws.gates_config.clone();
        gate_config.timeout = gate_config
            .timeout
            .min(run.time_left().max(Duration::from_secs(1)));
        let at = gates::Recorded {
            engine,
            task: row.pk,
            run_seq: row.run_seq,
            round: i64::from(round),
        };
        let results = gates::run_recorded(
            at,
            &ws.planned,
            &ws.workdir,
            &ws.gate_env,
            &gate_config,
            cancel,
            &*ws.record,
            engine.jail(&ws.paths, ws.egress.gates_net()),
        )
        .await?;
        if let Some(o) = interrupted(run, stop) {
            return Ok(Round::Stop(o));
        }
        let failures: Vec<GateResult> = results.into_iter().filter(|r| !r.status.is_ok()).collect();
        Ok(if failures.is_empty() {
            Round::Passed
        } else {
            Round::Retry(failures)
        })
    }
}

/// Whether the branch holds the work of the run before this one, which was cut off (its worker
/// died, or a shutdown interrupted it) after writing or committing it: an agent with nothing
/// to add has not failed then, and the gates judge what is there. Not after a run that ended
/// (a retry, or a fix asked for, must change something), nor for a branch that only fell
/// behind its base.
async fn holds_cut_off_work(
    run: &Run<'_>,
    ws: &Workspace,
    start: &crate::git::ops::Snapshot,
) -> anyhow::Result<bool> {
    let (engine, row) = (run.engine, run.row);
    if !ws.worktree.reused_branch
        || row.run_seq < 2
        || !store::run_cut_off(&engine.pool, row.pk, row.run_seq - 1).await?
    {
        return Ok(false);
    }
    let git = &engine.git;
    let Some(fork) = git
        .merge_base(&ws.home_git, &run.source.base_sha, &ws.worktree.head)
        .await?
    else {
        return Ok(false);
    };
    Ok(git.tree_of(&ws.home_git, &fork).await? != start.tree)
}

/// What a round's agents used, in the operators' metrics: tokens where the provider reports
/// them, cost where it reports or prices it (failed attempts included).
fn count_spending(engine: &crate::engine::Engine, role: &str, chain: &providers::ChainOutcome) {
    let m = &engine.metrics;
    for a in &chain.attempts {
        if let Some(cost) = a.cost_usd {
            m.agent_cost_usd_total
                .with_label_values(&[&a.provider, role])
                .inc_by(cost.max(0.0));
        }
    }
    if let Some(report) = &chain.report {
        if let Some(cost) = report.cost_usd {
            m.agent_cost_usd_total
                .with_label_values(&[&report.provider, role])
                .inc_by(cost.max(0.0));
        }
        if let Some((input, output)) = report.tokens {
            for (direction, n) in [("input", input), ("output", output)] {
                m.agent_tokens_total
                    .with_label_values(&[&report.provider, role, direction])
                    .inc_by(n);
            }
        }
    }
}
