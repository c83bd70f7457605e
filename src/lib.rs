//! autodev: turns task specs (from GitHub issues, `POST /tasks` or `autodev run`) into branches
//! produced by AI coding agents, checked by acceptance gates that run outside the agent.
//!
//! The modules are layers, lowest first; each imports only from layers below it (the test
//! `layers` in `tests/it/` keeps it so, and `docs/architecture.md` draws the map):
//!
//! | layer | modules |
//! |---|---|
//! | domain | [`core`] (ids, specs, roles, the trust rules, untrusted text) |
//! | settings | [`config`] |
//! | infrastructure | [`metrics`], [`store`] (every SQL statement), [`jobs`] (queue payloads), [`proc`] (processes, the sandbox, egress), [`git`], [`github`] (the API and its payloads) |
//! | links | [`links`] (signed task page links) |
//! | the core service | [`engine`] (submit, cancel, retry, record) |
//! | agents | [`agent`] (providers: CLIs and the API tool loop) |
//! | GitHub behaviour | [`bot`] (intake, handlers, commands, the outbox of effects, local mode's `origin`) |
//! | one task's life | [`run`] (the pipeline in steps: prepare, rounds, finalize; gates, prompts) |
//! | schedules | [`maintenance`] (checkpoints, rebases, clean-up, pull request sweeps) |
//! | HTTP | [`web`] (the JSON API, task pages, request guards) |
//! | the program | [`app`] (command line, queue dispatch and worker supervision) |

pub mod agent;
pub mod app;
pub mod bot;
pub mod config;
pub mod core;
pub mod engine;
pub mod git;
pub mod github;
pub mod jobs;
pub mod links;
pub mod maintenance;
pub mod metrics;
pub mod proc;
pub mod run;
pub mod store;
pub mod web;
