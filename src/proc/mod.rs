//! Processes: running a child with a timeout, a process group and bounded output (`exec`),
//! the bubblewrap sandbox around agents and gates (`sandbox`), and the egress proxy that is
//! their only way out (`egress`), locks that hold across processes (`lock`), and the room kept on the data directory's disk
//! (`reserve`). Imports `core` and `config`; never the store, the engine,
//! git or GitHub.

pub mod egress;
pub mod exec;
pub mod lock;
pub mod reserve;
pub mod sandbox;
