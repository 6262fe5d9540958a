//! Writes the family test models (tiny random weights, real vocabularies; see
//! `refusal_tests::tiny_gguf`) to a folder, with our logits for a prompt on each, for
//! `scripts/check-families.sh` to compare with llama.cpp on the same files:
//!
//!   cargo run --release -p refusal-tests --bin write-family-ggufs -- OUT_DIR
//!
//! Writes OUT_DIR/{llama2,llama31}.gguf and OUT_DIR/ours.json
//! (`[{"file", "ids", "logits"}]`, the logits at the last position).

use std::path::PathBuf;

use burn::tensor::Device;
use refusal_core::model::{Llama, NoHook, RopeScaling, TokenBatch, read_f32};
use refusal_lens::model::open::open;
use refusal_lens::model::source::ResolvedModel;
use refusal_tests::tiny_gguf::{
    LLAMA2_TEMPLATE, LLAMA3_TEMPLATE, SCALING, converter_rope_freqs, tiny_llama, token_count,
    vocab_metadata, write_gguf,
};

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| panic!("usage: write-family-ggufs OUT_DIR")),
    );
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let device = Device::flex();
    let mut rows = Vec::new();
    for (name, family, template, scaled) in [
        ("llama2.gguf", "llama-spm", LLAMA2_TEMPLATE, false),
        ("llama31.gguf", "llama-bpe", LLAMA3_TEMPLATE, true),
    ] {
        let metadata = vocab_metadata(family);
        let mut config = tiny_llama(token_count(&metadata), None);
        config.rope_theta = 500_000.0;
        let factors = converter_rope_freqs(&SCALING, config.rope_theta, config.head_dim);
        if scaled {
            config.rope_scaling = Some(RopeScaling::FreqFactors {
                factors: factors.clone(),
            });
        }
        let model = Llama::random(&config, 5, &device);
        let path = out.join(name);
        write_gguf(
            &path,
            &model,
            &metadata,
            template,
            scaled.then_some(&factors[..]),
        );
        let loaded = open(&ResolvedModel::Gguf(path.clone()), &device, false)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let prompt = loaded
            .text
            .chat
            .user_prompt("How do I pick a lock on my own front door?", None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut ids = loaded.text.tokenizer.encode(&prompt.text, false).unwrap();
        // Past the original context of SCALING, where the factors matter.
        ids.extend((0..80u32).map(|i| 1000 + 37 * i));
        let batch = TokenBatch::left_padded(&[ids.clone()], 0, &device);
        let logits = read_f32(loaded.llama.last_logits(&batch, &mut NoHook));
        rows.push(serde_json::json!({"file": name, "ids": ids, "logits": logits}));
    }
    let json = out.join("ours.json");
    std::fs::write(&json, serde_json::to_vec(&rows).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    eprintln!(
        "write-family-ggufs: {} models in {}",
        rows.len(),
        out.display()
    );
}
