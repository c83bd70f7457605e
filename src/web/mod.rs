//! HTTP: the JSON API and the webhook endpoint (`api`), task pages for people (`pages`), the
//! pages that create the GitHub App (`setup`), and what every request passes first (`guard`:
//! hosts, origins, bodies). Imports the engine and
//! `bot` (intake); never `run` or `maintenance`.

pub mod api;
pub mod guard;
pub mod pages;
pub mod setup;
