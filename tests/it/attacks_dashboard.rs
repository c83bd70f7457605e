//! Attacks on the dashboard, the task pages and what they show, each one that worked against
//! a first version, kept as a test: secrets printed where the blotting did not look (the edge
//! of the kept tail, gate output, failure reasons, a CLI's login file), the agent's output
//! read through a public link, a redirect off the site after sign-in, framing, a live page
//! holding off a restart, a flood of live pages, a stolen cookie, worker metrics open to the
//! network.

use std::time::Duration;

use crate::dashboard::{Events, csrf_of, sign_in};
use crate::support::*;

const KEY: &str = "sk-ant-api03-SECRETVALUE0123456789abcdefXYZ";

/// A world whose claude sees `KEY` as its provider key.
fn keyed_world(agent: &str) -> World {
    let mut world = World::new();
    world
        .extra_env
        .push(("ANTHROPIC_API_KEY".into(), KEY.into()));
    world.agent("claude", agent);
    world
}

/// Every piece of `KEY` eight characters long: none may show.
fn assert_no_piece_of_key(text: &str) {
    for start in 0..=KEY.len() - 8 {
        let piece = &KEY[start..start + 8];
        assert!(
            !text.contains(piece),
            "`{piece}` of the key shows in:\n{}",
            &text[..text.len().min(3000)]
        );
    }
}

async fn stored_output(world: &World) -> String {
    let pool = world.db().await;
    let text: String = sqlx::query_scalar("SELECT text FROM task_output")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    text
}

/// The key printed first, then just enough to cut the kept 32 KiB tail right after the key's
/// first character: what is left of the key is blotted too.
#[tokio::test]
async fn a_key_cut_by_the_edge_of_the_kept_output_is_still_blotted() {
    let note = "── agent claude_cli ──\n".len();
    let result_line = CLAUDE_OK.len() + 1;
    let pad = 32 * 1024 + note + 1 - KEY.len() - 1 - result_line;
    let world = keyed_world(&format!(
        "cat > /dev/null\nprintf '%s' \"$ANTHROPIC_API_KEY\"\nhead -c {pad} /dev/zero | tr '\\0' p\necho\necho x > f.txt\necho '{CLAUDE_OK}'"
    ));
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("EDGE-1", ""))
        .await;
    let task = server.ended("EDGE-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    let stored = stored_output(&world).await;
    assert!(stored.starts_with("[secret]ppp"), "{}", &stored[..80]);
    assert_no_piece_of_key(&stored);
}

/// A gate that prints the file the agent wrote its key to, and an agent that fails printing
/// its key: neither the gate's output, nor the reason, nor the timeline shows it.
#[tokio::test]
async fn a_key_in_gate_output_or_a_failure_reason_is_blotted() {
    let world = keyed_world(&format!(
        "cat > /dev/null\necho \"$ANTHROPIC_API_KEY\" > key.txt\necho '{CLAUDE_OK}'"
    ));
    let server = world.serve();
    server
        .post_spec(
            "application/yaml",
            &spec("GATE-1", "acceptance:\n  tests: [\"cat key.txt\"]\n"),
        )
        .await;
    let task = server.ended("GATE-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    let (_, shown) = server.get("/tasks/GATE-1").await;
    assert_holds(&shown.to_string(), "[secret]");
    assert_no_piece_of_key(&shown.to_string());
    let (_, page) = page(&server, "/view/tasks/GATE-1").await;
    assert_no_piece_of_key(&page);

    world.agent(
        "claude",
        "cat > /dev/null\necho \"boom $ANTHROPIC_API_KEY\" >&2\nexit 1",
    );
    server
        .post_spec("application/yaml", &spec("FAIL-1", ""))
        .await;
    let task = server.ended("FAIL-1").await;
    assert_eq!(task.state, State::Error, "{task:#}");
    let (_, shown) = server.get("/tasks/FAIL-1").await;
    assert_holds(&shown.to_string(), "boom [secret]");
    assert_no_piece_of_key(&shown.to_string());
}

async fn page(server: &Server, path: &str) -> (u16, String) {
    let resp = server
        .client
        .get(format!("{}{path}", server.url))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A subscription login's tokens (in the CLI's login file, not in any variable) printed by
/// the agent are blotted too.
#[tokio::test]
async fn a_cli_logins_tokens_printed_by_the_agent_are_blotted() {
    let world = keyed_world(&format!(
        "cat > /dev/null\ncat \"$HOME/.claude/.credentials.json\"\necho\necho x > f.txt\necho '{CLAUDE_OK}'"
    ));
    let access = "sk-ant-oat01-ACCESSTOKENVALUE-0123456789";
    let refresh = "sk-ant-ort01-REFRESHTOKENVALUE-9876543210";
    std::fs::create_dir_all(world.home.join(".claude")).unwrap();
    std::fs::write(
        world.home.join(".claude/.credentials.json"),
        format!(
            r#"{{"claudeAiOauth":{{"accessToken":"{access}","refreshToken":"{refresh}","expiresAt":1}}}}"#
        ),
    )
    .unwrap();
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("LOGIN-1", ""))
        .await;
    let task = server.ended("LOGIN-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    let stored = stored_output(&world).await;
    assert_holds(&stored, r#""accessToken":"[secret]""#);
    assert_lacks(&stored, access);
    assert_lacks(&stored, refresh);
}

/// With a token, the signed link (posted on the issue, for its author to read) shows the
/// task but not the agent's raw output: an agent can be talked into printing its key in a
/// form no blotting knows. A signed-in operator sees it.
#[tokio::test]
async fn the_agents_output_is_for_operators_not_for_signed_link_readers() {
    let mut world = keyed_world(&format!(
        "cat > /dev/null\necho 'the agent says hello'\necho x > f.txt\necho '{CLAUDE_OK}'"
    ));
    world.extra_env.extend([
        ("AUTODEV_API_TOKEN".into(), "a-long-operator-token".into()),
        // Links carry the server's public address; the test follows their path.
        (
            "AUTODEV_PUBLIC_URL".into(),
            "https://autodev.example".into(),
        ),
    ]);
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("OUT-1", ""))
        .await;
    let task = server.ended("OUT-1").await;
    let signed = task.page.expect("the signed page link");
    let path = signed
        .split_once("://")
        .map_or(signed.as_str(), |(_, rest)| {
            &rest[rest.find('/').unwrap()..]
        });
    let (status, shown) = page(&server, path).await;
    assert_eq!(status, 200, "{shown}");
    assert_holds(&shown, "Acceptance");
    assert_lacks(&shown, "the agent says hello");
    let (_, mut events) = Events::open(&server, &path.replacen('?', "/events?", 1), None).await;
    let update = events.until("OUT-1").await;
    assert_lacks(&update, "the agent says hello");

    let cookie = sign_in(&server, "a-long-operator-token").await;
    let shown = server
        .client
        .get(format!("{}/view/tasks/OUT-1", server.url))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_holds(&shown, "the agent says hello");
}

/// `next` with a tab or a line break (which browsers drop from a URL) after the first slash
/// would lead off the site after sign-in; every answer forbids framing and referrers.
#[tokio::test]
async fn sign_in_leads_nowhere_else_and_no_page_can_be_framed() {
    let mut world = World::new();
    world
        .extra_env
        .push(("AUTODEV_API_TOKEN".into(), "a-long-operator-token".into()));
    let server = world.serve_with(&["--workers", "0"]);
    for next in [
        "/%09/evil.example/x",
        "/%0A/evil.example",
        "/%5Cevil.example",
    ] {
        let (_, shown) = page(&server, &format!("/login?next={next}")).await;
        assert_lacks(&shown, "evil.example");
        assert_holds(&shown, r#"location.href = "/""#);
    }
    for path in ["/login", "/view/tasks/none", "/healthz"] {
        let resp = server
            .client
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .unwrap();
        let headers = resp.headers();
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_holds(
            headers["content-security-policy"].to_str().unwrap(),
            "frame-ancestors 'none'",
        );
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
}

/// A live page left open (anyone with a task's link can keep one open) does not hold off a
/// restart: its stream ends when the process stops.
#[tokio::test]
async fn an_open_live_page_does_not_hold_off_a_restart() {
    let world = World::new();
    let server = world.serve_with(&["--workers", "0"]);
    let (status, body) = server.post_spec("application/yaml", &spec("Q-1", "")).await;
    assert_eq!(status, 201, "{body}");
    let (status, mut task_stream) = Events::open(&server, "/view/tasks/Q-1/events", None).await;
    assert_eq!(status, 200);
    task_stream.until("Q-1").await;
    let (_, mut board_stream) = Events::open(&server, "/events", None).await;
    board_stream.until("Q-1").await;
    let (status, took) = server.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

/// One peer cannot open live pages without bound: past its share, it is told to wait.
#[tokio::test]
async fn one_peer_cannot_open_live_pages_without_bound() {
    let world = World::new();
    let server = world.serve_with(&["--workers", "0"]);
    server.post_spec("application/yaml", &spec("F-1", "")).await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let (status, stream) = Events::open(&server, "/view/tasks/F-1/events", None).await;
        assert_eq!(status, 200);
        open.push(stream);
    }
    let (status, _) = Events::open(&server, "/view/tasks/F-1/events", None).await;
    assert_eq!(status, 503, "the 17th stream of one peer");
    // One closed gives its turn back.
    drop(open.pop());
    eventually("a turn given back", async || {
        let (status, stream) = Events::open(&server, "/events", None).await;
        match status {
            200 => Ok(stream),
            other => Err(other),
        }
    })
    .await;
}

/// A session cookie (stolen through another port of the same host, say) with the CSRF token
/// a page shows presses a page's buttons, and does nothing else: no task is submitted, no
/// metrics are read.
#[tokio::test]
async fn a_session_only_presses_buttons() {
    let mut world = World::new();
    world
        .extra_env
        .push(("AUTODEV_API_TOKEN".into(), "a-long-operator-token".into()));
    let server = world.serve_with(&["--workers", "0"]);
    let cookie = sign_in(&server, "a-long-operator-token").await;
    server.post_spec("application/yaml", &spec("S-1", "")).await;
    let shown = server
        .client
        .get(format!("{}/view/tasks/S-1", server.url))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = csrf_of(&shown);
    let with_session = |rb: reqwest::RequestBuilder| {
        rb.header("Cookie", &cookie)
            .header("X-CSRF-Token", &csrf)
            .header("Content-Type", "application/yaml")
    };
    let submit = with_session(server.client.post(format!("{}/tasks", server.url)))
        .body(spec("STOLEN-1", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(submit.status().as_u16(), 401);
    for path in ["/metrics", "/tasks", "/tasks/S-1"] {
        let read = with_session(server.client.get(format!("{}{path}", server.url)))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status().as_u16(), 401, "{path}");
    }
    let cancel = with_session(
        server
            .client
            .post(format!("{}/tasks/S-1/cancel", server.url)),
    )
    .body("{}")
    .send()
    .await
    .unwrap();
    assert_eq!(cancel.status().as_u16(), 200);
}

/// A worker's metrics on an address others reach need the token, as `serve` does.
#[tokio::test]
async fn worker_metrics_beyond_loopback_need_the_token() {
    let world = World::new();
    let out = world
        .command(&["worker", "--metrics-bind", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_holds(
        &String::from_utf8_lossy(&out.stderr),
        "without AUTODEV_API_TOKEN",
    );
}
