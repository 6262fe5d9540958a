//! Tiny random models as llama.cpp-style GGUF files with real vocabularies: what the family
//! tests open and `write-family-ggufs` writes for the llama.cpp comparison.

use std::path::Path;

use refusal_core::export::host_weight;
use refusal_core::gguf::{GgufFile, GgufWriter, MetadataValue};
use refusal_core::load::names;
use refusal_core::model::{
    Architecture, BlockWeight, Llama, Llama3RopeScaling, ModelConfig, RopePairing, RopeScaling,
    WeightName,
};

use crate::llamacpp_vocab_file;

/// Llama-2-chat's template as Meta's `tokenizer_config.json` ships it.
pub const LLAMA2_TEMPLATE: &str = include_str!("templates/llama2.jinja");

/// Mistral-7B-Instruct-v0.2's template as Mistral's `tokenizer_config.json` ships it.
pub const MISTRAL_TEMPLATE: &str = include_str!("templates/mistral.jinja");

/// Llama-3-8B-Instruct's template as Meta's `tokenizer_config.json` ships it.
pub const LLAMA3_TEMPLATE: &str = include_str!("templates/llama3.jinja");

/// Llama 3.1's `rope_scaling`, with a short original context so that the tiny model's few
/// frequencies span all three regimes (kept, divided, interpolated).
pub const SCALING: Llama3RopeScaling = Llama3RopeScaling {
    factor: 8.0,
    low_freq_factor: 1.0,
    high_freq_factor: 4.0,
    original_max_position_embeddings: 64,
};

/// A tiny Llama with `vocab` tokens, GGUF's interleaved RoPE pairing.
pub fn tiny_llama(vocab: usize, rope_scaling: Option<RopeScaling>) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: vocab,
        rope_pairing: RopePairing::Interleaved,
        qkv_bias: false,
        tied_embeddings: false,
        rope_scaling,
        ..ModelConfig::tiny()
    }
}

/// The GGUF vocabulary metadata (`tokenizer.*`) of llama.cpp's `ggml-vocab-FAMILY.gguf`.
pub fn vocab_metadata(family: &str) -> Vec<(String, MetadataValue)> {
    let path = llamacpp_vocab_file(&format!("ggml-vocab-{family}.gguf"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.") && k.as_str() != "tokenizer.chat_template")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub fn token_count(metadata: &[(String, MetadataValue)]) -> usize {
    metadata
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| v.as_array())
        .map_or_else(|| panic!("no tokenizer.ggml.tokens"), <[_]>::len)
}

/// The factors llama.cpp's converter writes to `rope_freqs.weight` for Llama-3 scaling
/// (`convert_hf_to_gguf.py`, `LlamaModel.generate_extra_tensors`): float32 frequencies,
/// Python-float factors.
pub fn converter_rope_freqs(s: &Llama3RopeScaling, theta: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|j| {
            let freq = 1.0f32 / (theta as f32).powf((2 * j) as f32 / dim as f32);
            let wavelen = 2.0 * std::f64::consts::PI / f64::from(freq);
            let old = s.original_max_position_embeddings as f64;
            let (low, high) = (old / s.low_freq_factor, old / s.high_freq_factor);
            let factor = if wavelen < high {
                1.0
            } else if wavelen > low {
                s.factor
            } else {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                1.0 / ((1.0 - smooth) / s.factor + smooth)
            };
            factor as f32
        })
        .collect()
}

/// Writes `model` as a llama.cpp-style GGUF with `metadata`'s vocabulary and `template`, and
/// `rope_freqs` as `rope_freqs.weight` if given.
pub fn write_gguf(
    path: &Path,
    model: &Llama,
    metadata: &[(String, MetadataValue)],
    template: &str,
    rope_freqs: Option<&[f32]>,
) {
    let c = model.config();
    let mut w = GgufWriter::new();
    let u32v = |v: usize| MetadataValue::U32(v as u32);
    w.set(
        "general.architecture",
        MetadataValue::String("llama".into()),
    );
    w.set("general.name", MetadataValue::String("tiny random".into()));
    w.set("llama.block_count", u32v(c.n_layers));
    w.set("llama.embedding_length", u32v(c.d_model));
    w.set("llama.feed_forward_length", u32v(c.d_ff));
    w.set("llama.attention.head_count", u32v(c.n_heads));
    w.set("llama.attention.head_count_kv", u32v(c.n_kv_heads));
    w.set("llama.rope.dimension_count", u32v(c.head_dim));
    w.set("llama.context_length", u32v(c.max_positions));
    w.set(
        "llama.rope.freq_base",
        MetadataValue::F32(c.rope_theta as f32),
    );
    w.set(
        "llama.attention.layer_norm_rms_epsilon",
        MetadataValue::F32(c.rms_norm_eps as f32),
    );
    for (k, v) in metadata {
        w.set(k, v.clone());
    }
    w.set(
        "tokenizer.chat_template",
        MetadataValue::String(template.into()),
    );
    let mut weights = vec![
        WeightName::TokenEmbedding,
        WeightName::FinalNorm,
        WeightName::OutputHead,
    ];
    for l in 0..c.n_layers {
        weights.extend(BlockWeight::ALL.iter().map(|&b| WeightName::Block(l, b)));
    }
    // Every weight the model has: random models carry q/k/v biases whatever the config says.
    for name in weights {
        if let Some(t) = host_weight(model, name) {
            w.tensor_f32(&names::gguf(name), &t.shape, &t.data).unwrap();
        }
    }
    if let Some(f) = rope_freqs {
        w.tensor_f32("rope_freqs.weight", &[f.len()], f).unwrap();
    }
    std::fs::write(path, w.to_bytes()).unwrap();
}
