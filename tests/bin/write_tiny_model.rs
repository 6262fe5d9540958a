//! Writes the tiny random Llama of `refusal_tests::tiny_model` (two 64-wide layers, SmolLM2's
//! tokenizer and chat template) as a Hugging Face directory, for the browser end-to-end test
//! (tests/browser/app.mjs serves it with `refusal-lens serve --models-dir`), and optionally the
//! native engine's logits for prompts, which the browser tests (smoke.mjs, in-browser.mjs)
//! compare with the in-browser engine's.
//!
//!   cargo run -p refusal-tests --bin write-tiny-model -- MODELS_DIR [NAME] [--logits OUT.json PROMPT...]
//!
//! Writes MODELS_DIR/NAME (default `tiny-llama`) unless it is there already; OUT.json is
//! `{"prompts": [...], "shape": [prompts, vocab], "logits": [...]}`: the chat-formatted
//! prompts' last-position logits, run as one left-padded batch (row-major).

use std::path::PathBuf;

use burn::tensor::Device;
use refusal_core::model::{NoHook, TokenBatch, read_f32};
use refusal_lens::model::open::open;
use refusal_lens::model::source::ResolvedModel;
use refusal_tests::tiny_model::write_tiny_model;

const USAGE: &str = "usage: write-tiny-model MODELS_DIR [NAME] [--logits OUT.json PROMPT...]";

fn main() {
    let mut positional = Vec::new();
    let mut logits = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--logits" {
            let out = args
                .next()
                .unwrap_or_else(|| panic!("--logits needs OUT.json and prompts; {USAGE}"));
            let prompts: Vec<String> = args.by_ref().collect();
            assert!(
                !prompts.is_empty(),
                "--logits needs at least one prompt; {USAGE}"
            );
            logits = Some((PathBuf::from(out), prompts));
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
    if let Some((out, prompts)) = logits {
        let device = Device::flex();
        let loaded = open(&ResolvedModel::HfDir(model_dir.clone()), &device, false)
            .unwrap_or_else(|e| panic!("opening {}: {e:#}", model_dir.display()));
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|prompt| {
                let formatted = loaded
                    .text
                    .chat
                    .user_prompt(prompt, None)
                    .unwrap_or_else(|e| panic!("formatting {prompt:?}: {e:#}"));
                loaded
                    .text
                    .tokenizer
                    .encode(&formatted.text, false)
                    .unwrap_or_else(|e| panic!("tokenizing {prompt:?}: {e:#}"))
            })
            .collect();
        let batch = TokenBatch::left_padded(&ids, 0, &device);
        let values = read_f32(loaded.llama.last_logits(&batch, &mut NoHook));
        let vocab = values.len() / prompts.len();
        let json = serde_json::json!({
            "prompts": prompts,
            "shape": [prompts.len(), vocab],
            "logits": values,
        });
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        std::fs::write(&out, json.to_string())
            .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    }
}
