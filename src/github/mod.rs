//! The GitHub API as autodev speaks it: the client with its one retry policy (`client`), one
//! typed method per call (`api`), webhook payloads parsed into domain events (`event`), and
//! the webhook's signature and raw JSON (`webhook`). What autodev does with GitHub is `bot`'s.
//! Imports `core`, `config` and `proc`; never the store or the engine.

pub mod api;
pub mod client;
pub mod event;
pub mod manifest;
pub mod webhook;
