//! The `/autodev` command language: one command per line, outside code and quotes, parsed by a
//! table of small parsers. The help text comes from an exhaustive match, so a new command
//! cannot ship without it.

use pulldown_cmark::{Event as Md, Parser, Tag, TagEnd};

use crate::core::roles::check_role_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run (or re-run) the issue's task, optionally with another role.
    Run {
        role: Option<String>,
    },
    Retry,
    Cancel,
    Status,
    Help,
    /// On a pull request from an autodev branch: another round with these instructions.
    Fix {
        instructions: String,
    },
    /// Open the pull request of the issue's passed task now.
    Pr,
}

/// The kinds of command, for the help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Run,
    Retry,
    Cancel,
    Status,
    Help,
    Fix,
    Pr,
}

const KINDS: [Kind; 7] = [
    Kind::Run,
    Kind::Retry,
    Kind::Cancel,
    Kind::Status,
    Kind::Pr,
    Kind::Fix,
    Kind::Help,
];

impl Kind {
    fn of(c: &Command) -> Kind {
        match c {
            Command::Run { .. } => Kind::Run,
            Command::Retry => Kind::Retry,
            Command::Cancel => Kind::Cancel,
            Command::Status => Kind::Status,
            Command::Help => Kind::Help,
            Command::Fix { .. } => Kind::Fix,
            Command::Pr => Kind::Pr,
        }
    }

    fn usage(self) -> (&'static str, &'static str) {
        match self {
            Kind::Run => (
                "/autodev run [role]",
                "run this issue's task, with the given role or the one from its `autodev:<role>` label",
            ),
            Kind::Retry => (
                "/autodev retry",
                "run the task again; it continues on its branch",
            ),
            Kind::Cancel => ("/autodev cancel", "stop the running task"),
            Kind::Status => ("/autodev status", "show the task's state"),
            Kind::Fix => (
                "/autodev fix <instructions>",
                "on an autodev pull request: another round on its branch with these instructions and the review comments",
            ),
            Kind::Help => ("/autodev help", "show this help"),
            Kind::Pr => (
                "/autodev pr",
                "open the pull request of the passed task now",
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("`/autodev` needs a command")]
    Empty,
    #[error("unknown command `{0}`")]
    UnknownVerb(String),
    #[error("`/autodev {verb}` takes no arguments, but got `{args}`")]
    UnexpectedArguments { verb: &'static str, args: String },
    #[error("`/autodev fix` needs instructions, e.g. `/autodev fix handle the empty list`")]
    MissingInstructions,
    #[error("{0}")]
    BadRole(String),
}

/// Every `/autodev` line of a comment, in order. Lines inside code blocks, inline code and
/// quotes are not commands.
pub fn parse_comment(text: &str) -> Vec<Result<Command, CommandError>> {
    command_lines(text).iter().map(|l| parse_line(l)).collect()
}

fn parse_line(line: &str) -> Result<Command, CommandError> {
    let rest = line
        .trim()
        .strip_prefix("/autodev")
        .unwrap_or_default()
        .trim();
    let (verb, args) = match rest.split_once(char::is_whitespace) {
        Some((v, a)) => (v, a.trim()),
        None => (rest, ""),
    };
    type P = fn(&str) -> Result<Command, CommandError>;
    const PARSERS: &[(&str, P)] = &[
        ("run", parse_run),
        ("retry", |a| no_args("retry", a, Command::Retry)),
        ("cancel", |a| no_args("cancel", a, Command::Cancel)),
        ("status", |a| no_args("status", a, Command::Status)),
        ("help", |a| no_args("help", a, Command::Help)),
        ("fix", parse_fix),
        ("pr", |a| no_args("pr", a, Command::Pr)),
    ];
    if verb.is_empty() {
        return Err(CommandError::Empty);
    }
    let verb_lower = verb.to_ascii_lowercase();
    PARSERS
        .iter()
        .find(|(name, _)| *name == verb_lower)
        .map(|(_, p)| p(args))
        .unwrap_or_else(|| Err(CommandError::UnknownVerb(verb.to_owned())))
}

fn no_args(verb: &'static str, args: &str, c: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(c)
    } else {
        Err(CommandError::UnexpectedArguments {
            verb,
            args: args.to_owned(),
        })
    }
}

fn parse_run(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split_whitespace();
    let role = words
        .next()
        .map(|r| r.trim_start_matches("autodev:").to_owned());
    if let Some(extra) = words.next() {
        return Err(CommandError::UnexpectedArguments {
            verb: "run",
            args: format!("{} {extra}", role.unwrap_or_default()),
        });
    }
    if let Some(r) = &role {
        check_role_name(r).map_err(CommandError::BadRole)?;
    }
    Ok(Command::Run { role })
}

fn parse_fix(args: &str) -> Result<Command, CommandError> {
    if args.is_empty() {
        return Err(CommandError::MissingInstructions);
    }
    Ok(Command::Fix {
        instructions: args.to_owned(),
    })
}

/// The help text, one line per command.
pub fn help() -> String {
    let mut s = String::from(
        "autodev commands (one per line, in a comment on the issue or pull request):\n\n",
    );
    for kind in KINDS {
        let (usage, what) = kind.usage();
        s.push_str(&format!("- `{usage}`: {what}\n"));
    }
    s
}

/// The command's usage line.
pub fn usage(c: &Command) -> &'static str {
    Kind::of(c).usage().0
}

/// Lines of prose that start with `/autodev`, skipping code and quotes.
fn command_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut quote_depth = 0usize;
    let mut in_code_block = false;
    let flush = |current: &mut String, lines: &mut Vec<String>| {
        for l in current.lines() {
            if l.trim_start().starts_with("/autodev") {
                let word_end = l.trim_start()["/autodev".len()..].chars().next();
                if word_end.is_none_or(char::is_whitespace) {
                    lines.push(l.trim().to_owned());
                }
            }
        }
        current.clear();
    };
    for ev in Parser::new(text) {
        match ev {
            Md::Start(Tag::BlockQuote(_)) => quote_depth += 1,
            Md::End(TagEnd::BlockQuote(_)) => quote_depth = quote_depth.saturating_sub(1),
            Md::Start(Tag::CodeBlock(_)) => in_code_block = true,
            Md::End(TagEnd::CodeBlock) => in_code_block = false,
            Md::Text(t) if quote_depth == 0 && !in_code_block => current.push_str(&t),
            // Inline code stays in the text with its backticks: a line that starts with it is
            // not a command, and `fix` instructions keep it.
            Md::Code(c) if quote_depth == 0 && !in_code_block => {
                current.push('`');
                current.push_str(&c);
                current.push('`');
            }
            Md::SoftBreak | Md::HardBreak => current.push('\n'),
            Md::End(TagEnd::Paragraph) | Md::End(TagEnd::Heading(_)) | Md::End(TagEnd::Item) => {
                flush(&mut current, &mut lines);
            }
            _ => {}
        }
    }
    flush(&mut current, &mut lines);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_on_their_own_lines() {
        assert_eq!(parse_comment("/autodev retry"), [Ok(Command::Retry)]);
        assert_eq!(
            parse_comment("Thanks!\n/autodev run frontend\nand more text\n\n/autodev status"),
            [
                Ok(Command::Run {
                    role: Some("frontend".into())
                }),
                Ok(Command::Status)
            ]
        );
        assert_eq!(
            parse_comment("/autodev run"),
            [Ok(Command::Run { role: None })]
        );
        assert_eq!(
            parse_comment("/autodev fix handle `None` too"),
            [Ok(Command::Fix {
                instructions: "handle `None` too".into()
            })]
        );
    }

    #[test]
    fn code_quotes_and_mid_line_mentions_are_not_commands() {
        assert!(parse_comment("```\n/autodev retry\n```").is_empty());
        assert!(
            parse_comment("    /autodev retry").is_empty(),
            "indented code"
        );
        assert!(parse_comment("> /autodev cancel").is_empty());
        assert!(parse_comment("`/autodev retry`").is_empty());
        assert!(parse_comment("please run /autodev retry later").is_empty());
        assert!(parse_comment("/autodevx retry").is_empty());
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            parse_comment("/autodev frobnicate"),
            [Err(CommandError::UnknownVerb("frobnicate".into()))]
        );
        assert_eq!(parse_comment("/autodev"), [Err(CommandError::Empty)]);
        assert_eq!(
            parse_comment("/autodev fix"),
            [Err(CommandError::MissingInstructions)]
        );
        assert!(matches!(
            &parse_comment("/autodev retry now")[0],
            Err(CommandError::UnexpectedArguments { verb: "retry", .. })
        ));
        assert!(matches!(
            &parse_comment("/autodev run Back End")[0],
            Err(CommandError::UnexpectedArguments { .. })
        ));
        assert!(matches!(
            &parse_comment("/autodev run Backend")[0],
            Err(CommandError::BadRole(_))
        ));
    }

    #[test]
    fn help_lists_every_command() {
        let h = help();
        for c in [
            Command::Run { role: None },
            Command::Retry,
            Command::Cancel,
            Command::Status,
            Command::Help,
            Command::Fix {
                instructions: "x".into(),
            },
            Command::Pr,
        ] {
            assert!(h.contains(usage(&c)), "{c:?} missing from help");
        }
    }
}
