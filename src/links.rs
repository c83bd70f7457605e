//! Links to task pages: the check run's Details link and the status comment's link. With
//! `AUTODEV_API_TOKEN` set, a link carries a signature (an HMAC of the task's name under that
//! token), because a browser following it from GitHub carries no bearer token: whoever can
//! see the link can read the page, nobody can guess another's. `web::pages` checks it.
//! Imports `config` and the store's row type; nothing above.

use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::config::Settings;
use crate::store::TaskRow;

/// The page's path (with its signature, when the API is guarded) for a task.
pub fn path(settings: &Settings, repo: &str, task_id: &str) -> String {
    let base = if repo == "local" {
        format!("/view/tasks/{task_id}")
    } else {
        format!("/view/repos/{repo}/tasks/{task_id}")
    };
    match &settings.api_token {
        Some(_) => format!("{base}?sig={}", signature(settings, repo, task_id)),
        None => base,
    }
}

/// The page's full link, when `AUTODEV_PUBLIC_URL` says where people reach this server.
pub fn link(settings: &Settings, t: &TaskRow) -> Option<String> {
    let public = settings.public_url.as_deref()?;
    Some(format!("{public}{}", path(settings, &t.repo, &t.task_id)))
}

pub fn signature(settings: &Settings, repo: &str, task_id: &str) -> String {
    let key = settings
        .api_token
        .as_ref()
        .map(|t| t.expose_secret().as_bytes().to_vec())
        .unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("autodev-view:{repo}/{task_id}").as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}
