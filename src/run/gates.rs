//! Acceptance gates: `lint`, `typecheck` and each `tests` command, run outside the agent in
//! `<worktree>/<target_dir>`, each with a timeout and a bounded tail of output.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::agent::providers::ProcessRecorder;
use crate::config::GatesConfig;
use crate::core::spec::Acceptance;
use crate::proc::exec::{self, Ending};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    Passed,
    Failed,
    Skipped,
    TimedOut,
}

impl GateStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GateStatus::Passed => "passed",
            GateStatus::Failed => "failed",
            GateStatus::Skipped => "skipped",
            GateStatus::TimedOut => "timed_out",
        }
    }

    /// Passed and skipped gates do not hold a task back.
    pub fn is_ok(self) -> bool {
        matches!(self, GateStatus::Passed | GateStatus::Skipped)
    }
}

/// A gate to run: its command, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedGate {
    pub name: String,
    pub command: Result<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GateResult {
    pub name: String,
    pub command: Option<String>,
    pub status: GateStatus,
    pub exit_code: Option<i32>,
    pub duration: Duration,
    /// The tail of the output, or the reason a gate was skipped.
    pub output: String,
}

impl GateResult {
    /// One line for `last_error` and the timeline.
    pub fn summary(&self) -> String {
        let cmd = self
            .command
            .as_deref()
            .map(|c| format!(" (`{c}`)"))
            .unwrap_or_default();
        match self.status {
            GateStatus::Passed => format!("gate `{}`{cmd} passed", self.name),
            GateStatus::Skipped => format!("gate `{}` skipped: {}", self.name, self.output),
            GateStatus::TimedOut => format!(
                "gate `{}`{cmd} timed out after {}s",
                self.name,
                self.duration.as_secs()
            ),
            GateStatus::Failed => format!(
                "gate `{}`{cmd} failed with {}",
                self.name,
                match self.exit_code {
                    Some(c) => format!("exit code {c}"),
                    None => "a signal".into(),
                }
            ),
        }
    }
}

/// The gates a task asks for, in order: lint, typecheck, then each test command.
pub fn plan(
    acceptance: &Acceptance,
    config: &GatesConfig,
    dir: &Path,
    root: &Path,
    path_env: Option<&str>,
) -> Vec<PlannedGate> {
    let mut gates = Vec::new();
    let detected = detect(dir, root);
    for (name, wanted, configured, default) in [
        (
            "lint",
            acceptance.lint,
            &config.lint,
            detected.as_ref().map(|d| d.lint.clone()),
        ),
        (
            "typecheck",
            acceptance.typecheck,
            &config.typecheck,
            detected.as_ref().map(|d| d.typecheck.clone()),
        ),
    ] {
        if !wanted {
            continue;
        }
        let command = match (configured, default) {
            (Some(cmd), _) => Ok(cmd.clone()),
            (None, Some(Ok(cmd))) => match first_word(&cmd) {
                Some(prog) if exec::which(prog, path_env).is_none() => Err(format!(
                    "no {name} command configured, and `{prog}` (for the detected `{cmd}`) is not installed"
                )),
                _ => Ok(cmd),
            },
            (None, Some(Err(why))) => Err(why),
            (None, None) => Err(format!(
                "no {name} command configured (gates.{name}) and none detected: no Cargo.toml, pyproject.toml, package.json or go.mod"
            )),
        };
        gates.push(PlannedGate {
            name: name.into(),
            command,
        });
    }
    for (i, test) in acceptance.tests.iter().enumerate() {
        gates.push(PlannedGate {
            name: format!("tests[{i}]"),
            command: Ok(test.clone()),
        });
    }
    gates
}

fn first_word(cmd: &str) -> Option<&str> {
    cmd.split_whitespace().next()
}

/// Default commands for the kind of project found in `dir` or a parent up to `root`.
struct Detected {
    lint: Result<String, String>,
    typecheck: Result<String, String>,
}

fn detect(dir: &Path, root: &Path) -> Option<Detected> {
    let mut at: Option<PathBuf> = Some(dir.to_owned());
    while let Some(d) = at {
        if d.join("Cargo.toml").is_file() {
            return Some(Detected {
                lint: Ok("cargo clippy --all-targets -- -D warnings".into()),
                typecheck: Ok("cargo check --all-targets".into()),
            });
        }
        if d.join("pyproject.toml").is_file() {
            return Some(Detected {
                lint: Ok("ruff check .".into()),
                typecheck: Ok("mypy .".into()),
            });
        }
        if d.join("package.json").is_file() {
            let has_lint = std::fs::read_to_string(d.join("package.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|v| v["scripts"]["lint"].is_string());
            return Some(Detected {
                lint: if has_lint {
                    Ok("npm run lint".into())
                } else {
                    Err("no lint command configured and package.json has no `lint` script".into())
                },
                typecheck: if d.join("tsconfig.json").is_file() {
                    Ok("npx --no-install tsc --noEmit".into())
                } else {
                    Err("no typecheck command configured and there is no tsconfig.json".into())
                },
            });
        }
        if d.join("go.mod").is_file() {
            return Some(Detected {
                lint: Ok("go vet ./...".into()),
                typecheck: Ok("go build ./...".into()),
            });
        }
        if d == root {
            break;
        }
        at = d.parent().map(Path::to_owned);
    }
    None
}

/// Runs the planned gates in order (all of them, so the agent hears of every failure).
pub async fn run(
    planned: &[PlannedGate],
    dir: &Path,
    env: &[(String, String)],
    config: &GatesConfig,
    cancel: &CancellationToken,
    record: ProcessRecorder<'_>,
    jail: Option<crate::proc::sandbox::Jail<'_>>,
) -> Vec<GateResult> {
    let mut results = Vec::new();
    for gate in planned {
        if cancel.is_cancelled() {
            break;
        }
        let command = match &gate.command {
            Err(why) => {
                results.push(GateResult {
                    name: gate.name.clone(),
                    command: None,
                    status: GateStatus::Skipped,
                    exit_code: None,
                    duration: Duration::ZERO,
                    output: why.clone(),
                });
                continue;
            }
            Ok(c) => c,
        };
        let job = exec::Job {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), command.clone()],
            cwd: dir.to_owned(),
            env: env.to_vec(),
            stdin: None,
            timeout: config.timeout,
            output_limit: config.max_output_bytes,
            fd3: None,
        };
        let job = crate::proc::sandbox::confine(jail, job, &[]);
        let tap = exec::current_tap();
        if let Some(tap) = &tap {
            tap.note(&format!("gate {}: {command}", gate.name));
        }
        let started = exec::start_tapped(job, tap);
        let result = match started {
            Ok(started) => {
                record(Some(started.pgid)).await;
                let out = started.wait(cancel).await;
                record(None).await;
                Ok(out)
            }
            Err(e) => Err(e),
        };
        let result = match result {
            Ok(out) => {
                let status = match out.ending {
                    Ending::Exited(0) => GateStatus::Passed,
                    Ending::TimedOut => GateStatus::TimedOut,
                    _ => GateStatus::Failed,
                };
                GateResult {
                    name: gate.name.clone(),
                    command: Some(command.clone()),
                    status,
                    exit_code: match out.ending {
                        Ending::Exited(c) => Some(c),
                        _ => None,
                    },
                    duration: out.duration,
                    output: out.combined_tail(config.max_output_bytes),
                }
            }
            Err(e) => GateResult {
                name: gate.name.clone(),
                command: Some(command.clone()),
                status: GateStatus::Failed,
                exit_code: None,
                duration: Duration::ZERO,
                output: format!("could not start /bin/sh: {e}"),
            },
        };
        results.push(result);
    }
    results
}

/// Which task and round gate results belong to.
#[derive(Clone, Copy)]
pub struct Recorded<'a> {
    pub engine: &'a crate::engine::Engine,
    pub task: crate::core::ids::TaskKey,
    pub run_seq: i64,
    pub round: i64,
}

/// The gate step of a round (a run's, or a rebase's): runs the planned gates in the sandbox
/// `jail` and records each result on the task, its gate results and its timeline.
#[allow(clippy::too_many_arguments)]
pub async fn run_recorded(
    at: Recorded<'_>,
    planned: &[PlannedGate],
    dir: &Path,
    env: &[(String, String)],
    config: &GatesConfig,
    cancel: &CancellationToken,
    record: ProcessRecorder<'_>,
    jail: Option<crate::proc::sandbox::Jail<'_>>,
) -> anyhow::Result<Vec<GateResult>> {
    let mut results = run(planned, dir, env, config, cancel, record, jail).await;
    // A gate runs the agent's code, which may print the agent's key: recorded and shown (on
    // the page, in the check run) blotted out.
    let secrets = at.engine.secrets();
    for r in &mut results {
        r.output = secrets.blot(&r.output);
    }
    for r in &results {
        crate::store::add_gate_result(
            &at.engine.pool,
            at.task,
            &crate::store::NewGateResult {
                run_seq: at.run_seq,
                round: at.round,
                gate: &r.name,
                command: r.command.as_deref(),
                status: r.status.as_str(),
                exit_code: r.exit_code.map(i64::from),
                duration_ms: r.duration.as_millis() as i64,
                output: &r.output,
            },
        )
        .await?;
        at.engine
            .record(
                at.task,
                at.run_seq,
                crate::store::EventKind::Gate,
                &r.summary(),
            )
            .await;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_skips_what_it_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let acc = Acceptance {
            lint: true,
            typecheck: true,
            tests: vec!["true".into()],
        };
        let planned = plan(
            &acc,
            &GatesConfig::default(),
            dir.path(),
            dir.path(),
            Some("/bin"),
        );
        assert_eq!(planned.len(), 3);
        assert!(
            planned[0]
                .command
                .as_ref()
                .unwrap_err()
                .contains("none detected")
        );
        assert_eq!(planned[2].command, Ok("true".into()));

        std::fs::write(dir.path().join("pyproject.toml"), "").unwrap();
        let planned = plan(
            &acc,
            &GatesConfig::default(),
            dir.path(),
            dir.path(),
            Some("/nonexistent"),
        );
        assert!(planned[0].command.as_ref().unwrap_err().contains("`ruff`"));

        let config = GatesConfig {
            lint: Some("make lint".into()),
            ..Default::default()
        };
        let planned = plan(&acc, &config, dir.path(), dir.path(), None);
        assert_eq!(planned[0].command, Ok("make lint".into()));
    }
}
