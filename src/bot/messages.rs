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
pub fn pr_body(task: &TaskRow, gates: &[GateRow]) -> String {
    let mut s = format!(
        "{}\nautodev task `{}` (role `{}`).\n\n",
        pr_marker(&task.task_id),
        task.task_id,
        task.role
    );
    s.push_str(&status_comment(task, gates, None).replace(&status_marker(&task.task_id), ""));
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
