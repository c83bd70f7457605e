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

/// Reviewers to request: user logins and team slugs (without the org), and the owners that
/// cannot be asked, each with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reviewers {
    pub users: Vec<String>,
    pub teams: Vec<String>,
    pub left_out: Vec<String>,
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

    /// Reviewers for a change to `paths` of a repository of `org`: `@user` → users,
    /// `@org/team` → team slugs. Email owners cannot be requested by login and are left out.
    pub fn reviewers_for<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a str>,
        org: &str,
    ) -> Reviewers {
        let mut r = Reviewers::default();
        for path in paths {
            for owner in self.owners_of(path).unwrap_or_default() {
                add_owner(&mut r, owner, org);
            }
        }
        r
    }
}

/// Adds `@user` or `@org/team` (or a bare login) to the reviewers of a repository of `org`,
/// once. GitHub asks for a team by its slug within the repository's organisation, so a team
/// of another organisation is left out (with why), never asked as a team of `org` that
/// happens to have the same slug.
pub fn add_owner(r: &mut Reviewers, owner: &str, org: &str) {
    let Some(name) = owner
        .strip_prefix('@')
        .or((!owner.contains('@')).then_some(owner))
    else {
        return;
    };
    let (list, item) = match name.split_once('/') {
        Some((team_org, _)) if !team_org.eq_ignore_ascii_case(org) => {
            let why = format!(
                "`{owner}` is a team of another organisation; GitHub asks only teams of `{org}`"
            );
            if !r.left_out.contains(&why) {
                r.left_out.push(why);
            }
            return;
        }
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
    let m = Glob::new(&rule.pattern).run(path.as_bytes());
    (!rule.dir_only && m.whole) || (!rule.pattern.ends_with("/*") && m.directory)
}

/// One piece of a glob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `?`: one byte other than `/`.
    One,
    /// `*`: any run of bytes without `/`.
    Star,
    /// `**` not followed by `/`: any run of bytes.
    Any,
    /// `**/`: zero or more whole directories.
    Dirs,
}

/// A gitignore-style glob (`*` and `?` stop at `/`, `**` crosses it, `**/` is zero or more
/// directories), run as a set of positions over the path: time proportional to the pattern's
/// length times the path's, whatever the pattern, where backtracking is exponential in the
/// number of `*`s.
struct Glob(Vec<Token>);

/// What a glob found in a path.
struct Matched {
    /// It matches the whole path.
    whole: bool,
    /// It matches a directory the path is in (the path up to one of its `/`s).
    directory: bool,
}

impl Glob {
    fn new(pattern: &str) -> Self {
        let p = pattern.as_bytes();
        let mut tokens = Vec::with_capacity(p.len());
        let mut i = 0;
        while i < p.len() {
            let token = match p[i] {
                b'*' if p.get(i + 1) == Some(&b'*') => {
                    i += 1;
                    if p.get(i + 1) == Some(&b'/') {
                        i += 1;
                        Token::Dirs
                    } else {
                        Token::Any
                    }
                }
                b'*' => Token::Star,
                b'?' => Token::One,
                c => Token::Byte(c),
            };
            // `***` and `**/**/` mean no more than one of them.
            if !(token == Token::Dirs && tokens.last() == Some(&Token::Dirs)) {
                tokens.push(token);
            }
            i += 1;
        }
        Glob(tokens)
    }

    /// `states`, and every position reachable from them without reading a byte.
    fn close(&self, states: &mut [bool]) {
        for i in 0..self.0.len() {
            if states[i] && matches!(self.0[i], Token::Star | Token::Any | Token::Dirs) {
                states[i + 1] = true;
            }
        }
    }

    fn run(&self, path: &[u8]) -> Matched {
        let n = self.0.len();
        let mut now = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        now[0] = true;
        self.close(&mut now);
        let mut directory = false;
        for &c in path {
            if c == b'/' && now[n] {
                directory = true;
            }
            next.iter_mut().for_each(|s| *s = false);
            for (i, token) in self.0.iter().enumerate() {
                if !now[i] {
                    continue;
                }
                match *token {
                    Token::Byte(b) if b == c => next[i + 1] = true,
                    Token::One if c != b'/' => next[i + 1] = true,
                    Token::Star if c != b'/' => next[i] = true,
                    Token::Any => next[i] = true,
                    Token::Dirs => {
                        next[i] = true;
                        if c == b'/' {
                            next[i + 1] = true;
                        }
                    }
                    _ => {}
                }
            }
            self.close(&mut next);
            std::mem::swap(&mut now, &mut next);
        }
        Matched {
            whole: now[n],
            directory,
        }
    }
}

#[cfg(test)]
fn glob(pattern: &[u8], path: &[u8]) -> bool {
    Glob::new(std::str::from_utf8(pattern).unwrap())
        .run(path)
        .whole
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
        let co = Codeowners::parse(
            "* @alice\n*.rs @acme/rustaceans @bob alice@example.com @Other-Org/rustaceans\n",
        );
        let r = co.reviewers_for(["src/lib.rs", "README.md", "src/main.rs"], "ACME");
        assert_eq!(r.users, ["bob", "alice"]);
        assert_eq!(
            r.teams,
            ["rustaceans"],
            "one team, of the repository's organisation"
        );
        assert_eq!(
            r.left_out,
            [
                "`@Other-Org/rustaceans` is a team of another organisation; GitHub asks only teams of `ACME`"
            ]
        );
    }

    #[test]
    fn a_hostile_pattern_is_matched_in_linear_time() {
        // Backtracking tries every way to split the path among the stars, which here would
        // not end in the lifetime of the machine; positions over the path take 120 × 4000
        // steps.
        let pattern = format!("{}x", "**a".repeat(40));
        let path = "a".repeat(4000);
        let co = Codeowners::parse(&format!("{pattern} @someone\n"));
        assert_eq!(owners(&co, &path), None);
        let nested = format!("{}/b", "a/".repeat(2000));
        let co = Codeowners::parse(&format!("{} @someone\n", "**/a/".repeat(30)));
        assert_eq!(owners(&co, &nested), v(&["@someone"]));
    }

    #[test]
    fn globs() {
        assert!(glob(b"**", b"a/b"));
        assert!(glob(b"a/**/**/b", b"a/b"));
        assert!(glob(b"**/*.rs", b"src/x/main.rs"));
        assert!(!glob(b"a?c", b"a/c"));
        assert!(glob(b"a*c", b"abbbc"));
        assert!(!glob(b"a*c", b"ab/bc"));
        assert!(glob(b"**/logs", b"logs"));
        assert!(glob(b"**/logs", b"a/b/logs"));
        assert!(glob(b"a/**/b", b"a/b"));
        assert!(glob(b"a/**/b", b"a/x/y/b"));
        assert!(glob(b"a/**", b"a/x/y"));
        assert!(!glob(b"*.js", b"a/b.js"));
        assert!(glob(b"?.js", b"a.js"));
    }
}
