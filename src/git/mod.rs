//! Git: task repositories, snapshots, commits, pushes and the workflow guard (`ops`), the
//! task repositories made ahead (`spare`), and CODEOWNERS (`codeowners`). Imports `core`, `config` and `proc` (to run git, confined when
//! asked); never the store, the engine or GitHub.

pub mod codeowners;
pub mod ops;
pub mod spare;
