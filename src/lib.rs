//! The `keyledger` application: settings, database set-up, and the
//! subcommands of the CLI (docs/api.md, "Command line") built on the workspace crates.

pub mod cli;
pub mod db;
pub mod settings;
