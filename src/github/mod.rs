//! GitHub App mode: webhook payloads parsed into domain events at the edge, and the
//! `/autodev` command language. Raw JSON lives only in `webhook`.

pub mod client;
pub mod command;
pub mod event;
pub mod intake;
pub mod webhook;
