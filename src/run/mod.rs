//! One task's life: the pipeline from lease to final state (`pipeline`: prepare, rounds,
//! finalize), what a run works in (`workspace`), one round of agent and gates (`round`), the
//! acceptance gates (`gates`) and the prompt each round sends (`prompt`). Imports the engine,
//! `agent`, and `bot` for local mode's `origin`; never `maintenance`, `web` or `app`.

pub mod gates;
pub mod pipeline;
pub mod prompt;
pub mod publish;
mod round;
pub mod workspace;
