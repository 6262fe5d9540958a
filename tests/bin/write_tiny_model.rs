//! Writes the tiny random Llama of `refusal_tests::tiny_model` (two 64-wide layers, SmolLM2's
//! tokenizer and chat template) as a Hugging Face directory, for the browser end-to-end test
//! (tests/browser/app.mjs serves it with `refusal-lens serve --models-dir`), and optionally the
//! native engine's logits for a prompt, which the test compares with the in-browser engine's.
//!
//!   cargo run -p refusal-tests --bin write-tiny-model -- MODELS_DIR [NAME] [--logits PROMPT OUT.json]
//!
//! Writes MODELS_DIR/NAME (default `tiny-llama`) unless it is there already; OUT.json is
//! `{"prompt": ..., "logits": [...]}`: the chat-formatted prompt's last-position logits.

use std::path::PathBuf;

use burn::tensor::Device;
use refusal_core::model::{NoHook, TokenBatch, read_f32};
use refusal_lens::model::open::open;
use refusal_lens::model::source::ResolvedModel;
use refusal_tests::tiny_model::write_tiny_model;

const USAGE: &str = "usage: write-tiny-model MODELS_DIR [NAME] [--logits PROMPT OUT.json]";

fn main() {
    let mut positional = Vec::new();
    let mut logits = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--logits" {
            let (Some(prompt), Some(out)) = (args.next(), args.next()) else {
                panic!("--logits needs PROMPT and OUT.json; {USAGE}");
            };
            logits = Some((prompt, PathBuf::from(out)));
        } else {
            positional.push(arg);
        }
    }
    let (dir, name) = match positional.as_slice() {
        [dir] => (PathBuf::from(dir), "tiny-llama".to_owned()),
        [dir, name] => (PathBuf::from(dir), name.clone()),
        _ => panic!("{USAGE}"),
    };
    let model_dir = if dir.join(&name).join("model.safetensors").is_file() {
        dir.join(&name)
    } else {
        write_tiny_model(&dir, &name)
    };
    println!("{}", model_dir.display());
    if let Some((prompt, out)) = logits {
        let device = Device::flex();
        let loaded = open(&ResolvedModel::HfDir(model_dir.clone()), &device, false)
            .unwrap_or_else(|e| panic!("opening {}: {e:#}", model_dir.display()));
        let formatted = loaded
            .text
            .chat
            .user_prompt(&prompt, None)
            .unwrap_or_else(|e| panic!("formatting the prompt: {e:#}"));
        let ids = loaded
            .text
            .tokenizer
            .encode(&formatted.text, false)
            .unwrap_or_else(|e| panic!("tokenizing the prompt: {e:#}"));
        let batch = TokenBatch::left_padded(&[ids], 0, &device);
        let values = read_f32(loaded.llama.last_logits(&batch, &mut NoHook));
        let json = serde_json::json!({ "prompt": prompt, "logits": values });
        std::fs::write(&out, json.to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    }
}
