//! Writes the tiny random Llama of `refusal_lens::tiny_model` (two 64-wide layers, SmolLM2's
//! tokenizer and chat template) as a Hugging Face directory, for the browser end-to-end test
//! (tests/browser/app.mjs serves it with `refusal-lens serve --models-dir`).
//!
//!   cargo run -p refusal-lens --example tiny-model -- MODELS_DIR [NAME]
//!
//! Writes MODELS_DIR/NAME (default `tiny-llama`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use refusal_lens::tiny_model::write_tiny_model;

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let dir = PathBuf::from(args.next().context("usage: tiny-model MODELS_DIR [NAME]")?);
    let name = args.next().map_or_else(
        || "tiny-llama".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    println!("{}", write_tiny_model(&dir, &name)?.display());
    Ok(())
}
