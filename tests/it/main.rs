//! The one integration-test binary: real SQLite files, real git repositories, the real
//! `autodev` binary, and fake agent scripts standing in for the agent CLIs.

mod support;

mod api;
mod api_providers;
mod attacks;
mod attacks_dashboard;
mod attacks_faults;
mod attacks_setup;
mod browser;
mod cli;
mod dashboard;
mod examples;
mod fake_github;
mod fake_models;
mod faults;
mod git_server;
mod github_app;
mod github_client;
mod layers;
mod local_pr;
mod operators;
mod pipeline;
mod properties;
mod real_cli;
mod recovery;
mod retention;
mod sandbox;
mod setup;
mod soak;
mod story;
mod webhooks;
