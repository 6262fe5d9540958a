//! The `refusal-lens` binary's library: model sources and downloads, backends, the CLI
//! commands and the server, so integration tests can use them without a subprocess.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod device;
pub mod direction_file;
pub mod fetch;
pub mod model_args;
pub mod open;
pub mod outputs;
pub mod progress;
pub mod saved_model;
pub mod serve;
pub mod source;
pub mod tiny_model;
