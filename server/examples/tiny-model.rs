//! Writes a tiny random Llama (two 64-wide layers, SmolLM2's tokenizer and chat template) as a
//! Hugging Face directory, for tests that need a model that runs in milliseconds: the browser
//! end-to-end test (tests/browser/app.mjs) serves it with `refusal-lens serve --models-dir`.
//!
//!   cargo run -p refusal-lens --example tiny-model -- MODELS_DIR [NAME]
//!
//! Writes MODELS_DIR/NAME (default `tiny-llama`). Needs SmolLM2-135M in the model cache
//! (`refusal-lens fetch smollm2-135m`) for its tokenizer and config; the weights are random
//! (seed 7), so its completions are gibberish and its "refusal direction" is noise.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::Device;
use refusal_core::model::{Llama, ModelConfig};
use refusal_lens::fetch::{Cache, ensure_builtin};
use refusal_lens::open::open;
use refusal_lens::saved_model::{DerivedModel, save};
use refusal_lens::source::{BuiltinModel, ResolvedModel};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let dir = PathBuf::from(args.next().context("usage: tiny-model MODELS_DIR [NAME]")?);
    let name = args.next().map_or_else(
        || "tiny-llama".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let builtin = BuiltinModel::SmolLm2_135m;
    let source = ResolvedModel::Gguf(ensure_builtin(
        &builtin.artifact(),
        builtin.alias(),
        &Cache::from_env()?,
        false,
    )?);
    let device = Device::flex();
    let real = open(&source, &device, false).context("opening SmolLM2-135M")?;
    let config = ModelConfig {
        d_model: 64,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
        d_ff: 128,
        ..real.llama.config().clone()
    };
    let tiny = Llama::random(&config, 7, &device);
    let out = dir.join(&name).join("model.safetensors");
    save(
        &DerivedModel {
            source: &source,
            model: &tiny,
            text: &real.text,
            changed: &[],
            packed: &[],
            note: ("test", "tiny random model".into()),
        },
        &out,
    )
    .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", dir.join(&name).display());
    Ok(())
}
