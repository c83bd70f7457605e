//! The domain, with no I/O: task and repository identifiers, task specs and their validation,
//! roles, the rules that settle what a run may use (`trust`), what hides in untrusted text,
//! and blotting secrets out of text people see (`blot`). Imports nothing of autodev's outside `core`.

pub mod blot;
pub mod faults;
pub mod ids;
pub mod roles;
pub mod spec;
pub mod trust;
pub mod untrusted;
