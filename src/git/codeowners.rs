//! CODEOWNERS as GitHub reads it: the first of `.github/CODEOWNERS`, `CODEOWNERS`,
//! `docs/CODEOWNERS`; gitignore-style patterns; the last matching line wins; a pattern without
//! owners clears ownership; lines using syntax GitHub does not support (`!` negation, `[ ]`
//! ranges, `\#` escapes) are skipped and reported, as GitHub does.

/// Where GitHub looks, in order.
pub const LOCATIONS: &[&str] = &[".github/CODEOWNERS", "CODEOWNERS", "docs/CODEOWNERS"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// Normalised: anchored at the root, `**/` in front when it may match at any depth.
    pattern: String,
    dir_only: bool,
    owners: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Codeowners {
    rules: Vec<Rule>,
    /// `(line number, why)` for each skipped line.
    pub errors: Vec<(usize, String)>,
}

/// Reviewers to request: user logins and team slugs (without the org).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reviewers {
    pub users: Vec<String>,
    pub teams: Vec<String>,
}

impl Codeowners {
    pub fn parse(text: &str) -> Self {
        let mut out = Codeowners::default();
        for (i, raw) in text.lines().enumerate() {
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let Some(pattern) = parts.next() else {
                continue;
            };
            if pattern.starts_with('!')
                || pattern.contains('[')
                || pattern.contains(']')
                || pattern.starts_with("\\#")
            {
                out.errors.push((
                    i + 1,
                    format!("`{pattern}` uses syntax CODEOWNERS does not support"),
                ));
                continue;
            }
            let owners: Vec<String> = parts.map(str::to_owned).collect();
            out.rules.push(normalise(pattern, owners));
        }
        out
    }

    /// The owners of `path` (relative, `/`-separated): `None` when no line matches, an empty
    /// list when the last matching line has no owners.
    pub fn owners_of(&self, path: &str) -> Option<&[String]> {
        self.rules
            .iter()
            .rev()
            .find(|r| rule_matches(r, path))
            .map(|r| r.owners.as_slice())
    }

    /// Reviewers for a change to `paths`: `@user` → users, `@org/team` → team slugs. Email
    /// owners cannot be requested by login and are left out.
    pub fn reviewers_for<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> Reviewers {
        let mut r = Reviewers::default();
        for path in paths {
            for owner in self.owners_of(path).unwrap_or_default() {
                add_owner(&mut r, owner);
            }
        }
        r
    }
}

/// Adds `@user` or `@org/team` (or a bare login) to the reviewers, once.
pub fn add_owner(r: &mut Reviewers, owner: &str) {
    let Some(name) = owner
        .strip_prefix('@')
        .or((!owner.contains('@')).then_some(owner))
    else {
        return;
    };
    let (list, item) = match name.split_once('/') {
        Some((_, team)) => (&mut r.teams, team.to_owned()),
        None => (&mut r.users, name.to_owned()),
    };
    if !item.is_empty() && !list.iter().any(|x| x.eq_ignore_ascii_case(&item)) {
        list.push(item);
    }
}

fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    // An inline comment starts at a `#` after whitespace.
    let bytes = line.as_bytes();
    for i in 1..bytes.len() {
        if bytes[i] == b'#' && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

fn normalise(pattern: &str, owners: Vec<String>) -> Rule {
    let dir_only = pattern.ends_with('/');
    let trimmed = pattern.trim_end_matches('/');
    let anchored = trimmed.starts_with('/') || trimmed.contains('/');
    let body = trimmed.trim_start_matches('/');
    let pattern = if anchored || body.starts_with("**") {
        body.to_owned()
    } else {
        format!("**/{body}")
    };
    Rule {
        pattern,
        dir_only,
        owners,
    }
}

/// A pattern owns a path it matches, and everything under a directory it matches, except
/// that a pattern ending in `/*` owns only the files directly in that directory (GitHub's
/// documented `docs/*` example; plain gitignore would cascade).
fn rule_matches(rule: &Rule, path: &str) -> bool {
    let p = rule.pattern.as_bytes();
    if !rule.dir_only && glob(p, path.as_bytes()) {
        return true;
    }
    if rule.pattern.ends_with("/*") {
        return false;
    }
    path.char_indices()
        .filter(|(_, c)| *c == '/')
        .any(|(i, _)| glob(p, &path.as_bytes()[..i]))
}

/// gitignore-style glob: `*` and `?` stop at `/`, `**` crosses it, `**/` is zero or more
/// directories.
fn glob(p: &[u8], s: &[u8]) -> bool {
    if let Some(rest) = p.strip_prefix(b"**/") {
        return glob(rest, s)
            || s.iter()
                .enumerate()
                .any(|(i, c)| *c == b'/' && glob(rest, &s[i + 1..]));
    }
    if let Some(rest) = p.strip_prefix(b"**") {
        return (0..=s.len()).any(|i| glob(rest, &s[i..]));
    }
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => {
            let stop = s.iter().position(|c| *c == b'/').unwrap_or(s.len());
            (0..=stop).any(|i| glob(&p[1..], &s[i..]))
        }
        Some(b'?') => s.first().is_some_and(|c| *c != b'/') && glob(&p[1..], &s[1..]),
        Some(c) => s.first() == Some(c) && glob(&p[1..], &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example file from GitHub's documentation ("About code owners"), in order.
    const GITHUB_EXAMPLE: &str = r#"
# This is a comment.
# Each line is a file pattern followed by one or more owners.
*       @global-owner1 @global-owner2
*.js    @js-owner #This is an inline comment.
*.go docs@example.com
*.txt @octo-org/octocats
/build/logs/ @doctocat
docs/*  docs@example.com
apps/ @octocat
/docs/ @doctocat
/scripts/ @doctocat @octocat
**/logs @octocat
/apps/ @octocat
/apps/github
"#;

    fn owners(co: &Codeowners, path: &str) -> Option<Vec<String>> {
        co.owners_of(path).map(|o| o.to_vec())
    }

    fn v(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn githubs_documented_examples() {
        let co = Codeowners::parse(GITHUB_EXAMPLE);
        assert!(co.errors.is_empty());
        let table: &[(&str, Option<Vec<String>>)] = &[
            ("README.md", v(&["@global-owner1", "@global-owner2"])),
            ("src/app.js", v(&["@js-owner"])),
            ("main.go", v(&["docs@example.com"])),
            ("notes/todo.txt", v(&["@octo-org/octocats"])),
            ("build/logs/today.log", v(&["@octocat"])),
            ("docs/getting-started.md", v(&["@doctocat"])),
            ("scripts/deploy.sh", v(&["@doctocat", "@octocat"])),
            ("deeply/nested/logs/x.txt", v(&["@octocat"])),
            ("web/apps/index.html", v(&["@octocat"])),
            ("apps/main.rs", v(&["@octocat"])),
            // An owner-less line clears ownership.
            ("apps/github/hooks.rs", v(&[])),
        ];
        for (path, want) in table {
            assert_eq!(&owners(&co, path), want, "{path}");
        }
    }

    #[test]
    fn single_star_does_not_cross_directories() {
        let co = Codeowners::parse("docs/*  docs@example.com\n");
        assert_eq!(
            owners(&co, "docs/getting-started.md"),
            v(&["docs@example.com"])
        );
        assert_eq!(owners(&co, "docs/build-app/troubleshooting.md"), None);
        assert_eq!(
            owners(&co, "src/docs/x.md"),
            None,
            "a middle slash anchors at the root"
        );
    }

    #[test]
    fn last_match_wins_and_patterns_are_case_sensitive() {
        let co = Codeowners::parse("/apps/ @octocat\n/apps/github @doctocat\n*.JS @upper\n");
        assert_eq!(owners(&co, "apps/github/x"), v(&["@doctocat"]));
        assert_eq!(owners(&co, "apps/other/x"), v(&["@octocat"]));
        assert_eq!(owners(&co, "a.js"), None);
        assert_eq!(owners(&co, "a.JS"), v(&["@upper"]));
    }

    #[test]
    fn unsupported_syntax_is_skipped_and_reported() {
        let co = Codeowners::parse("* @all\n!*.md @nobody\n*.[ch] @c\n\\#notes @x\n");
        assert_eq!(co.errors.len(), 3);
        assert_eq!(co.errors[0].0, 2);
        assert_eq!(owners(&co, "README.md"), v(&["@all"]));
        assert_eq!(owners(&co, "main.c"), v(&["@all"]));
    }

    #[test]
    fn reviewers_split_users_and_team_slugs() {
        let co = Codeowners::parse("* @alice\n*.rs @acme/rustaceans @bob alice@example.com\n");
        let r = co.reviewers_for(["src/lib.rs", "README.md", "src/main.rs"]);
        assert_eq!(r.users, ["bob", "alice"]);
        assert_eq!(r.teams, ["rustaceans"]);
    }

    #[test]
    fn globs() {
        assert!(glob(b"**/logs", b"logs"));
        assert!(glob(b"**/logs", b"a/b/logs"));
        assert!(glob(b"a/**/b", b"a/b"));
        assert!(glob(b"a/**/b", b"a/x/y/b"));
        assert!(glob(b"a/**", b"a/x/y"));
        assert!(!glob(b"*.js", b"a/b.js"));
        assert!(glob(b"?.js", b"a.js"));
    }
}
