//! autodev: turns task specs (from GitHub issues, `POST /tasks` or `autodev run`) into branches
//! produced by AI coding agents, checked by acceptance gates that run outside the agent.

pub mod agent_api;
pub mod cli;
pub mod codeowners;
pub mod config;
pub mod db;
pub mod egress;
pub mod engine;
pub mod exec;
pub mod gates;
pub mod github;
pub mod gitops;
pub mod guard;
pub mod hygiene;
pub mod ids;
pub mod jobs;
pub mod metrics;
pub mod prompt;
pub mod providers;
pub mod queue;
pub mod roles;
pub mod sandbox;
pub mod server;
pub mod spec;
pub mod trust;
pub mod untrusted;
pub mod view;
pub mod worker;
