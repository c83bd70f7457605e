//! The program: the command line (`cli`) and the queue dispatch that hands each job to what
//! performs it and keeps the workers alive (`dispatch`), and the report of the configuration in effect
//! (`show_config`). The top layer: it may import any.

pub mod cli;
pub mod dispatch;
pub mod show_config;
