//! GitHub App mode: webhook payloads parsed into domain events at the edge, and the
//! `/autodev` command language. Raw JSON lives only in `webhook`.

pub mod client;
pub mod command;
pub mod event;
pub mod handler;
pub mod intake;
pub mod issue_spec;
pub mod messages;
pub mod outbox;
pub mod webhook;
