//! The `refusal-lens` binary's library: model sources and downloads, backends, and the CLI
//! commands, so integration tests can use them without a subprocess.

pub mod bench;
pub mod device;
pub mod fetch;
pub mod open;
pub mod source;
