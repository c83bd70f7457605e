//! What autodev does on GitHub: deliveries taken in durably (`intake`) and acted on
//! (`handler`), the `/autodev` command language (`command`), specs from issues
//! (`issue_spec`), the texts it posts (`messages`), its side effects as durable jobs with the
//! pull request policy (`outbox`), and local mode's `origin`. Imports the engine and the
//! layers below it; never `run`, `maintenance`, `web` or `app`.

pub mod command;
pub mod handler;
pub mod intake;
pub mod issue_spec;
pub mod messages;
pub mod origin;
pub mod outbox;
