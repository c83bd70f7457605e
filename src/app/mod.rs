//! The program: the command line (`cli`), the queue dispatch that hands each job to what
//! performs it and keeps the workers alive (`dispatch`), the stop of a queue worker that leaves
//! the database unlocked (`stopping`), and the report of the configuration in effect
//! (`show_config`). The top layer: it may import any.

pub mod cli;
pub mod dispatch;
pub mod show_config;
pub mod stopping;
