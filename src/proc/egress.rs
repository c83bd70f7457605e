//! Where sandboxed agents and gates may connect. They run in a network namespace of their own,
//! with only a loopback; a relay inside it (`autodev relay`) passes connections to an HTTP
//! `CONNECT` proxy that autodev serves on a Unix socket bound into the sandbox. The proxy
//! opens a tunnel only to an allowed host, and reports every host it refused. There is no DNS
//! inside, so a client that ignores the proxy variables fails closed.
//! Imports nothing of the crate but configuration types.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

/// The port the relay listens on inside the sandbox.
pub const RELAY_PORT: u16 = 3128;

/// How long a client has to send its `CONNECT`, and the proxy to reach the host.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tunnels one proxy holds open at once: a job cannot spend autodev's file descriptors.
const MAX_TUNNELS: usize = 64;

/// A tunnel with no traffic either way for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest host name a refusal reports (DNS allows 253 characters).
const MAX_HOST: usize = 253;

/// The variables that point clients at the relay.
pub fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{RELAY_PORT}");
    [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .map(|k| ((*k).to_owned(), url.clone()))
    .chain([
        ("NO_PROXY".to_owned(), String::new()),
        ("no_proxy".to_owned(), String::new()),
    ])
    .collect()
}

/// The hosts an allow-list entry matches: `host` (port 443), `host:port`, `*.domain` (any
/// subdomain, port 443) or `*.domain:port`.
pub fn allows(list: &[String], host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    list.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        let (name, wanted_port) = match entry.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') || n.ends_with(']') => {
                (n.to_owned(), p.parse::<u16>().ok())
            }
            _ => (entry.clone(), Some(443)),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if wanted_port != Some(port) {
            return false;
        }
        match name.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == name,
        }
    })
}

/// A running proxy for one run; it stops, and its socket goes, when dropped.
pub struct Proxy {
    socket: PathBuf,
    /// Ends the accept loop and every tunnel.
    stop: tokio_util::sync::CancellationToken,
}

impl Proxy {
    /// Serves the proxy on `socket` for `who` (`agent`, `gates`); every refused connection
    /// is sent to `refused` as `who` and `host:port: why`.
    pub fn start(
        socket: &Path,
        who: &'static str,
        allowed: Vec<String>,
        refused: mpsc::UnboundedSender<(&'static str, String)>,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)?;
        let allowed = Arc::new(allowed);
        let stop = tokio_util::sync::CancellationToken::new();
        let tunnels = Arc::new(tokio::sync::Semaphore::new(MAX_TUNNELS));
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.cancelled() => return,
                };
                let Ok((conn, _)) = accepted else {
                    // One failed accept (out of descriptors, say) is not the end of the proxy.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // Over the limit, a client waits its turn (or gives up).
                let permit = tokio::select! {
                    p = tunnels.clone().acquire_owned() => p,
                    _ = stopped.cancelled() => return,
                };
                let Ok(permit) = permit else { return };
                let (allowed, refused) = (allowed.clone(), refused.clone());
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        r = tunnel(conn, who, &allowed, &refused) => {
                            if let Err(e) = r {
                                tracing::debug!("egress proxy: {e}");
                            }
                        }
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            socket: socket.to_owned(),
            stop,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// One client: its `CONNECT`, then the tunnel, or a refusal.
async fn tunnel(
    mut conn: UnixStream,
    who: &'static str,
    allowed: &[String],
    refused: &mpsc::UnboundedSender<(&'static str, String)>,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut conn))
        .await
        .map_err(|_| std::io::Error::other("no request within the time limit"))??;
    let Some((head_len, target)) = head else {
        conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await?;
        return Ok(());
    };
    let (request, early) = target;
    // A tunnel (`CONNECT host:port`), or a plain-HTTP request in absolute form
    // (`GET http://host:port/path`), which clients send through a proxy for http:// URLs (a
    // model server on the local network, say): passed on in origin form.
    let (host, port, forward) = match connect_target(&request) {
        Some((host, port)) => (host, port, None),
        None => match absolute_target(&request) {
            Some((host, port, origin_form)) => (host, port, Some(origin_form)),
            None => {
                conn.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                    .await?;
                return Ok(());
            }
        },
    };
    let _ = head_len;
    let listed = allows(allowed, &host, port);
    let addrs = if listed {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, addresses(&host, port))
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let Some(addrs) = addrs else {
        let shown: String = host.chars().take(MAX_HOST).collect();
        let why = if listed {
            "it is allowed, but has no address on the internet (it resolves nowhere, or to this machine or its networks)".to_owned()
        } else {
            format!("not in {who}.egress")
        };
        let _ = refused.send((who, format!("{shown}:{port}: {why}")));
        conn.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    // The addresses checked are the ones connected to: no second look-up to be fooled by.
    let upstream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(&addrs[..]))
        .await
        .map_err(|_| std::io::Error::other("connecting timed out"))
        .and_then(|r| r);
    let mut upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            conn.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                .await?;
            return Err(e);
        }
    };
    match forward {
        None => {
            conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?
        }
        Some(head) => upstream.write_all(head.as_bytes()).await?,
    }
    if !early.is_empty() {
        upstream.write_all(&early).await?;
    }
    copy_until_idle(conn, upstream).await
}

/// Copies both ways until both sides are done, or nothing moves for [`IDLE_TIMEOUT`].
async fn copy_until_idle(conn: UnixStream, upstream: TcpStream) -> std::io::Result<()> {
    let (conn_read, conn_write) = conn.into_split();
    let (up_read, up_write) = upstream.into_split();
    let last = std::sync::Mutex::new(tokio::time::Instant::now());
    let moved = || *last.lock().expect("lock") = tokio::time::Instant::now();
    let idle = async {
        loop {
            let wake = *last.lock().expect("lock") + IDLE_TIMEOUT;
            if tokio::time::Instant::now() >= wake {
                return;
            }
            tokio::time::sleep_until(wake).await;
        }
    };
    tokio::select! {
        r = async {
            tokio::try_join!(pump(conn_read, up_write, &moved), pump(up_read, conn_write, &moved))
                .map(|_| ())
        } => r,
        _ = idle => Ok(()),
    }
}

/// Copies `from` to `to` until `from` ends, then ends `to`; `moved` is told of every read.
async fn pump(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    moved: &impl Fn(),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        moved();
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// Where an allowed host is. A name that resolves to this machine, its networks or nowhere
/// is not a host on the internet: autodev's own API, other local services and a cloud's
/// metadata service stay out of reach, whatever a name's DNS says. An address written as
/// such in the allow-list is taken as meant.
async fn addresses(host: &str, port: u16) -> Option<Vec<std::net::SocketAddr>> {
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Some(vec![std::net::SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<_> = tokio::net::lookup_host((host, port)).await.ok()?.collect();
    let public = !addrs.is_empty() && addrs.iter().all(|a| !is_internal(a.ip()));
    public.then_some(addrs)
}

/// This machine, private and link-local networks, and what is not an address at all.
fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // Carrier-grade NAT, 100.64.0.0/10.
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7 and link-local fe80::/10.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// The request head (up to the blank line, at most 8 KiB) and whatever came after it.
type Head = Option<(usize, (String, Vec<u8>))>;

async fn read_head(conn: &mut UnixStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let early = buf[end + 4..].to_vec();
            return Ok(Some((end, (head, early))));
        }
        if buf.len() > 8 * 1024 {
            return Ok(None);
        }
    }
}

/// `METHOD http://host[:port]/path HTTP/1.1` plus headers → (host, port, the same head in
/// origin form, ending with its blank line).
fn absolute_target(head: &str) -> Option<(String, u16, String)> {
    let (line, rest) = head.split_once("\r\n").unwrap_or((head, ""));
    let mut parts = line.splitn(3, ' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let after = target.strip_prefix("http://")?;
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(p) => (h, p),
            Err(_) if authority.starts_with('[') && authority.ends_with(']') => (authority, 80),
            Err(_) => return None,
        },
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut out = format!("{method} {path} {version}\r\n");
    if !rest.is_empty() {
        out.push_str(rest);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Some((host.to_owned(), port, out))
}

/// `CONNECT host:port HTTP/1.1` → (host, port).
fn connect_target(head: &str) -> Option<(String, u16)> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.eq_ignore_ascii_case("CONNECT") {
        return None;
    }
    let authority = parts.next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// The relay inside the sandbox (`autodev relay`): listens on the sandbox's loopback, passes
/// every connection to the proxy's socket, runs `command`, and exits as it does.
pub fn relay(socket: &Path, port: u16, command: &[String]) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    let Some((program, args)) = command.split_first() else {
        eprintln!("autodev relay: no command to run");
        return 2;
    };
    let listener = match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("autodev relay: listening on 127.0.0.1:{port}: {e}");
            return 2;
        }
    };
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let Ok(upstream) = std::os::unix::net::UnixStream::connect(&socket) else {
                    return;
                };
                let (Ok(mut a_read), Ok(mut b_read)) = (conn.try_clone(), upstream.try_clone())
                else {
                    return;
                };
                let (mut a_write, mut b_write) = (conn, upstream);
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a_read, &mut b_write);
                    let _ = b_write.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut b_read, &mut a_write);
                let _ = a_write.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    match std::process::Command::new(program).args(args).status() {
        Ok(status) => status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(e) => {
            eprintln!("autodev relay: running {program}: {e}");
            127
        }
    }
}

/// The hosts a provider of this kind needs, for its API and its login.
pub fn provider_hosts(kind: crate::config::CliKind) -> &'static [&'static str] {
    use crate::config::CliKind;
    match kind {
        CliKind::Claude => &[
            "api.anthropic.com",
            "console.anthropic.com",
            "statsig.anthropic.com",
            "claude.ai",
        ],
        CliKind::Codex => &["api.openai.com", "auth.openai.com", "chatgpt.com"],
        CliKind::Gemini => &[
            "generativelanguage.googleapis.com",
            "cloudcode-pa.googleapis.com",
            "oauth2.googleapis.com",
            "www.googleapis.com",
        ],
        CliKind::Cursor => &["*.cursor.sh", "cursor.com"],
        CliKind::Generic => &[],
    }
}

/// `host:port` of a base URL, for the allow-list (`https://x` → `x`, `http://h:8080` →
/// `h:8080`).
pub fn url_entry(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return None;
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.is_empty()
    });
    Some(match (has_port, scheme) {
        (true, _) => authority.to_owned(),
        (false, "http") => format!("{authority}:80"),
        (false, _) => authority.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_entries() {
        let list: Vec<String> = ["api.anthropic.com", "127.0.0.1:8080", "*.cursor.sh"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert!(allows(&list, "api.anthropic.com", 443));
        assert!(allows(&list, "API.Anthropic.com.", 443));
        assert!(!allows(&list, "api.anthropic.com", 80));
        assert!(!allows(&list, "evil-api.anthropic.com", 443));
        assert!(allows(&list, "127.0.0.1", 8080));
        assert!(!allows(&list, "127.0.0.1", 8000));
        assert!(allows(&list, "api2.cursor.sh", 443));
        assert!(!allows(&list, "cursor.sh.evil.example", 443));
        assert_eq!(
            connect_target("CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: x"),
            Some(("api.anthropic.com".into(), 443))
        );
        assert_eq!(connect_target("GET http://x/ HTTP/1.1"), None);
        assert_eq!(
            absolute_target("GET http://127.0.0.1:9/v1/x?y HTTP/1.1\r\nHost: 127.0.0.1:9"),
            Some((
                "127.0.0.1".into(),
                9,
                "GET /v1/x?y HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n".into()
            ))
        );
        assert_eq!(
            absolute_target("POST http://models.lan HTTP/1.1").map(|t| (t.0, t.1)),
            Some(("models.lan".into(), 80))
        );
        assert_eq!(absolute_target("GET https://x/ HTTP/1.1"), None);
        assert_eq!(absolute_target("GET /x HTTP/1.1"), None);
        assert_eq!(
            url_entry("http://127.0.0.1:9999/v1").as_deref(),
            Some("127.0.0.1:9999")
        );
        for internal in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "fd00::1",
            "fe80::1",
            "::1",
            "100.64.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["1.1.1.1", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
        assert_eq!(
            url_entry("https://api.example.com").as_deref(),
            Some("api.example.com")
        );
    }
}
