//! Every message autodev posts on GitHub, built in one place.

use crate::core::untrusted::code_block;
use crate::store::{GateRow, TaskRow, TaskState};

/// Hidden in the status comment, so a re-run finds it instead of posting another.
pub fn status_marker(task_id: &str) -> String {
    format!("<!-- autodev:status {task_id} -->")
}

/// Hidden in a reply, so a re-run of the job that posts it does not post it twice.
pub fn reply_marker(key: &str) -> String {
    format!("<!-- autodev:reply {key} -->")
}

fn state_line(task: &TaskRow) -> String {
    let icon = match task.state {
        TaskState::Queued => "⏳",
        TaskState::Running => "🏃",
        TaskState::Passed => "✅",
        TaskState::Failed => "❌",
        TaskState::Error => "⚠️",
        TaskState::Cancelled => "🛑",
    };
    format!("{icon} **{}**", task.state)
}

/// The status comment of a task, edited in place as the task moves.
pub fn status_comment(task: &TaskRow, gates: &[GateRow], page: Option<&str>) -> String {
    let mut s = format!(
        "{}\n### autodev: {}\n\n",
        status_marker(&task.task_id),
        state_line(task)
    );
    s.push_str(&format!(
        "- role: `{}`\n- branch: `{}`\n",
        task.role, task.branch
    ));
    if task.rounds > 0 {
        s.push_str(&format!("- round: {}", task.rounds));
        if let Some(p) = &task.provider {
            s.push_str(&format!(" (provider `{p}`)"));
        }
        s.push('\n');
    }
    if let Some(cost) = task.cost_usd {
        s.push_str(&format!("- cost: ${cost:.2}\n"));
    }
    if let Some(notice) = &task.notice {
        s.push_str(&format!("- ⚠️ {notice}\n"));
    }
    if let Some(pr) = task.pr_number {
        s.push_str(&format!("- pull request: #{pr}\n"));
    }
    if let (Some(start), Some(end)) = (task.started_at, task.finished_at) {
        s.push_str(&format!(
            "- duration: {}s\n",
            (end - start).num_seconds().max(0)
        ));
    }
    let latest: Vec<&GateRow> = gates
        .iter()
        .filter(|g| g.run_seq == task.run_seq && g.round == task.rounds)
        .collect();
    if !latest.is_empty() {
        s.push_str("\n| gate | result | time |\n|---|---|---|\n");
        for g in latest {
            s.push_str(&format!(
                "| `{}` | {} | {:.1}s |\n",
                g.gate,
                g.status,
                g.duration_ms as f64 / 1000.0
            ));
        }
    }
    if let Some(e) = &task.last_error
        && task.state.is_terminal()
    {
        s.push_str(&format!(
            "\n<details><summary>Why</summary>\n\n{}\n</details>\n",
            code_block(&crate::proc::exec::tail_chars(e, 3000))
        ));
    }
    if let Some(url) = page {
        s.push_str(&format!("\n[Details]({url})\n"));
    }
    s.push_str("\nComment `/autodev help` for commands.");
    s
}

pub fn refusal(login: &str) -> String {
    format!(
        "@{login} autodev only takes labels and commands from people with write, maintain or admin permission on this repository."
    )
}

pub fn command_error(error: &str) -> String {
    format!(
        "autodev did not understand that: {error}.\n\n{}",
        super::command::help()
    )
}

pub fn help() -> String {
    super::command::help()
}

pub fn already_active(task: &TaskRow) -> String {
    format!(
        "Task `{}` is already {} on `{}`; nothing new was started. Comment `/autodev cancel` to stop it.",
        task.task_id, task.state, task.branch
    )
}

pub fn status_reply(task: Option<&TaskRow>) -> String {
    match task {
        None => "There is no autodev task for this issue yet. Label it `autodev:<role>` or comment `/autodev run <role>`.".into(),
        Some(t) => {
            let mut s = format!("Task `{}`: {} on `{}`", t.task_id, state_line(t), t.branch);
            if let Some(e) = &t.last_error {
                s.push_str(&format!("\n\n{}", code_block(&crate::proc::exec::tail_chars(e, 1500))));
            }
            s
        }
    }
}

pub fn unknown_role(role: &str, known: &[&str]) -> String {
    format!(
        "autodev has no role `{role}`. Known roles: {}.",
        known
            .iter()
            .map(|r| format!("`{r}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

pub fn no_role() -> String {
    "Which role? Comment `/autodev run <role>` or label the issue `autodev:<role>`.".into()
}

pub fn bad_spec(error: &str) -> String {
    format!("autodev cannot start this task: {error}")
}

pub fn nothing_to_cancel() -> String {
    "There is no queued or running autodev task for this issue.".into()
}

pub fn fix_needs_pull_request() -> String {
    "`/autodev fix` works on a pull request from an autodev branch; on an issue, use `/autodev retry`.".into()
}

pub fn fix_not_autodev(branch: &str) -> String {
    format!(
        "`{branch}` is not a branch of an autodev task, so there is nothing for `/autodev fix` to continue."
    )
}

/// GitHub's limit on a check run's `summary` and `text`.
pub const CHECK_OUTPUT_LIMIT: usize = 65_535;

/// A check run's conclusion for a task's state; `None` while it is still going.
pub fn check_conclusion(task: &TaskRow) -> Option<&'static str> {
    match task.state {
        TaskState::Queued | TaskState::Running => None,
        TaskState::Passed => Some("success"),
        TaskState::Failed
            if task
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("timed out")) =>
        {
            Some("timed_out")
        }
        TaskState::Failed | TaskState::Error => Some("failure"),
        TaskState::Cancelled => Some("cancelled"),
    }
}

/// The check run's title, summary (gate table, provider, rounds, duration, cost) and text
/// (the failing gates' output), each within GitHub's limits.
pub fn check_output(task: &TaskRow, gates: &[GateRow]) -> (String, String, String) {
    let title = match task.state {
        TaskState::Passed => "Acceptance gates passed".to_owned(),
        TaskState::Queued | TaskState::Running => "Working".to_owned(),
        state => format!("Task {state}"),
    };
    let mut summary = status_comment(task, gates, None);
    summary = summary.replace(&status_marker(&task.task_id), "");
    let mut text = String::new();
    for g in gates
        .iter()
        .filter(|g| g.run_seq == task.run_seq && g.round == task.rounds && g.status != "passed")
    {
        text.push_str(&format!(
            "### `{}` ({})\n\n{}\n\n",
            g.gate,
            g.status,
            code_block(&crate::proc::exec::tail_chars(&g.output, 20_000))
        ));
    }
    (title, clip(&summary), clip(&text))
}

fn clip(s: &str) -> String {
    if s.len() <= CHECK_OUTPUT_LIMIT {
        return s.to_owned();
    }
    let marker = "\n\n[cut to fit GitHub's limit]";
    let mut end = CHECK_OUTPUT_LIMIT - marker.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &s[..end])
}

/// The body of a task's pull request.
/// The body of a task's pull request; `left_out` says which code owners were not asked to
/// review, and why.
pub fn pr_body(task: &TaskRow, gates: &[GateRow], left_out: &[String]) -> String {
    let mut s = format!(
        "{}\nautodev task `{}` (role `{}`).\n\n",
        pr_marker(&task.task_id),
        task.task_id,
        task.role
    );
    s.push_str(&status_comment(task, gates, None).replace(&status_marker(&task.task_id), ""));
    if !left_out.is_empty() {
        s.push_str("\n\nNot asked to review:\n");
        for why in left_out {
            s.push_str(&format!("- {why}\n"));
        }
    }
    if let Some(issue) = task.issue_number {
        s.push_str(&format!("\n\nCloses #{issue}\n"));
    }
    clip(&s)
}

pub fn pr_marker(task_id: &str) -> String {
    format!("<!-- autodev:pr {task_id} -->")
}

/// The identifier of the check run's "Open PR" button.
pub const OPEN_PR_ACTION: &str = "open_pr";

pub fn nothing_to_open() -> String {
    "There is no passed and pushed autodev task for this issue, so there is no pull request to open yet.".into()
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::core::ids::TaskKey;

    /// A task of issue #7 that failed its tests in round 2 after a passing lint.
    fn failed_task() -> (TaskRow, Vec<GateRow>) {
        let at = Utc.with_ymd_and_hms(2026, 12, 1, 9, 30, 0).unwrap();
        let task = TaskRow {
            pk: TaskKey(42),
            repo: "acme/web".into(),
            task_id: "issue-7".into(),
            role: "backend".into(),
            title: "Add a health check".into(),
            spec: "{}".into(),
            branch: "auto/backend/issue-7".into(),
            base_branch: Some("main".into()),
            state: TaskState::Failed,
            run_seq: 1,
            job_id: None,
            rounds: 2,
            provider: Some("claude_cli".into()),
            last_error: Some("acceptance not met after 2 round(s): tests: exit 1".into()),
            head_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
            worktree: None,
            cost_usd: Some(0.42),
            cancel_requested: false,
            lease_owner: None,
            lease_until: None,
            agent_pgid: None,
            agent_marker: None,
            created_at: at,
            updated_at: at,
            started_at: Some(at),
            finished_at: Some(at),
            installation_id: Some(1),
            issue_number: Some(7),
            requested_by: Some("octocat".into()),
            status_comment_id: None,
            check_run_id: None,
            clone_url: None,
            pushed_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
            pr_number: None,
            pr_state: None,
            notice: Some("the issue's `autodev` block was not read".into()),
            base_sha: None,
            push_intent: None,
        };
        let gate = |round, gate: &str, status: &str, code, output: &str| GateRow {
            run_seq: 1,
            round,
            gate: gate.into(),
            command: Some(format!("make {gate}")),
            status: status.into(),
            exit_code: code,
            duration_ms: 1200,
            output: output.into(),
            at,
        };
        let gates = vec![
            gate(2, "lint", "passed", Some(0), ""),
            gate(
                2,
                "tests",
                "failed",
                Some(1),
                "test health ... FAILED\n```\nclosing the block is not possible\n",
            ),
        ];
        (task, gates)
    }

    #[test]
    fn the_status_comment_of_a_failed_task() {
        let (task, gates) = failed_task();
        insta::assert_snapshot!(status_comment(
            &task,
            &gates,
            Some("https://autodev.example.com/view/repos/acme/web/tasks/issue-7")
        ));
    }

    #[test]
    fn the_check_run_of_a_failed_task() {
        let (task, gates) = failed_task();
        let (title, summary, text) = check_output(&task, &gates);
        insta::assert_snapshot!(format!("{title}\n---\n{summary}\n---\n{text}"));
    }

    #[test]
    fn the_pull_request_body_of_a_passed_task() {
        let (mut task, mut gates) = failed_task();
        task.state = TaskState::Passed;
        task.last_error = None;
        gates[1].status = "passed".into();
        gates[1].exit_code = Some(0);
        gates[1].output = String::new();
        insta::assert_snapshot!(pr_body(&task, &gates, &[]));
    }
}
