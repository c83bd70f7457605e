//! Local mode's way to GitHub: the repository's `origin`, when it is a GitHub repository (on
//! github.com, or on the GitHub Enterprise Server that `GITHUB_API_URL` names), reached with
//! `GITHUB_TOKEN`. Task branches are pushed there over HTTPS and their pull requests opened
//! through the API; without a token, or with an `origin` elsewhere, there is nowhere to open a
//! pull request, and the pull request sweep says which of the two it is.

use http::Uri;

use crate::engine::Engine;

/// A GitHub repository that `origin` points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubRemote {
    pub owner: String,
    pub repo: String,
    /// Where task branches are pushed with the token: `origin`'s host over HTTPS (or HTTP, if
    /// that is how `origin` is reached), without any credentials written into the URL.
    pub push_url: String,
}

impl GithubRemote {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.repo)
    }
}

/// The git (and web) host that goes with a REST API: `github.com` for `api.github.com`, else
/// the API's own host (GitHub Enterprise Server serves all from one host).
pub fn git_host(api_url: &str) -> Option<String> {
    let host = api_url.parse::<Uri>().ok()?.host()?.to_ascii_lowercase();
    Some(if host == "api.github.com" {
        "github.com".to_owned()
    } else {
        host
    })
}

/// Reads `origin`'s URL as a GitHub repository; the error says why it is not one.
pub fn parse(url: &str, api_url: &str) -> Result<GithubRemote, String> {
    let raw = url.trim();
    // Messages show the URL without any credentials written into it.
    let shown = redacted(raw);
    let url = shown.as_str();
    let local = || format!("`origin` ({url}) is a path on this machine, not a GitHub repository");
    if url.to_ascii_lowercase().starts_with("file:") {
        return Err(local());
    }
    let (scheme, host, port, path) = if let Some((scheme, _)) = raw.split_once("://") {
        let uri: Uri = raw
            .parse()
            .map_err(|_| format!("`origin` ({url}) is not a URL autodev can read"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("`origin` ({url}) names no host"))?;
        (
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase(),
            uri.port_u16(),
            uri.path().to_owned(),
        )
    } else if let Some((authority, path)) = raw.split_once(':')
        && !authority.contains('/')
        && !path.starts_with("//")
    {
        // scp-like SSH: `[user@]host:owner/repo.git`.
        let host = authority.rsplit('@').next().unwrap_or(authority);
        (
            "ssh".to_owned(),
            host.to_ascii_lowercase(),
            None,
            path.to_owned(),
        )
    } else {
        return Err(local());
    };
    let expected = git_host(api_url).unwrap_or_else(|| "github.com".to_owned());
    if host != expected {
        return Err(format!(
            "`origin` ({url}) is on {host}, not on {expected} (set GITHUB_API_URL for GitHub Enterprise Server)"
        ));
    }
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let (owner, repo) = match path.split('/').collect::<Vec<_>>()[..] {
        [owner, repo] if !owner.is_empty() && !repo.is_empty() => (owner, repo),
        _ => {
            return Err(format!(
                "`origin` ({url}) does not name a repository as OWNER/REPO"
            ));
        }
    };
    // The token goes over HTTPS; plain HTTP only where the API itself is (a test server).
    let push_scheme = if scheme == "http" && api_url.starts_with("http://") {
        "http"
    } else {
        "https"
    };
    // A port belongs to the scheme it came with (an SSH port is no HTTPS port).
    let push_url = match port.filter(|_| scheme == push_scheme) {
        Some(p) => format!("{push_scheme}://{host}:{p}/{owner}/{repo}.git"),
        None => format!("{push_scheme}://{host}/{owner}/{repo}.git"),
    };
    Ok(GithubRemote {
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        push_url,
    })
}

/// `url` without a `user:password@` part.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Where local mode's pull requests go, or why there is nowhere to open them.
pub async fn local_remote(engine: &Engine) -> Result<GithubRemote, String> {
    if engine.settings.github_token.is_none() {
        return Err(
            "there is nowhere to open pull requests: set GITHUB_TOKEN (a token that may push to and open pull requests on `origin`) to open them in local mode"
                .to_owned(),
        );
    }
    let repo = &engine.settings.repo_path;
    let url = match engine.git.remote_url(repo, "origin").await {
        Ok(Some(url)) => url,
        Ok(None) => {
            return Err(format!(
                "there is nowhere to open pull requests: {} has no `origin` remote",
                repo.display()
            ));
        }
        Err(e) => return Err(format!("reading `origin` of {}: {e:#}", repo.display())),
    };
    parse(&url, &engine.settings.github_api_url)
        .map_err(|why| format!("there is nowhere to open pull requests: {why}"))
}

/// Where a local task's pull request goes: `origin` as it was when the task first ran (so an
/// agent that rewrites `origin` in the repository's config does not redirect its own push),
/// else `origin` now.
pub async fn task_remote(
    engine: &Engine,
    t: &crate::store::TaskRow,
) -> Result<GithubRemote, String> {
    match t.clone_url.as_deref() {
        Some(url) if engine.settings.github_token.is_some() => {
            parse(url, &engine.settings.github_api_url)
                .map_err(|why| format!("there is nowhere to open pull requests: {why}"))
        }
        _ => local_remote(engine).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const API: &str = "https://api.github.com";

    fn ok(url: &str, api: &str) -> (String, String) {
        let r = parse(url, api).unwrap_or_else(|e| panic!("{url}: {e}"));
        (r.full_name(), r.push_url)
    }

    #[test]
    fn the_forms_git_accepts_for_a_github_origin() {
        let want = (
            "octo-org/hello.world".to_owned(),
            "https://github.com/octo-org/hello.world.git".to_owned(),
        );
        for url in [
            "https://github.com/octo-org/hello.world.git",
            "https://github.com/octo-org/hello.world",
            "https://github.com/octo-org/hello.world/",
            "https://someone:ghp_secret@github.com/octo-org/hello.world.git",
            "HTTPS://GitHub.com/octo-org/hello.world.git",
            "http://github.com/octo-org/hello.world.git",
            "git@github.com:octo-org/hello.world.git",
            "github.com:octo-org/hello.world",
            "ssh://git@github.com/octo-org/hello.world.git",
            "ssh://git@github.com:22/octo-org/hello.world.git",
            "git+ssh://git@github.com/octo-org/hello.world.git",
            "git://github.com/octo-org/hello.world.git",
        ] {
            assert_eq!(ok(url, API), want, "{url}");
        }
    }

    #[test]
    fn enterprise_server_and_plain_http_hosts_follow_the_api_url() {
        assert_eq!(
            ok(
                "git@ghe.example.com:team/app.git",
                "https://ghe.example.com/api/v3"
            ),
            (
                "team/app".to_owned(),
                "https://ghe.example.com/team/app.git".to_owned()
            )
        );
        assert_eq!(
            ok(
                "http://127.0.0.1:4567/team/app.git",
                "http://127.0.0.1:9999"
            ),
            (
                "team/app".to_owned(),
                "http://127.0.0.1:4567/team/app.git".to_owned()
            )
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for (url, api, why) in [
            ("/srv/git/app.git", API, "a path on this machine"),
            ("../app", API, "a path on this machine"),
            ("file:///srv/git/app.git", API, "a path on this machine"),
            (
                "https://gitlab.com/team/app.git",
                API,
                "on gitlab.com, not on github.com",
            ),
            (
                "git@github.com:team/app.git",
                "https://ghe.example.com/api/v3",
                "not on ghe.example.com",
            ),
            ("https://github.com/team", API, "OWNER/REPO"),
            ("https://github.com/team/app/tree/main", API, "OWNER/REPO"),
        ] {
            let e = parse(url, api).expect_err(url);
            assert!(e.contains(why), "{url}: {e}");
        }
        let e = parse("https://me:ghp_secret@gitlab.com/team/app.git", API).unwrap_err();
        assert!(
            !e.contains("ghp_secret") && e.contains("https://gitlab.com/team/app.git"),
            "{e}"
        );
    }
}
