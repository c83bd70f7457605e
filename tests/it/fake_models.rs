//! A fake model API on 127.0.0.1 speaking both the Anthropic Messages API (`POST
//! /v1/messages`) and the OpenAI Chat Completions API (`POST /v1/chat/completions`). It checks
//! what the real services check (the key, `anthropic-version`, that every tool result answers a
//! tool call of the previous turn) and answers each request with the next scripted turn: tool
//! calls, or a final text. Every request body is kept for the test to read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Turn {
    /// Ask for these tools: (name, input).
    Tools(Vec<(&'static str, Value)>),
    /// Finish with this text.
    Done(&'static str),
    /// Answer with this HTTP status (and `retry-after: 0`) instead.
    Fail(u16),
}

#[derive(Default)]
pub struct ModelState {
    pub key: String,
    pub turns: VecDeque<Turn>,
    /// (API, request body) of every request, in order.
    pub requests: Vec<(&'static str, Value)>,
    next_id: u64,
}

pub struct FakeModels {
    pub url: String,
    pub state: Arc<Mutex<ModelState>>,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeModels {
    pub async fn start(key: &str, turns: Vec<Turn>) -> Self {
        let state = Arc::new(Mutex::new(ModelState {
            key: key.into(),
            turns: turns.into(),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/v1/messages", post(anthropic))
            .route("/v1/chat/completions", post(openai))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            state,
            _server: server,
        }
    }

    pub fn requests(&self) -> Vec<(&'static str, Value)> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response();
    r.headers_mut().insert("retry-after", "0".parse().unwrap());
    r
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

const TOOLS: [&str; 5] = [
    "list_files",
    "read_file",
    "write_file",
    "edit_file",
    "run_command",
];

async fn anthropic(
    State(s): State<Arc<Mutex<ModelState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = s.lock().unwrap();
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "invalid_request_error", "body is not JSON");
    };
    st.requests.push(("anthropic", req.clone()));
    if header(&headers, "x-api-key") != st.key {
        return error(401, "authentication_error", "invalid x-api-key");
    }
    if header(&headers, "anthropic-version").is_empty() {
        return error(
            400,
            "invalid_request_error",
            "anthropic-version header is required",
        );
    }
    if !req["max_tokens"].is_u64() || !req["model"].is_string() {
        return error(
            400,
            "invalid_request_error",
            "model and max_tokens are required",
        );
    }
    let offered: Vec<&str> = req["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    if TOOLS.iter().any(|t| !offered.contains(t)) {
        return error(400, "invalid_request_error", "tools missing");
    }
    // Every tool_result answers a tool_use of the assistant turn before it.
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    for pair in messages.windows(2) {
        let asked: Vec<&str> = pair[0]["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "tool_use")
            .filter_map(|b| b["id"].as_str())
            .collect();
        let answered: Vec<&str> = pair[1]["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "tool_result")
            .filter_map(|b| b["tool_use_id"].as_str())
            .collect();
        if pair[1]["role"] == "user" && !answered.is_empty() {
            let mut a = asked.clone();
            let mut b = answered.clone();
            a.sort();
            b.sort();
            if a != b {
                return error(
                    400,
                    "invalid_request_error",
                    "tool_result blocks must answer each tool_use of the previous message",
                );
            }
        }
    }
    let Some(turn) = st.turns.pop_front() else {
        return error(500, "api_error", "the script has no more turns");
    };
    let content: Vec<Value> = match turn {
        Turn::Fail(status) => return error(status, "overloaded_error", "Overloaded"),
        Turn::Done(text) => vec![json!({"type": "text", "text": text})],
        Turn::Tools(calls) => calls
            .into_iter()
            .map(|(name, input)| {
                st.next_id += 1;
                json!({"type": "tool_use", "id": format!("toolu_{:04}", st.next_id), "name": name, "input": input})
            })
            .collect(),
    };
    let stop = if content.iter().any(|b| b["type"] == "tool_use") {
        "tool_use"
    } else {
        "end_turn"
    };
    axum::Json(json!({
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": req["model"],
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": {"input_tokens": 100, "output_tokens": 20},
    }))
    .into_response()
}

async fn openai(
    State(s): State<Arc<Mutex<ModelState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut st = s.lock().unwrap();
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(400, "invalid_request_error", "body is not JSON");
    };
    st.requests.push(("openai", req.clone()));
    if header(&headers, "authorization") != format!("Bearer {}", st.key) {
        return error(401, "invalid_api_key", "Incorrect API key provided");
    }
    let offered: Vec<&str> = req["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    if TOOLS.iter().any(|t| !offered.contains(t)) || !req["model"].is_string() {
        return error(400, "invalid_request_error", "model and tools are required");
    }
    // Every tool message answers a tool call of the assistant message before the run of them.
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let mut open: Vec<String> = Vec::new();
    for m in &messages {
        match m["role"].as_str() {
            Some("assistant") => {
                if !open.is_empty() {
                    return error(400, "invalid_request_error", "tool calls left unanswered");
                }
                open = m["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["id"].as_str().map(str::to_owned))
                    .collect();
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or_default();
                let Some(i) = open.iter().position(|o| o == id) else {
                    return error(
                        400,
                        "invalid_request_error",
                        "a tool message answers no tool call",
                    );
                };
                open.remove(i);
            }
            _ => {}
        }
    }
    let Some(turn) = st.turns.pop_front() else {
        return error(500, "server_error", "the script has no more turns");
    };
    let message = match turn {
        Turn::Fail(status) => return error(status, "server_error", "try again"),
        Turn::Done(text) => json!({"role": "assistant", "content": text}),
        Turn::Tools(calls) => {
            let calls: Vec<Value> = calls
                .into_iter()
                .map(|(name, input)| {
                    st.next_id += 1;
                    json!({"id": format!("call_{:04}", st.next_id), "type": "function",
                           "function": {"name": name, "arguments": input.to_string()}})
                })
                .collect();
            json!({"role": "assistant", "content": null, "tool_calls": calls})
        }
    };
    let finish = if message["tool_calls"].is_array() {
        "tool_calls"
    } else {
        "stop"
    };
    axum::Json(json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": req["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }))
    .into_response()
}
