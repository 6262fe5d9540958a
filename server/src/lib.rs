//! The `refusal-lens` binary's library: model sources and downloads, backends, the CLI
//! commands and the server, so integration tests can use them without a subprocess.

pub mod bench;
pub mod cli;
pub mod commands;
pub mod device;
pub mod direction_file;
pub mod model;
pub mod model_args;
pub mod outputs;
pub mod progress;
pub mod serve;
