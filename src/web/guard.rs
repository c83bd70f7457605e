//! What keeps web pages out of the HTTP API: a `Host` allow-list (a page on another site that
//! re-points its own name at this server, DNS rebinding, is refused), state-changing requests
//! only with JSON or YAML bodies and never from a foreign `Origin` (cross-site requests), and
//! request bodies that must arrive within a time limit, few at a time while unauthenticated.
//! Imports configuration and the spec's media types only; the routes are `server`'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::config::Settings;

/// How long a client has to send a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many request bodies are read at once before they are authenticated (webhook bodies,
/// until their signature is checked).
pub const UNAUTHENTICATED_BODIES: usize = 8;

/// How many of those one peer may have read at once: one client holding its uploads open
/// cannot take every turn.
pub const UNAUTHENTICATED_BODIES_PER_PEER: usize = 2;

/// Turns to read unauthenticated bodies: a few at a time in all, fewer from any one peer.
/// Each peer waits in a queue of its own (a semaphore): a turn given back wakes the one
/// request next in line, not every request waiting.
#[derive(Debug)]
pub struct Bodies {
    all: Arc<tokio::sync::Semaphore>,
    /// The peers holding or waiting for a turn; a peer's entry goes when nobody does.
    peers: std::sync::Mutex<std::collections::HashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
}

/// A turn to read a body; given back when dropped.
pub struct Turn {
    _permit: tokio::sync::OwnedSemaphorePermit,
    // Dropped in this order: the peer's turn, then the peer forgotten if it is idle.
    _peer: Option<tokio::sync::OwnedSemaphorePermit>,
    _forget: Option<Forget>,
}

impl Bodies {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            all: Arc::new(tokio::sync::Semaphore::new(UNAUTHENTICATED_BODIES)),
            peers: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Waits for a turn for `peer` until `deadline`; `None` when none came.
    pub async fn turn(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        deadline: tokio::time::Instant,
    ) -> Option<Turn> {
        let peer = peer.map(peer_key);
        // However this ends (a turn, a timeout, or the request gone while it waits), the
        // peer is forgotten if nobody holds or waits for a turn of its: this is dropped last.
        let forget = peer.map(|ip| Forget {
            bodies: self.clone(),
            ip,
        });
        let peer_permit = match peer {
            None => None,
            Some(ip) => {
                let queue = self
                    .peers
                    .lock()
                    .expect("lock")
                    .entry(ip)
                    .or_insert_with(|| {
                        Arc::new(tokio::sync::Semaphore::new(UNAUTHENTICATED_BODIES_PER_PEER))
                    })
                    .clone();
                let permit = tokio::time::timeout_at(deadline, queue.acquire_owned())
                    .await
                    .ok()?
                    .ok()?;
                Some(permit)
            }
        };
        let permit = tokio::time::timeout_at(deadline, self.all.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Turn {
            _permit: permit,
            _peer: peer_permit,
            _forget: forget,
        })
    }

    /// Drops `ip`'s queue when no request holds or waits for a turn in it (each holds the
    /// queue: only the map's own hold is left).
    fn forget_if_idle(&self, ip: IpAddr) {
        let mut peers = self.peers.lock().expect("lock");
        if peers
            .get(&ip)
            .is_some_and(|queue| Arc::strong_count(queue) == 1)
        {
            peers.remove(&ip);
        }
    }

    /// How many peers hold or wait for a turn.
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.peers.lock().expect("lock").len()
    }
}

/// One peer as [`Bodies`] counts them: an IPv4 address, or an IPv6 /64 (what one host is
/// commonly given, so that its many addresses share one share of turns).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// Forgets a peer nobody holds or waits for a turn of, when dropped.
struct Forget {
    bodies: Arc<Bodies>,
    ip: IpAddr,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.bodies.forget_if_idle(self.ip);
    }
}

/// Streams of server-sent events open at once, in all and from one peer: each asks the
/// database every second, so a holder of a public link cannot open thousands.
pub const STREAMS: usize = 256;
pub const STREAMS_PER_PEER: usize = 16;

/// Turns to hold a stream open.
#[derive(Debug)]
pub struct Streams {
    all: Arc<tokio::sync::Semaphore>,
    peers: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// A stream's turn; given back when dropped (when the stream ends or its client goes).
pub struct StreamTurn {
    _permit: tokio::sync::OwnedSemaphorePermit,
    streams: Arc<Streams>,
    peer: Option<IpAddr>,
}

impl Streams {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            all: Arc::new(tokio::sync::Semaphore::new(STREAMS)),
            peers: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// A turn for `peer` now, or `None` when there are too many streams.
    pub fn turn(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<StreamTurn> {
        let permit = self.all.clone().try_acquire_owned().ok()?;
        if let Some(ip) = peer {
            let mut peers = self.peers.lock().expect("lock");
            let n = peers.entry(ip).or_insert(0);
            if *n >= STREAMS_PER_PEER {
                return None;
            }
            *n += 1;
        }
        Some(StreamTurn {
            _permit: permit,
            streams: self.clone(),
            peer,
        })
    }
}

impl Drop for StreamTurn {
    fn drop(&mut self) {
        let Some(ip) = self.peer else { return };
        let mut peers = self.streams.peers.lock().expect("lock");
        if let Some(n) = peers.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&ip);
            }
        }
    }
}

/// Headers every answer carries: no page of autodev's is shown in a frame (a page of another
/// site, or of another port of this one, cannot make you press its buttons), no link on it
/// tells another site where you came from (a task page's address holds its signature), and
/// no answer is read as anything but the type it says.
pub async fn page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-frame-options", "DENY"),
        (
            "content-security-policy",
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
        ),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
    ] {
        headers
            .entry(name)
            .or_insert(axum::http::HeaderValue::from_static(value));
    }
    response
}

/// Routes that answer whatever the `Host`: probes, which orchestrators send to whatever name
/// or address they use. (`/metrics` is checked: scrapers by IP pass anyway.)
const ANY_HOST: &[&str] = &["/healthz", "/readyz"];

/// The names and addresses this server answers to.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    bound: IpAddr,
    names: Vec<String>,
    /// `scheme://host[:port]` of `AUTODEV_PUBLIC_URL`.
    public_origin: Option<String>,
}

impl AllowedHosts {
    /// The bound address, `localhost`, the host of `AUTODEV_PUBLIC_URL` and
    /// `AUTODEV_ALLOWED_HOSTS`.
    pub fn new(settings: &Settings, bound: SocketAddr) -> Self {
        let mut names = vec!["localhost".to_owned()];
        if let Some(public) = settings.public_url.as_deref()
            && let Some(host) = url_host(public)
        {
            names.push(host);
        }
        names.extend(settings.allowed_hosts.iter().cloned());
        Self {
            bound: bound.ip(),
            names,
            public_origin: settings.public_url.as_deref().map(origin_of),
        }
    }

    /// Whether a browser's `Origin` is this server's own: `AUTODEV_PUBLIC_URL`'s origin, or the
    /// very address the browser sent this request to (`Host`, already allow-listed): a page
    /// on another site, another address or another port of this machine is another origin.
    pub fn allows_origin(&self, origin: &str, host: Option<&str>) -> bool {
        if origin == "null" {
            return false;
        }
        let origin = origin_of(origin);
        if self.public_origin.as_deref() == Some(origin.as_str()) {
            return true;
        }
        let Some(host) = host else {
            return false;
        };
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let host = match (scheme, host.rsplit_once(':')) {
            ("http", Some((name, "80"))) | ("https", Some((name, "443"))) => name,
            _ => host.as_str(),
        };
        authority == host && self.allows(host)
    }

    /// Whether `host` (a `Host` header: a name or address, with or without a port) is ours.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        if let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            // An address cannot be re-pointed by DNS: the bound one, or any when bound to all.
            return ip == self.bound
                || self.bound.is_unspecified()
                || (ip.is_loopback() && self.bound.is_loopback())
                || self.names.iter().any(|n| n == name);
        }
        self.names.iter().any(|n| n == name)
    }
}

/// `example.com:8000` → `example.com`; `[::1]:8000` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

/// `scheme://host[:port]` of a URL, lower-cased, without a default port.
fn origin_of(url: &str) -> String {
    let url = url.to_ascii_lowercase();
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url.as_str()));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let authority = match (scheme, authority.rsplit_once(':')) {
        ("http", Some((host, "80"))) | ("https", Some((host, "443"))) => host,
        _ => authority,
    };
    format!("{scheme}://{authority}")
}

/// The host of a URL such as `https://autodev.example.com:8443/x`.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = strip_port(authority).to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// A refused request: its status and why.
#[derive(Debug)]
pub struct Refusal(pub StatusCode, pub String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn refuse(status: StatusCode, message: String) -> Refusal {
    Refusal(status, message)
}

/// The media types a state-changing request may carry.
pub fn is_json_or_yaml(content_type: &str) -> bool {
    crate::core::spec::SpecFormat::from_content_type(content_type).is_some()
}

/// Middleware: refuses requests for other hosts, and state-changing requests a browser sent
/// from another site or with a body other than JSON or YAML.
pub async fn refuse_browsers(hosts: Arc<AllowedHosts>, request: Request, next: Next) -> Response {
    if let Err(response) = check(
        &hosts,
        request.method(),
        request.uri().path(),
        request.headers(),
    ) {
        return response.into_response();
    }
    next.run(request).await
}

fn check(
    hosts: &AllowedHosts,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if !ANY_HOST.contains(&path)
        && let Some(host) = headers.get(header::HOST)
    {
        let host = host.to_str().unwrap_or("");
        if !hosts.allows(host) {
            return Err(refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server does not answer to the host `{host}`; it answers to its own address, localhost and the host of AUTODEV_PUBLIC_URL. Add a name it is reached by (a proxy's) to AUTODEV_ALLOWED_HOSTS"
                ),
            ));
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    if let Some(origin) = header(header::ORIGIN)
        && !hosts.allows_origin(origin, header(header::HOST))
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("requests from the web page at `{origin}` are refused"),
        ));
    }
    // `same-site` too: a page on another port of this host is another origin.
    if let Some(site) = header(header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("requests from other sites are refused (Sec-Fetch-Site: {site})"),
        ));
    }
    // The webhook is authenticated by its signature, whatever its media type.
    if path != "/webhooks/github"
        && let Some(content_type) = header(header::CONTENT_TYPE)
        && !is_json_or_yaml(content_type)
    {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type `{content_type}` is not accepted; send application/json or application/yaml"
            ),
        ));
    }
    Ok(())
}

/// Reads a request body of at most `limit` bytes within [`BODY_TIMEOUT`].
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, Refusal> {
    read_body_by(body, limit, tokio::time::Instant::now() + BODY_TIMEOUT).await
}

/// Reads a request body of at most `limit` bytes by `deadline`.
pub async fn read_body_by(
    body: Body,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, Refusal> {
    match tokio::time::timeout_at(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            // axum says so only in words (http-body-util's `LengthLimitError`).
            let too_big = format!("{e:#} {:?}", std::error::Error::source(&e))
                .contains("length limit exceeded");
            Err(if too_big {
                refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {limit} bytes"),
                )
            } else {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body failed: {e}"),
                )
            })
        }
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

/// A declared `Content-Length` over `limit` is refused before anything is read.
pub fn check_length(headers: &HeaderMap, limit: usize) -> Result<(), Refusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    /// A peer holds at most its share of turns; the next of its requests waits for one given
    /// back, another peer does not wait on it, and nothing is left on the books after.
    #[tokio::test]
    async fn a_peer_waits_in_its_own_queue_and_leaves_nothing_behind() {
        let bodies = Bodies::new();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut held = Vec::new();
        for _ in 0..UNAUTHENTICATED_BODIES_PER_PEER {
            held.push(bodies.turn(Some(a), at(1000)).await.unwrap());
        }
        assert!(
            bodies.turn(Some(a), at(50)).await.is_none(),
            "a peer past its share waits, here until its deadline"
        );
        let other = bodies.turn(Some(b), at(50)).await;
        assert!(other.is_some(), "another peer is not held up by the first");
        drop(other);
        let waiting = tokio::spawn({
            let bodies = bodies.clone();
            async move { bodies.turn(Some(a), at(5000)).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        held.pop();
        assert!(
            waiting.await.unwrap(),
            "a turn given back goes to the peer's next request"
        );
        held.clear();
        assert_eq!(
            bodies.peers(),
            0,
            "no peer is kept once nobody holds or waits"
        );
        assert_eq!(bodies.all.available_permits(), UNAUTHENTICATED_BODIES);
    }

    /// A request that goes while it waits (its client hung up) leaves no peer behind,
    /// whether it waited in its peer's queue or for a turn in all.
    #[tokio::test]
    async fn a_request_gone_while_it_waits_leaves_no_peer_behind() {
        let bodies = Bodies::new();
        let far = at(60_000);
        let mut held = Vec::new();
        for n in 0..UNAUTHENTICATED_BODIES {
            held.push(
                bodies
                    .turn(Some(IpAddr::from([10, 0, 1, n as u8])), far)
                    .await
                    .unwrap(),
            );
        }
        // Waiting for a turn in all, then gone.
        let waiting = tokio::spawn({
            let bodies = bodies.clone();
            async move { bodies.turn(Some([10, 0, 2, 1].into()), far).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(bodies.peers(), UNAUTHENTICATED_BODIES + 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(bodies.peers(), UNAUTHENTICATED_BODIES);
        // Waiting in its own peer's queue (that peer holds its share), then gone.
        held.clear();
        let ip: IpAddr = [10, 0, 3, 1].into();
        let mine: Vec<_> = futures::future::join_all(
            (0..UNAUTHENTICATED_BODIES_PER_PEER).map(|_| bodies.turn(Some(ip), far)),
        )
        .await;
        let waiting = tokio::spawn({
            let bodies = bodies.clone();
            async move { bodies.turn(Some(ip), far).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(mine);
        assert_eq!(bodies.peers(), 0);
    }

    /// The addresses of one IPv6 /64 are one peer; an IPv4 address written as IPv6 is that
    /// IPv4 address.
    #[test]
    fn an_ipv6_peer_is_its_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:fffe".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        assert_eq!(peer_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(peer_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    /// The turns in all bound every peer together; a request of an unknown peer (no
    /// address) takes one of those only.
    #[tokio::test]
    async fn the_turns_in_all_bound_every_peer() {
        let bodies = Bodies::new();
        let mut held = Vec::new();
        for n in 0..UNAUTHENTICATED_BODIES {
            let ip = IpAddr::from([10, 0, 1, n as u8]);
            held.push(bodies.turn(Some(ip), at(1000)).await.unwrap());
        }
        assert!(bodies.turn(None, at(50)).await.is_none());
        assert!(
            bodies
                .turn(Some([10, 0, 2, 1].into()), at(50))
                .await
                .is_none()
        );
        assert_eq!(
            bodies.peers(),
            UNAUTHENTICATED_BODIES,
            "the one that gave up is forgotten"
        );
        held.clear();
        assert!(bodies.turn(None, at(50)).await.is_some());
        assert_eq!(bodies.peers(), 0);
    }

    fn hosts(bound: &str, names: &[&str]) -> AllowedHosts {
        AllowedHosts {
            bound: bound.parse().unwrap(),
            names: names.iter().map(|s| (*s).to_owned()).collect(),
            public_origin: None,
        }
    }

    #[test]
    fn origins_are_whole_origins() {
        let mut h = hosts("0.0.0.0", &["localhost", "autodev.example.com"]);
        h.public_origin = Some(origin_of("https://autodev.example.com/"));
        for (origin, host) in [
            ("http://localhost:8000", "localhost:8000"),
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://10.0.0.5:8000", "10.0.0.5:8000"),
            ("https://autodev.example.com", "127.0.0.1:8000"),
            ("https://autodev.example.com:443", "autodev.example.com"),
            ("http://localhost", "localhost:80"),
        ] {
            assert!(h.allows_origin(origin, Some(host)), "{origin} for {host}");
        }
        for (origin, host) in [
            ("http://localhost:3000", "localhost:8000"),
            ("http://203.0.113.9:8000", "10.0.0.5:8000"),
            ("http://autodev.example.com", "127.0.0.1:8000"),
            ("https://autodev.example.com:8443", "autodev.example.com"),
            ("https://attacker.example", "attacker.example"),
            ("null", "localhost:8000"),
        ] {
            assert!(!h.allows_origin(origin, Some(host)), "{origin} for {host}");
        }
        assert!(!h.allows_origin("http://localhost:8000", None));
    }

    #[test]
    fn hosts_by_name_and_address() {
        let h = hosts("127.0.0.1", &["localhost", "autodev.example.com"]);
        for ok in [
            "127.0.0.1:8000",
            "localhost:8000",
            "LOCALHOST",
            "autodev.example.com",
            "autodev.example.com.:443",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8000",
            "localhost.attacker.example",
            "10.0.0.5:8000",
            "",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
        let all = hosts("0.0.0.0", &["localhost"]);
        assert!(all.allows("10.0.0.5:8000"), "any address when bound to all");
        assert!(all.allows("[::1]:8000"));
        assert!(!all.allows("attacker.example"));
    }

    #[test]
    fn urls_and_ports() {
        assert_eq!(
            url_host("https://user@Autodev.Example.com:8443/x?y").as_deref(),
            Some("autodev.example.com")
        );
        assert_eq!(url_host("http://[::1]:8000").as_deref(), Some("[::1]"));
        assert_eq!(strip_port("example.com:80"), "example.com");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn cross_site_writes_are_refused() {
        let h = hosts("127.0.0.1", &["localhost"]);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8000".parse().unwrap());
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let status = |r: Result<(), Refusal>| r.err().map(|r| r.0);
        assert_eq!(
            status(check(&h, &Method::POST, "/tasks/x/retry", &headers)),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert_eq!(status(check(&h, &Method::POST, "/tasks", &headers)), None);
        headers.insert(header::ORIGIN, "https://attacker.example".parse().unwrap());
        assert_eq!(
            status(check(&h, &Method::POST, "/tasks", &headers)),
            Some(StatusCode::FORBIDDEN)
        );
        headers.insert(header::ORIGIN, "http://localhost:3000".parse().unwrap());
        assert_eq!(
            status(check(&h, &Method::POST, "/tasks", &headers)),
            Some(StatusCode::FORBIDDEN),
            "another port is another site"
        );
        headers.insert(header::ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert_eq!(status(check(&h, &Method::POST, "/tasks", &headers)), None);
        headers.insert(header::HOST, "attacker.example:8000".parse().unwrap());
        assert_eq!(
            status(check(&h, &Method::GET, "/tasks", &headers)),
            Some(StatusCode::MISDIRECTED_REQUEST)
        );
        assert_eq!(status(check(&h, &Method::GET, "/healthz", &headers)), None);
        assert_eq!(
            status(check(&h, &Method::GET, "/metrics", &headers)),
            Some(StatusCode::MISDIRECTED_REQUEST)
        );
    }
}
