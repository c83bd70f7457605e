//! Agents: the providers tried in order (`providers`: the agent CLIs and their logins) and
//! autodev's own tool loop for the Anthropic and OpenAI-compatible APIs (`tool_loop`).
//! Imports `config` and `proc`; never git, the store or the engine.

pub mod providers;
pub mod tool_loop;
