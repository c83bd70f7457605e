//! Who may use the dashboard. Without `AUTODEV_API_TOKEN` everyone who reaches the server
//! may (it listens on loopback then). With it, a login with the token sets a cookie that says
//! so until it expires: `v1.<expiry>.<HMAC of the expiry under the token>`, `HttpOnly`,
//! `SameSite=Strict`, `Secure` when `AUTODEV_PUBLIC_URL` is https. Nothing is stored: changing
//! the token signs everyone out. A page's buttons call the JSON API with the cookie and the
//! page's CSRF token (an HMAC of the cookie), which a page on another site cannot read.
//! Imports configuration only.

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::config::Settings;

pub const COOKIE: &str = "autodev_session";

/// The cookie's name where autodev is reached over https: the `__Host-` prefix makes the
/// browser keep it to this host and refuse one set by a sibling domain or over http.
pub const SECURE_COOKIE: &str = "__Host-autodev_session";

/// The header a page's buttons send the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a login lasts.
pub const LIFETIME_SECONDS: i64 = 12 * 3600;

fn mac(token: &str, what: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(what.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A session cookie's value, valid until `now + LIFETIME_SECONDS`.
pub fn issue(token: &str, now: i64) -> String {
    let expires = now + LIFETIME_SECONDS;
    format!("v1.{expires}.{}", mac(token, &format!("session:{expires}")))
}

/// Whether `value` is a session this token issued and it has not expired at `now`.
pub fn valid(token: &str, value: &str, now: i64) -> bool {
    let mut parts = value.splitn(3, '.');
    let (Some("v1"), Some(expires), Some(given)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(at) = expires.parse::<i64>() else {
        return false;
    };
    let want = mac(token, &format!("session:{at}"));
    at > now && crate::web::api::constant_time_eq(given.as_bytes(), want.as_bytes())
}

/// The CSRF token of a session.
pub fn csrf(token: &str, session: &str) -> String {
    mac(token, &format!("csrf:{session}"))
}

fn https(settings: &Settings) -> bool {
    settings
        .public_url
        .as_deref()
        .is_some_and(|url| url.starts_with("https://"))
}

/// The session cookie's name on this server.
pub fn cookie_name(settings: &Settings) -> &'static str {
    if https(settings) {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

/// The cookie named `name` a request carries, if any.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// Who is looking at a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// No token is configured: anyone who reaches the server may act.
    Open,
    /// Signed in; the page's buttons send this CSRF token.
    SignedIn { csrf: String },
    /// A token is configured and this request has no valid session.
    Anonymous,
}

impl Viewer {
    pub fn of(settings: &Settings, headers: &HeaderMap) -> Self {
        let Some(token) = &settings.api_token else {
            return Viewer::Open;
        };
        let token = token.expose_secret();
        match cookie(headers, cookie_name(settings)) {
            Some(session) if valid(token, session, crate::store::now_ms() / 1000) => {
                Viewer::SignedIn {
                    csrf: csrf(token, session),
                }
            }
            _ => Viewer::Anonymous,
        }
    }

    /// Whether the viewer may see the dashboard and press its buttons.
    pub fn may_act(&self) -> bool {
        !matches!(self, Viewer::Anonymous)
    }

    /// The CSRF token the page's buttons send (empty when none is needed).
    pub fn csrf(&self) -> &str {
        match self {
            Viewer::SignedIn { csrf } => csrf,
            Viewer::Open | Viewer::Anonymous => "",
        }
    }
}

/// Whether a request to the JSON API is a signed-in page's: a valid session cookie and the
/// CSRF token that goes with it.
pub fn authorises(settings: &Settings, headers: &HeaderMap) -> bool {
    let (Some(token), Some(session)) = (
        settings.api_token.as_ref(),
        cookie(headers, cookie_name(settings)),
    ) else {
        return false;
    };
    let token = token.expose_secret();
    let given = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    valid(token, session, crate::store::now_ms() / 1000)
        && crate::web::api::constant_time_eq(given.as_bytes(), csrf(token, session).as_bytes())
}

/// The `Set-Cookie` value that signs in with `session`.
pub fn set_cookie(settings: &Settings, session: &str) -> String {
    format!(
        "{}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECONDS}{}",
        cookie_name(settings),
        secure(settings)
    )
}

/// The `Set-Cookie` value that signs out.
pub fn clear_cookie(settings: &Settings) -> String {
    format!(
        "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        cookie_name(settings),
        secure(settings)
    )
}

fn secure(settings: &Settings) -> &'static str {
    if https(settings) { "; Secure" } else { "" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_holds_until_it_expires_and_only_under_its_token() {
        let s = issue("token-one", 1_000);
        assert!(valid("token-one", &s, 1_001));
        assert!(!valid("token-one", &s, 1_000 + LIFETIME_SECONDS));
        assert!(!valid("token-two", &s, 1_001));
        // A later expiry written in by hand does not carry the signature.
        let forged = s.replacen(
            &format!("{}", 1_000 + LIFETIME_SECONDS),
            &format!("{}", 9_000_000_000i64),
            1,
        );
        assert!(!valid("token-one", &forged, 1_001));
        assert!(!valid("token-one", "v1.x.y", 1_001));
        assert!(!valid("token-one", "", 1_001));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=b; autodev_session=v1.5.abc; c=d".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("v1.5.abc"));
        assert_eq!(cookie(&headers, SECURE_COOKIE), None);
        let s = issue("t", 0);
        assert_ne!(csrf("t", &s), csrf("u", &s));
    }
}
