//! GitHub: App mode's webhook payloads parsed into domain events at the edge, the `/autodev`
//! command language, the API client and its side effects, and local mode's `origin`. Raw
//! webhook JSON lives only in `webhook`.

pub mod api;
pub mod client;
pub mod command;
pub mod event;
pub mod handler;
pub mod intake;
pub mod issue_spec;
pub mod messages;
pub mod origin;
pub mod outbox;
pub mod webhook;
