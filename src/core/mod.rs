//! The domain, with no I/O: task and repository identifiers, task specs and their validation,
//! roles, the rules that settle what a run may use (`trust`), and what hides in untrusted
//! text. Imports nothing of autodev's outside `core`.

pub mod faults;
pub mod ids;
pub mod roles;
pub mod spec;
pub mod trust;
pub mod untrusted;
