//! The `keyledger` application: settings, database set-up, and the
//! subcommands of the CLI (`API.md`, "CLI") built on the workspace crates.

pub mod cli;
pub mod db;
pub mod settings;
