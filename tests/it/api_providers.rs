//! API providers end to end: `autodev serve` runs a task with the Anthropic or the OpenAI API
//! (the fake model on 127.0.0.1) through the built-in tool loop; tools act only inside the
//! working directory, commands never see the API key, and failures fall back or go back to
//! the model like a CLI's.

use serde_json::{Value, json};

use crate::fake_models::{FakeModels, Turn};
use crate::support::{State, World, git, spec};

const KEY: &str = "sk-test-0123456789";

/// The tool results the model received in request `n` (Anthropic form): (content, is_error).
fn anthropic_results(requests: &[(&str, Value)], n: usize) -> Vec<(String, bool)> {
    let messages = requests[n].1["messages"].as_array().unwrap();
    messages.last().unwrap()["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .map(|b| {
            (
                b["content"].as_str().unwrap_or_default().to_owned(),
                b["is_error"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_anthropic_api_writes_the_change_through_tools_confined_to_the_worktree() {
    let fake = FakeModels::start(
        KEY,
        vec![
            Turn::Fail(529),
            Turn::Tools(vec![("list_files", json!({}))]),
            Turn::Tools(vec![
                (
                    "write_file",
                    json!({"path": "src/feature.txt", "content": "x\n"}),
                ),
                ("read_file", json!({"path": "../../../outside.txt"})),
                (
                    "write_file",
                    json!({"path": ".git/hooks/pre-commit", "content": "evil"}),
                ),
                ("read_file", json!({"path": "/etc/hostname"})),
            ]),
            Turn::Tools(vec![(
                "run_command",
                json!({"command": "cat src/feature.txt; echo \"key=[$ANTHROPIC_API_KEY]\""}),
            )]),
            Turn::Done("Wrote src/feature.txt."),
        ],
    )
    .await;
    let mut world = World::new();
    world.write_config(
        "providers:\n  order: [anthropic_api]\n  anthropic_api: {mode: api, input_price: 3, output_price: 15}\n",
    );
    world.extra_env.extend([
        ("ANTHROPIC_API_KEY".to_owned(), KEY.to_owned()),
        ("ANTHROPIC_BASE_URL".to_owned(), fake.url.clone()),
    ]);
    std::fs::write(world.data.join("outside.txt"), "outside secret").unwrap();
    let server = world.serve();
    server
        .post_spec(
            "application/yaml",
            &spec(
                "API-1",
                "acceptance:\n  tests: [\"grep -qx x src/feature.txt\"]\n",
            ),
        )
        .await;
    let task = server.ended("API-1").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_eq!(task.provider.as_deref(), Some("anthropic_api"));
    // Four answers of 100 tokens in and 20 out, at $3 and $15 per million.
    let cost = task.cost_usd.unwrap();
    assert!((cost - 0.0024).abs() < 1e-9, "{cost}");
    assert!(
        task.timeline().contains("400 tokens in, 80 out"),
        "{task:#}"
    );
    // Operators see the same by provider and role.
    let metrics = server.metrics().await;
    for line in [
        r#"autodev_agent_tokens_total{direction="input",provider="anthropic_api",role="backend"} 400"#,
        r#"autodev_agent_tokens_total{direction="output",provider="anthropic_api",role="backend"} 80"#,
        r#"autodev_agent_cost_usd_total{provider="anthropic_api",role="backend"} 0.0024"#,
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    assert_eq!(
        git(&world.repo, &["show", "auto/backend/API-1:src/feature.txt"]),
        "x"
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 5, "one overloaded answer, tried again");
    assert!(
        requests[1].1["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("grep -qx x src/feature.txt"),
        "the task's prompt goes first"
    );
    let listing = anthropic_results(&requests, 2);
    assert_eq!(listing.len(), 1);
    assert!(listing[0].0.contains("README.md"), "{listing:?}");
    assert!(!listing[0].0.contains(".git"), "{listing:?}");
    let results = anthropic_results(&requests, 3);
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(!results[0].1, "{results:?}");
    assert!(
        results[1].1 && results[1].0.contains("outside the working directory"),
        "{results:?}"
    );
    assert!(!results[1].0.contains("outside secret"));
    assert!(results[2].1 && results[2].0.contains(".git"), "{results:?}");
    assert!(
        results[3].1 && results[3].0.contains("outside the working directory"),
        "{results:?}"
    );
    let ran = anthropic_results(&requests, 4);
    assert_eq!(ran.len(), 1);
    assert!(ran[0].0.contains("exit code 0"), "{ran:?}");
    assert!(ran[0].0.contains("x\n"), "{ran:?}");
    assert!(
        ran[0].0.contains("key=[]"),
        "commands never see the key: {ran:?}"
    );
    let hooks = std::fs::read_dir(world.repo.join(".git/hooks"))
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| std::fs::read_to_string(e.path()).unwrap_or_default() == "evil")
        })
        .unwrap_or(false);
    assert!(!hooks, "no hook was written");
}

#[tokio::test]
async fn a_refused_key_falls_back_to_the_openai_api_and_gate_failures_go_back_to_it() {
    let fake = FakeModels::start(
        KEY,
        vec![
            // Round 1: a wrong answer.
            Turn::Tools(vec![(
                "write_file",
                json!({"path": "answer.txt", "content": "wrong\n"}),
            )]),
            Turn::Done("first try"),
            // Round 2, after the gate failed: fixed.
            Turn::Tools(vec![(
                "edit_file",
                json!({"path": "answer.txt", "old_text": "wrong", "new_text": "right"}),
            )]),
            Turn::Done("fixed"),
        ],
    )
    .await;
    let mut world = World::new();
    world.write_config(
        "providers:\n  order: [anthropic_api, openai_api]\n  openai_api: {mode: api, input_price: 1, output_price: 2}\n",
    );
    world.extra_env.extend([
        ("ANTHROPIC_API_KEY".to_owned(), "sk-not-this-one".to_owned()),
        ("ANTHROPIC_BASE_URL".to_owned(), fake.url.clone()),
        ("OPENAI_API_KEY".to_owned(), KEY.to_owned()),
        ("OPENAI_BASE_URL".to_owned(), format!("{}/v1", fake.url)),
    ]);
    let server = world.serve();
    server
        .post_spec(
            "application/yaml",
            &spec(
                "API-2",
                "acceptance:\n  tests: [\"grep -q right answer.txt\"]\n",
            ),
        )
        .await;
    let task = server.ended("API-2").await;
    assert_eq!(task.state, State::Passed, "{task:#}");
    assert_eq!(task.provider.as_deref(), Some("openai_api"));
    assert_eq!(task.rounds, 2, "{task:#}");
    // Two rounds of two answers (100 in, 20 out each) at $1 and $2 per million: both rounds
    // count.
    let cost = task.cost_usd.unwrap();
    assert!((cost - 0.00056).abs() < 1e-9, "{cost}");
    let events = task.timeline();
    assert!(
        events.contains("anthropic_api") && events.contains("401"),
        "the refused key is on the timeline: {events}"
    );
    assert_eq!(
        git(&world.repo, &["show", "auto/backend/API-2:answer.txt"]),
        "right"
    );
    let openai: Vec<Value> = fake
        .requests()
        .into_iter()
        .filter(|(api, _)| *api == "openai")
        .map(|(_, body)| body)
        .collect();
    assert_eq!(openai.len(), 4);
    let round2 = openai[2]["messages"][1]["content"].as_str().unwrap();
    assert!(
        round2.contains("Round 2") && round2.contains("grep -q right answer.txt"),
        "the gate's failure goes back to the model: {round2}"
    );
    assert_eq!(openai[0]["messages"][0]["role"], "system");
}

#[tokio::test]
async fn providers_lists_api_providers_with_their_url_or_what_is_missing() {
    let mut world = World::new();
    world.write_config("providers:\n  order: [anthropic_api, openai_api]\n");
    world.extra_env.extend([
        ("ANTHROPIC_API_KEY".to_owned(), KEY.to_owned()),
        (
            "ANTHROPIC_BASE_URL".to_owned(),
            "http://127.0.0.1:9".to_owned(),
        ),
    ]);
    let out = world.command(&["providers"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("anthropic_api") && stdout.contains("http://127.0.0.1:9/v1/messages"),
        "{stdout}"
    );
    assert!(stdout.contains("OPENAI_API_KEY is not set"), "{stdout}");
    assert!(!stdout.contains(KEY), "{stdout}");
}

#[tokio::test]
async fn a_model_that_never_finishes_is_stopped_at_max_turns_and_its_tokens_still_count() {
    let fake = FakeModels::start(
        KEY,
        vec![
            Turn::Tools(vec![("list_files", json!({}))]),
            Turn::Tools(vec![("list_files", json!({}))]),
            Turn::Tools(vec![("list_files", json!({}))]),
        ],
    )
    .await;
    let mut world = World::new();
    world.write_config(
        "providers:\n  order: [anthropic_api]\n  anthropic_api: {mode: api, max_turns: 2, input_price: 3, output_price: 15}\n",
    );
    world.extra_env.extend([
        ("ANTHROPIC_API_KEY".to_owned(), KEY.to_owned()),
        ("ANTHROPIC_BASE_URL".to_owned(), fake.url.clone()),
    ]);
    let server = world.serve();
    server
        .post_spec("application/yaml", &spec("API-4", "max_rounds: 1\n"))
        .await;
    let task = server.ended("API-4").await;
    assert_ne!(task.state, State::Passed, "{task:#}");
    assert_eq!(fake.requests().len(), 2, "stopped at max_turns");
    let events = task.timeline();
    assert!(
        events.contains("after 2 turns") && events.contains("200 tokens in, 40 out"),
        "{events}"
    );
    // Two answers of 100 in and 20 out at $3 and $15 per million: paid for, though it failed.
    let cost = task.cost_usd.unwrap_or_default();
    assert!((cost - 0.0012).abs() < 1e-9, "{task:#}");
}
