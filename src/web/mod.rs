//! HTTP: the JSON API and the webhook endpoint (`api`), the dashboard (`board`), task pages
//! for people (`pages`), who may use them (`session`), the pages that create the GitHub App
//! (`setup`), and what every request passes first (`guard`: hosts, origins, bodies). Pages
//! are rendered from the database and kept live by server-sent events read from it, so they
//! show tasks that run in any process. Imports the engine and `bot` (intake); never `run` or
//! `maintenance`.

pub mod api;
pub mod board;
pub mod guard;
pub mod pages;
pub mod session;
pub mod setup;
