//! The `refusal-lens` binary's library: model sources and downloads, backends, and the CLI
//! commands, so integration tests can use them without a subprocess.

pub mod bench;
pub mod commands;
pub mod device;
pub mod direction_file;
pub mod fetch;
pub mod model_args;
pub mod open;
pub mod outputs;
pub mod progress;
pub mod saved_model;
pub mod source;
