//! Creating the GitHub App from its manifest (GitHub's manifest flow): the manifest
//! (`app-manifest.json`, with this server's public URL), the one-time code that opens the
//! setup page while there is no App, the `state` each page hands to GitHub and takes back
//! once, and the conversion of GitHub's code into the App's credentials, stored in the data
//! directory (mode 0600). Imports `config`; never the engine or anything above it.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::config::StoredApp;

/// GitHub takes a manifest's code back within the hour; a page's `state` lasts as long.
const STATE_TTL: Duration = Duration::from_secs(3600);

/// The setup page's keys: its one-time code, and the states of pages handed out.
pub struct SetupState {
    code: Mutex<Option<String>>,
    states: Mutex<HashMap<String, Instant>>,
}

/// A value nobody can guess: two ULIDs' worth of randomness, as hex.
fn unguessable() -> String {
    let (a, b) = (ulid::Ulid::generate(), ulid::Ulid::generate());
    format!("{:032x}{:032x}", a.random(), b.random())
}

impl SetupState {
    /// With a code when there is no App yet (`open`); closed otherwise.
    pub fn new(open: bool) -> Self {
        Self {
            code: Mutex::new(open.then(unguessable)),
            states: Mutex::new(HashMap::new()),
        }
    }

    /// The code that opens the setup page, while it is open.
    pub fn code(&self) -> Option<String> {
        self.code.lock().expect("lock").clone()
    }

    /// Whether `given` is the page's code (compared in constant time).
    pub fn opens(&self, given: &str) -> bool {
        self.code().is_some_and(|code| {
            code.len() == given.len()
                && code
                    .bytes()
                    .zip(given.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }

    /// No more setup: the App is made.
    pub fn close(&self) {
        *self.code.lock().expect("lock") = None;
    }

    /// A fresh `state` for a page that sends someone to GitHub.
    pub fn new_state(&self) -> String {
        let mut states = self.states.lock().expect("lock");
        states.retain(|_, at| at.elapsed() < STATE_TTL);
        let state = unguessable();
        states.insert(state.clone(), Instant::now());
        state
    }

    /// Takes `state` back: `true` once, within the hour, for a state this server handed out.
    pub fn take_state(&self, state: &str) -> bool {
        self.states
            .lock()
            .expect("lock")
            .remove(state)
            .is_some_and(|at| at.elapsed() < STATE_TTL)
    }
}

/// The manifest, as `app-manifest.json` has it, pointed at `public_url`.
pub fn manifest(public_url: &str) -> Value {
    let mut m: Value = serde_json::from_str(include_str!("../../app-manifest.json"))
        .expect("app-manifest.json is JSON");
    m["url"] = Value::String(public_url.to_owned());
    m["hook_attributes"]["url"] = Value::String(format!("{public_url}/webhooks/github"));
    m["redirect_url"] = Value::String(format!("{public_url}/setup/callback"));
    m
}

/// GitHub's web address for its API's: `https://api.github.com` → `https://github.com`,
/// Enterprise Server's `https://ghe.example/api/v3` → `https://ghe.example`.
pub fn web_url(api_url: &str) -> String {
    let api = api_url.trim_end_matches('/');
    if let Some(rest) = api.strip_prefix("https://api.") {
        return format!("https://{rest}");
    }
    api.strip_suffix("/api/v3").unwrap_or(api).to_owned()
}

/// Where a person creates the App: on their own account, or in `org`.
pub fn new_app_url(api_url: &str, org: Option<&str>, state: &str) -> String {
    let web = web_url(api_url);
    match org {
        Some(org) => format!("{web}/organizations/{org}/settings/apps/new?state={state}"),
        None => format!("{web}/settings/apps/new?state={state}"),
    }
}

/// Whether `org` can be an organisation's login (so it is safe in a URL).
pub fn is_login(org: &str) -> bool {
    !org.is_empty()
        && org.len() <= 39
        && !org.starts_with('-')
        && org.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Trades GitHub's `code` (from the redirect) for the App it made:
/// `POST /app-manifests/{code}/conversions`.
pub async fn convert(api_url: &str, code: &str, timeout: Duration) -> anyhow::Result<StoredApp> {
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("GitHub's code `{code}` is not one it hands out");
    }
    let url = format!(
        "{}/app-manifests/{code}/conversions",
        api_url.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .post(&url)
        .header("Accept", "application/vnd.github+json")
        .header("User-Agent", "autodev")
        .timeout(timeout)
        .send()
        .await
        .with_context(|| format!("asking GitHub for the App ({url})"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "GitHub answered {status} to the App's conversion: {}",
            body["message"].as_str().unwrap_or("no message")
        );
    }
    let text = |k: &str| {
        body[k]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("GitHub's answer has no `{k}`"))
    };
    Ok(StoredApp {
        app_id: body["id"].as_u64().context("GitHub's answer has no `id`")?,
        slug: text("slug")?,
        private_key: text("pem")?,
        webhook_secret: text("webhook_secret")?,
        html_url: text("html_url")?,
    })
}

/// Writes `app` to the data directory, readable by autodev's user alone, and never over an
/// App stored before.
pub fn store(data_dir: &Path, app: &StoredApp) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(StoredApp::FILE);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(serde_json::to_string_pretty(app)?.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_states() {
        assert_eq!(web_url("https://api.github.com"), "https://github.com");
        assert_eq!(
            web_url("https://ghe.example/api/v3/"),
            "https://ghe.example"
        );
        assert_eq!(
            new_app_url("https://api.github.com", Some("octo"), "s"),
            "https://github.com/organizations/octo/settings/apps/new?state=s"
        );
        assert!(is_login("octo-org") && !is_login("a/b") && !is_login("-x") && !is_login(""));
        let m = manifest("https://autodev.example");
        assert_eq!(
            m["hook_attributes"]["url"],
            "https://autodev.example/webhooks/github"
        );
        let setup = SetupState::new(true);
        let code = setup.code().unwrap();
        assert!(setup.opens(&code) && !setup.opens("x") && !setup.opens(""));
        let state = setup.new_state();
        assert!(
            setup.take_state(&state) && !setup.take_state(&state),
            "once"
        );
        assert!(!setup.take_state("made-up"));
        setup.close();
        assert!(!setup.opens(&code));
        assert!(SetupState::new(false).code().is_none());
    }
}
