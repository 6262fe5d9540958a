//! A tiny random Llama (two 64-wide layers, SmolLM2's tokenizer and chat template) written as
//! a Hugging Face directory: a model that loads and runs in milliseconds, for the API and
//! browser tests. Its weights are random (seed 7), so its completions are gibberish and its
//! "refusal direction" is noise.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use refusal_core::model::{Llama, ModelConfig};
use refusal_lens::model::builtin::BuiltinModel;
use refusal_lens::model::open::open;
use refusal_lens::model::saved::{DerivedModel, save};
use refusal_lens::model::source::ResolvedModel;

use crate::builtin_gguf;

/// Writes the model to `dir/name` and returns that directory. Needs SmolLM2-135M (fetched into
/// the model cache if missing) for its tokenizer and config; panics, naming what failed, when
/// it cannot be fetched or opened or the directory cannot be written.
pub fn write_tiny_model(dir: &Path, name: &str) -> PathBuf {
    let source = ResolvedModel::Gguf(builtin_gguf(BuiltinModel::SmolLm2_135m));
    let device = Device::flex();
    let real =
        open(&source, &device, false).unwrap_or_else(|e| panic!("opening SmolLM2-135M: {e:#}"));
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
    let out = dir.join(name).join("model.safetensors");
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
    .unwrap_or_else(|e| panic!("writing {}: {e:#}", out.display()));
    dir.join(name)
}
