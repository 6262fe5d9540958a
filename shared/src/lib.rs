//! Refusal Lens core: a Llama-family decoder on Burn with residual-stream hooks, checkpoint
//! loading and export, tokenization and chat templates, and the refusal-direction method built
//! on them. No I/O beyond the model bytes it is handed, so the same code runs natively and in
//! the browser.

pub mod chat;
pub mod compress;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod load;
pub mod model;
pub mod pipeline;
pub mod refusal;
pub mod runs;
mod threads;
pub mod tokenizer;
