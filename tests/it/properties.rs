//! Property tests for every parser of outside input: webhook payloads (mutations of GitHub's
//! own examples), `/autodev` commands, specs in YAML and JSON, issue blocks, CODEOWNERS,
//! durations, task ids and signed links. None may panic, and each keeps its promises on
//! whatever it accepts. `PROPTEST_CASES` sets the cases per property (`.ci/run`: 10,000).

use std::str::FromStr;
use std::time::Duration;

use autodev::bot::command;
use autodev::bot::issue_spec::{BlockRules, spec_from_issue};
use autodev::core::ids::TaskId;
use autodev::core::roles::Roles;
use autodev::core::spec::{self, Limits, SpecFormat};
use autodev::core::trust::BlockAuthor;
use autodev::git::codeowners::Codeowners;
use autodev::github::event::{Issue, Repo};
use autodev::github::webhook;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::webhooks::fixture;

/// A JSON value of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        "[a-z:/_ -]{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The JSON pointers of every value in `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

/// GitHub's webhook examples autodev reads, with the event each is delivered as.
const EXAMPLES: [&str; 11] = [
    "check_run.requested_action",
    "check_run.rerequested",
    "installation.created",
    "installation.deleted",
    "installation_repositories.added",
    "installation_repositories.removed",
    "issue_comment.created",
    "issues.labeled",
    "issues.opened",
    "ping",
    "pull_request.closed",
];

#[derive(Debug, Clone)]
enum Mutation {
    Remove(usize),
    Replace(usize, Value),
    Truncate(usize),
    Flip(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), any_json()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
    ]
}

/// `payload` with `mutations` applied, as the bytes a delivery would carry.
fn mutated(mut payload: Value, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = None;
    for m in mutations {
        let mut paths = Vec::new();
        pointers(&payload, String::new(), &mut paths);
        match m {
            Mutation::Remove(i) | Mutation::Replace(i, _) if !paths.is_empty() => {
                let path = &paths[i % paths.len()];
                let (parent, key) = path.rsplit_once('/').unwrap();
                let replacement = match m {
                    Mutation::Replace(_, v) => Some(v.clone()),
                    _ => None,
                };
                match payload.pointer_mut(if parent.is_empty() { "" } else { parent }) {
                    Some(Value::Object(o)) => {
                        let key = key.replace("~1", "/").replace("~0", "~");
                        match replacement {
                            Some(v) => {
                                o.insert(key, v);
                            }
                            None => {
                                o.remove(&key);
                            }
                        }
                    }
                    Some(Value::Array(a)) => {
                        let i: usize = key.parse().unwrap();
                        match replacement {
                            Some(v) => a[i] = v,
                            None => {
                                a.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
            Mutation::Truncate(at) => {
                let b = bytes.get_or_insert_with(|| serde_json::to_vec(&payload).unwrap());
                let at = at % (b.len() + 1);
                b.truncate(at);
            }
            Mutation::Flip(at, byte) => {
                let b = bytes.get_or_insert_with(|| serde_json::to_vec(&payload).unwrap());
                if !b.is_empty() {
                    let at = at % b.len();
                    b[at] = *byte;
                }
            }
            _ => {}
        }
    }
    bytes.unwrap_or_else(|| serde_json::to_vec(&payload).unwrap())
}

proptest! {
    #[test]
    fn webhook_payloads_never_panic_and_keep_their_issue_number(
        which in 0..EXAMPLES.len(),
        mutations in prop::collection::vec(mutation(), 0..4),
        event_name_noise in prop::option::weighted(0.05, "[a-z_]{1,30}"),
    ) {
        let name = EXAMPLES[which];
        let event = event_name_noise.unwrap_or_else(|| name.split('.').next().unwrap().to_owned());
        let body = mutated(fixture(name), &mutations);
        let first = format!("{:?}", webhook::parse(&event, &body));
        // The same bytes read the same way.
        prop_assert_eq!(&first, &format!("{:?}", webhook::parse(&event, &body)));
        if let Ok(webhook::Parsed::Event(e)) = webhook::parse(&event, &body) {
            // (A payload with invalid UTF-8 in a field autodev skips may still be read.)
            let sent: Value = serde_json::from_slice(&body).unwrap_or_default();
            let debug = format!("{e:?}");
            if let Some(n) = sent["issue"]["number"].as_u64() {
                prop_assert!(debug.contains(&format!("number: {n}")), "{debug}");
            }
        }
    }
}

/// Pieces comments are made of: commands, roles, code fences, quotes, noise.
fn comment_line() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("/autodev".to_owned()),
        Just("/AUTODEV".to_owned()),
        Just("run".to_owned()),
        Just("fix".to_owned()),
        Just("retry".to_owned()),
        Just("cancel".to_owned()),
        Just("help".to_owned()),
        Just("open-pr".to_owned()),
        Just("backend".to_owned()),
        Just("frontend".to_owned()),
        Just("```".to_owned()),
        Just("`".to_owned()),
        Just(">".to_owned()),
        Just("--".to_owned()),
        "[a-z]{1,10}",
        ".{0,12}",
    ];
    prop::collection::vec(word, 0..6).prop_map(|w| w.join(" "))
}

proptest! {
    #[test]
    fn commands_never_panic_and_come_only_from_autodev_lines(
        lines in prop::collection::vec(comment_line(), 0..8),
    ) {
        let text = lines.join("\n");
        let parsed = command::parse_comment(&text);
        let candidates = text
            .lines()
            .filter(|l| l.to_lowercase().contains("/autodev"))
            .count();
        prop_assert!(parsed.len() <= candidates, "{text:?} gave {parsed:?}");
        for result in &parsed {
            match result {
                Ok(c) => prop_assert!(!command::usage(c).is_empty()),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}

/// Spec documents: mostly the keys autodev knows, with values of any type.
fn spec_document() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("id"),
        Just("title"),
        Just("description"),
        Just("role"),
        Just("timeout"),
        Just("max_rounds"),
        Just("acceptance"),
        Just("target_dir"),
        Just("base_branch"),
        Just("provider_override"),
        Just("model"),
        Just("data_source"),
    ];
    let value = prop_oneof![
        3 => any_json(),
        1 => "[A-Za-z0-9._-]{1,20}".prop_map(Value::String),
        1 => prop_oneof![Just("backend"), Just("frontend"), Just("data")].prop_map(|r| json!(r)),
        1 => "[0-9]{1,4}[smhd]?".prop_map(Value::String),
        1 => (0u64..100_000).prop_map(|n| json!(n)),
    ];
    prop::collection::btree_map(key, value, 0..10)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

proptest! {
    #[test]
    fn specs_read_the_same_in_yaml_and_json_and_keep_the_limits(doc in spec_document()) {
        let roles = Roles::built_in();
        let limits = Limits::default();
        let json_text = serde_json::to_string(&doc).unwrap();
        let yaml_text = serde_yaml::to_string(&doc).unwrap();
        let from_json = spec::parse(&json_text, SpecFormat::Json, &roles, &limits);
        let from_yaml = spec::parse(&yaml_text, SpecFormat::Yaml, &roles, &limits);
        match (&from_json, &from_yaml) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "{json_text} / {yaml_text}: {from_json:?} vs {from_yaml:?}"),
        }
        if let Ok(s) = from_json {
            prop_assert!(TaskId::from_str(s.id.as_str()).is_ok());
            prop_assert!(s.options.timeout.is_none_or(|t| t <= limits.max_timeout && !t.is_zero()));
            prop_assert!(s.options.max_rounds.is_none_or(|r| r <= limits.max_rounds));
            prop_assert!(roles.get(&s.role).is_some(), "{}", s.role);
        }
    }

    #[test]
    fn spec_text_of_any_kind_never_panics(text in ".{0,200}", yaml in any::<bool>()) {
        let format = if yaml { SpecFormat::Yaml } else { SpecFormat::Json };
        let _ = spec::parse(&text, format, &Roles::built_in(), &Limits::default());
    }
}

fn issue(body: String) -> Issue {
    serde_json::from_value(json!({
        "number": 7,
        "title": "Add a health check",
        "body": body,
        "labels": ["autodev:backend"],
        "is_pull_request": false,
    }))
    .unwrap()
}

fn repo() -> Repo {
    Repo {
        owner: "octo".into(),
        name: "web".into(),
        clone_url: "https://github.com/octo/web.git".into(),
        default_branch: "main".into(),
    }
}

/// A YAML-ish block body: known keys, values of any type, and noise.
fn block_body() -> impl Strategy<Value = String> {
    prop_oneof![
        spec_document().prop_map(|d| serde_yaml::to_string(&d).unwrap()),
        ".{0,80}",
        "(timeout|max_rounds|model|role|base_branch): [^\n]{0,20}",
    ]
}

proptest! {
    #[test]
    fn issue_blocks_never_panic_and_an_outsiders_block_changes_nothing(
        before in "[^`]{0,60}",
        block in block_body(),
        after in "[^`]{0,60}",
    ) {
        let roles = Roles::built_in();
        let limits = Limits::default();
        let with_block = issue(format!("{before}\n```autodev\n{block}\n```\n{after}"));
        let without = issue(format!("{before}\n{after}"));
        let rules = |author| BlockRules { author, allowed_overrides: &[], limits: &limits };
        let outsider = || BlockAuthor::Outsider { login: "mallory".into() };
        let read = spec_from_issue(&with_block, &repo(), "backend", &roles, &rules(outsider()));
        let plain = spec_from_issue(&without, &repo(), "backend", &roles, &rules(outsider()));
        match (&read, &plain) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(&a.spec.options, &b.spec.options);
                prop_assert!(a.notice.is_some());
            }
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "{read:?} vs {plain:?}"),
        }
        // A writer's block is read, and kept within the limits.
        if let Ok(s) = spec_from_issue(&with_block, &repo(), "backend", &roles, &rules(BlockAuthor::Writer)) {
            prop_assert!(s.spec.options.timeout.is_none_or(|t| t <= limits.max_timeout));
            prop_assert!(s.spec.options.max_rounds.is_none_or(|r| r <= limits.max_rounds));
        }
    }
}

/// CODEOWNERS lines: patterns of glob characters, owners of every form.
fn codeowners_line() -> impl Strategy<Value = String> {
    let pattern = "[a-z*?/.!\\[\\]\\\\#]{1,16}";
    let owner = prop_oneof![
        "@[a-z]{1,8}",
        "@[a-z]{1,6}/[a-z]{1,6}",
        "[a-z]{1,6}@[a-z]{1,6}\\.com",
        "[^ \n]{1,8}",
    ];
    (
        pattern,
        prop::collection::vec(owner, 0..3),
        prop::option::of("#.{0,10}"),
    )
        .prop_map(|(p, o, c)| format!("{p} {} {}", o.join(" "), c.unwrap_or_default()))
}

proptest! {
    #[test]
    fn codeowners_never_panics_and_the_last_matching_line_wins(
        lines in prop::collection::vec(codeowners_line(), 0..12),
        path in "[a-z]{1,6}(/[a-z.]{1,6}){0,4}",
        org in "[a-z]{1,6}",
    ) {
        let text = lines.join("\n");
        let owners = Codeowners::parse(&text);
        let _ = owners.owners_of(&path);
        let r = owners.reviewers_for([path.as_str()], &org);
        for team in &r.teams {
            prop_assert!(!team.contains('/'), "a team slug, never another org's: {team}");
        }
        // A last line naming the path exactly owns it.
        let last = format!("{text}\n/{path} @last-word");
        let last = Codeowners::parse(&last);
        prop_assert_eq!(last.owners_of(&path), Some(&["@last-word".to_owned()][..]));
        // `*` owns every path, unless a later line matches it.
        let star = Codeowners::parse(&format!("* @everyone\n{text}"));
        prop_assert!(star.owners_of(&path).is_some());
    }

    #[test]
    fn codeowners_matches_a_long_path_against_hostile_stars(stars in 1usize..40, depth in 1usize..200) {
        let pattern = "**/a".repeat(stars) + "/b";
        let path = vec!["a"; depth].join("/") + "/c";
        let owners = Codeowners::parse(&format!("{pattern} @x"));
        prop_assert_eq!(owners.owners_of(&path), None);
    }
}

proptest! {
    #[test]
    fn durations_read_as_their_parts(h in 0u64..1000, m in 0u64..1000, s in 0u64..1000) {
        let text = format!("{h}h{m}m{s}s");
        prop_assert_eq!(
            spec::parse_duration(&text),
            Ok(Duration::from_secs(h * 3600 + m * 60 + s))
        );
        let d = Duration::from_secs(h * 3600 + m * 60 + s);
        if !d.is_zero() {
            prop_assert_eq!(spec::parse_duration(&spec::human_duration(d)), Ok(d));
        }
    }

    #[test]
    fn duration_text_of_any_kind_never_panics(text in ".{0,40}", n in any::<u64>()) {
        let _ = spec::parse_duration(&text);
        let _ = spec::parse_duration(&format!("{n}d{n}h"));
        let _ = spec::parse_timeout(&json!(text));
    }

    #[test]
    fn task_ids_are_safe_branch_components(id in "[A-Za-z0-9._\\-/ ~^:?*\\[\\\\@{]{0,110}") {
        match TaskId::from_str(&id) {
            Ok(t) => {
                let s = t.as_str();
                prop_assert!(!s.is_empty() && s.len() <= TaskId::MAX_LEN);
                prop_assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
                prop_assert!(!s.starts_with('.') && !s.starts_with('-') && !s.ends_with('.'));
                prop_assert!(!s.contains("..") && !s.ends_with(".lock"));
            }
            Err(e) => prop_assert!(e.to_string().contains("is not valid")),
        }
    }

    #[test]
    fn well_formed_task_ids_are_taken(id in "[A-Za-z0-9_][A-Za-z0-9_-]{0,98}") {
        prop_assert_eq!(TaskId::from_str(&id).map(|t| t.as_str().to_owned()), Ok(id));
    }
}

/// Settings with an API token, so that page links are signed.
static SIGNED: std::sync::LazyLock<autodev::config::Settings> = std::sync::LazyLock::new(|| {
    use autodev::config::{Env, Overrides, Settings};
    let dir = std::env::temp_dir();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    Settings::load(
        Env::from_pairs([
            (
                "AUTODEV_DATA_DIR",
                dir.join("autodev-properties").to_str().unwrap(),
            ),
            ("AUTODEV_API_TOKEN", "a-token-for-signing"),
            ("HOME", "/nonexistent"),
        ]),
        Overrides {
            config: Some(root.join("config/config.yaml")),
            ..Default::default()
        },
    )
    .unwrap()
});

proptest! {
    #[test]
    fn a_signed_link_names_one_task_only(
        a in ("[a-z]{1,4}/[a-z]{1,4}|local", "[a-z0-9-]{1,8}"),
        b in ("[a-z]{1,4}/[a-z]{1,4}|local", "[a-z0-9-]{1,8}"),
    ) {
        let settings = &*SIGNED;
        let sig_a = autodev::links::signature(settings, &a.0, &a.1);
        let sig_b = autodev::links::signature(settings, &b.0, &b.1);
        prop_assert_eq!(sig_a == sig_b, a == b, "{:?} {:?}", a, b);
        let path = autodev::links::path(settings, &a.0, &a.1);
        prop_assert!(path.ends_with(&format!("?sig={sig_a}")), "{path}");
    }
}
