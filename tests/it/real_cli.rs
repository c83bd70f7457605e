//! The real `claude` CLI (from npm, installed by `.ci/run` into `target/tools/claude-cli`, or
//! named by `AUTODEV_TEST_CLAUDE`) run by autodev in the sandbox, against a fake Anthropic
//! API on 127.0.0.1 reached through the egress proxy. The fake streams what the CLI expects
//! (server-sent events) and drives it with its own tools: the model asks for `Bash` to write
//! the feature file, then finishes; autodev commits what the CLI did.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::support::{World, git};

const KEY: &str = "sk-ant-real-cli-test";

/// Where the real CLI is: `AUTODEV_TEST_CLAUDE`, else what `.ci/run` installs.
fn real_claude() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AUTODEV_TEST_CLAUDE") {
        return Some(PathBuf::from(p));
    }
    let installed = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/tools/claude-cli/node_modules/.bin/claude");
    installed.exists().then_some(installed)
}

/// Every request the fake saw: (path, x-api-key, body).
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// One streamed message: a text block or a tool call, then the stop reason.
fn stream(model: &str, block: Value, stop: &str) -> Response {
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    )];
    if block["type"] == "tool_use" {
        let input = block["input"].to_string();
        let mut start = block.clone();
        start["input"] = json!({});
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": start}),
        ));
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": input}}),
        ));
    } else {
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ));
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": block["text"]}}),
        ));
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let body: String = events
        .into_iter()
        .map(|(event, data)| format!("event: {event}\ndata: {data}\n\n"))
        .collect();
    ([("content-type", "text/event-stream")], body).into_response()
}

async fn messages(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    seen.lock()
        .unwrap()
        .push(("/v1/messages".into(), key.clone(), req.clone()));
    if key != KEY {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})),
        )
            .into_response();
    }
    let model = req["model"].as_str().unwrap_or("claude").to_owned();
    let offers_bash = req["tools"]
        .as_array()
        .is_some_and(|tools| tools.iter().any(|t| t["name"] == "Bash"));
    let answered = req["messages"].as_array().is_some_and(|m| {
        m.iter().any(|msg| {
            msg["content"]
                .as_array()
                .is_some_and(|c| c.iter().any(|b| b["type"] == "tool_result"))
        })
    });
    // The session: a tool call first, then the end. Side requests (titles, summaries) get text.
    let (block, stop) = if offers_bash && !answered {
        (
            json!({"type": "tool_use", "id": "toolu_real_1", "name": "Bash",
                "input": {"command": "echo from-the-real-cli > feature.txt", "description": "Write the feature file"}}),
            "tool_use",
        )
    } else {
        (json!({"type": "text", "text": "Done."}), "end_turn")
    };
    if req["stream"] == true {
        return stream(&model, block, stop);
    }
    axum::Json(
        json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
        "content": [block], "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5}}),
    )
    .into_response()
}

async fn anything(State(seen): State<Seen>, uri: axum::http::Uri, body: Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    seen.lock()
        .unwrap()
        .push((uri.path().to_owned(), String::new(), req));
    axum::Json(json!({"input_tokens": 10})).into_response()
}

#[tokio::test]
async fn the_real_claude_cli_works_in_the_sandbox_through_the_proxy() {
    let Some(claude) = real_claude() else {
        // `.ci/run` installs it; CI never skips this.
        eprintln!(
            "not run: the real claude CLI is not installed (run .ci/run, or set AUTODEV_TEST_CLAUDE)"
        );
        return;
    };
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/v1/messages", post(messages))
        .fallback(anything)
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut world = World::new();
    world.write_config(&format!(
        "providers:\n  order: [claude_cli]\n  claude_cli: {{mode: cli, binary: {}}}\n",
        claude.display()
    ));
    world.extra_env.extend([
        ("ANTHROPIC_API_KEY".to_owned(), KEY.to_owned()),
        ("ANTHROPIC_BASE_URL".to_owned(), url),
    ]);
    let server = world.serve();
    let task = server
        .run_to_end(
            "REAL-CLI",
            "acceptance:\n  tests: [\"grep -qx from-the-real-cli feature.txt\"]\n",
        )
        .await;
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        task.state,
        crate::support::State::Passed,
        "{task:#}\nrequests: {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|(path, key, body)| path == "/v1/messages"
                && key == KEY
                && body.to_string().contains("Add a feature")),
        "the CLI sent the task's prompt: {requests:#?}"
    );
    assert_eq!(
        git(&world.repo, &["show", "auto/backend/REAL-CLI:feature.txt"]),
        "from-the-real-cli"
    );
    assert_eq!(task.provider.as_deref(), Some("claude_cli"));
}
