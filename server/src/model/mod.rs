//! A model the user names, from the name to the loaded weights: what the name means
//! ([`source`]), the built-in catalogue ([`builtin`]), downloads ([`fetch`]), the layout of a
//! Hugging Face directory ([`hf_dir`]), loading and fingerprinting ([`open`]), the model kept
//! between server jobs ([`kept`]), and writing an edited model back out ([`saved`]).

pub mod builtin;
pub mod fetch;
pub mod hf_dir;
pub mod kept;
pub mod open;
pub mod saved;
pub mod source;
