//! GGUF checkpoints: model config from the metadata, weights in the file's types (GGML blocks
//! stay blocks, 16-bit floats stay 16-bit) or dequantized to f32.
//!
//! llama.cpp's converter permutes the q/k rows of Llama checkpoints so that RoPE pairs adjacent
//! dimensions, and leaves Qwen2 checkpoints as Hugging Face stores them (NeoX pairing); the
//! config records which pairing the file's rows expect.

use bytes::Bytes;
use half::{bf16, f16};

use crate::gguf::{GgmlType, GgufError, GgufFile, MetadataValue};
use crate::model::{
    Architecture, BlockWeight, ConfigError, HostTensor, ModelConfig, RopePairing, RopeScaling,
    StoredTensor, StoredValues, WeightError, WeightName, WeightSource,
};

use super::hf::ReleaseBytes;
use super::{LoadError, names};

/// GGUF's name of the RoPE frequency factors (Llama-3.1 and later).
const ROPE_FREQS: &str = "rope_freqs.weight";

/// The model configuration of a GGUF file, RoPE frequency factors (`rope_freqs.weight`) read
/// from `bytes`.
///
/// # Errors
///
/// What [`header_config`] refuses, and factors the file cannot give (out of bounds, not F32).
pub fn config(file: &GgufFile, bytes: &[u8]) -> Result<ModelConfig, ConfigError> {
    let mut config = header_config(file)?;
    if file.tensor(ROPE_FREQS).is_some() {
        let factors = file
            .tensor_f32(bytes, ROPE_FREQS)
            .map_err(|e| ConfigError::Invalid {
                field: "rope_freqs",
                value: ROPE_FREQS.into(),
                why: unreadable(&e),
            })?;
        config.rope_scaling = Some(RopeScaling::FreqFactors { factors });
    }
    config.validate()
}

/// Why a tensor could not be read, in [`ConfigError::Invalid`]'s words.
fn unreadable(e: &GgufError) -> &'static str {
    match e {
        GgufError::Truncated { .. } => "the tensor lies outside the file (truncated?)",
        _ => "the tensor cannot be read as f32 values",
    }
}

/// The model configuration stored in a GGUF file's metadata (`{arch}.*` keys), read from the
/// header alone: RoPE frequency factors, a tensor, are checked for shape but left out (see
/// [`config`]).
///
/// Architectures the forward pass does not implement are refused naming the key that says so:
/// sliding-window attention, logit soft-capping, mixtures of experts, partial rotary
/// embeddings, RoPE scaling other than frequency factors.
pub fn header_config(file: &GgufFile) -> Result<ModelConfig, ConfigError> {
    let arch_name = file
        .get("general.architecture")
        .and_then(MetadataValue::as_str)
        .ok_or(ConfigError::Missing("general.architecture"))?;
    let architecture = match arch_name {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        other => return Err(ConfigError::UnsupportedArchitecture(other.into())),
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let int = |k: &str| {
        file.get(&key(k))
            .and_then(MetadataValue::as_u64)
            .and_then(|v| usize::try_from(v).ok())
    };
    let float = |k: &str| file.get(&key(k)).and_then(MetadataValue::as_f64);
    let need = |k: &'static str| int(k).ok_or(ConfigError::Missing(k));

    for (k, why) in [
        (
            "attention.sliding_window",
            "sliding-window attention is not implemented",
        ),
        (
            "attn_logit_softcapping",
            "attention logit soft-capping is not implemented",
        ),
        (
            "final_logit_softcapping",
            "final logit soft-capping is not implemented",
        ),
        (
            "expert_count",
            "mixture-of-experts blocks are not implemented",
        ),
    ] {
        if let Some(v) = file.get(&key(k)) {
            // Converters write 0 for "off" in some of these keys.
            if v.as_f64() != Some(0.0) {
                return Err(ConfigError::Invalid {
                    field: k,
                    value: format!("{v:?}"),
                    why,
                });
            }
        }
    }
    if let Some(kind) = file
        .get(&key("rope.scaling.type"))
        .and_then(MetadataValue::as_str)
        .filter(|t| *t != "none")
    {
        return Err(ConfigError::Invalid {
            field: "rope.scaling.type",
            value: kind.into(),
            why: "only Llama-3 frequency factors (rope_freqs.weight) are supported",
        });
    }
    let d_model = need("embedding_length")?;
    let n_heads = need("attention.head_count")?;
    let head_dim = int("attention.key_length").unwrap_or(d_model / n_heads.max(1));
    if let Some(rot) = int("rope.dimension_count").filter(|&r| r != head_dim) {
        return Err(ConfigError::Invalid {
            field: "rope.dimension_count",
            value: rot.to_string(),
            why: "partial rotary embeddings are not implemented (must equal the head dimension)",
        });
    }
    if let Some(info) = file.tensor(ROPE_FREQS)
        && (info.ggml_type != GgmlType::F32 || info.dims.as_slice() != [head_dim as u64 / 2])
    {
        return Err(ConfigError::Invalid {
            field: "rope_freqs",
            value: format!("{} {:?}", info.ggml_type.name(), info.dims),
            why: "must be F32 with one factor per rotated pair (head_dim / 2)",
        });
    }
    let vocab_size = match int("vocab_size") {
        Some(v) => v,
        None => file
            .get("tokenizer.ggml.tokens")
            .and_then(MetadataValue::as_array)
            .map(<[MetadataValue]>::len)
            .ok_or(ConfigError::Missing("vocab_size"))?,
    };
    ModelConfig {
        architecture,
        vocab_size,
        d_model,
        n_layers: need("block_count")?,
        n_heads,
        n_kv_heads: int("attention.head_count_kv").unwrap_or(n_heads),
        head_dim,
        d_ff: need("feed_forward_length")?,
        rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        rope_pairing: match architecture {
            Architecture::Llama => RopePairing::Interleaved,
            Architecture::Qwen2 => RopePairing::Halves,
        },
        rope_scaling: None,
        max_positions: int("context_length").unwrap_or(4096),
        qkv_bias: file
            .tensor(&names::gguf(WeightName::Block(0, BlockWeight::QBias)))
            .is_some(),
        tied_embeddings: file.tensor(&names::gguf(WeightName::OutputHead)).is_none(),
    }
    .validate()
}

/// Weights read from a parsed GGUF file and its bytes.
pub struct GgufWeights<'a> {
    pub file: &'a GgufFile,
    pub bytes: &'a [u8],
    /// Told the byte range of each tensor once it is copied (the file is the only shard: its
    /// index is 0), so that a memory-mapped file need not stay resident beside the model.
    pub release: Option<ReleaseBytes<'a>>,
    /// `bytes` as a shared buffer, when the caller has one (see
    /// [`super::gguf_model_viewing`]): blocks are then views into it instead of copies.
    pub views: Option<&'a Bytes>,
}

/// A tensor's type, bytes (bounds-checked) and row-major shape.
struct RawTensor<'a> {
    ty: GgmlType,
    data: &'a [u8],
    shape: Vec<usize>,
}

impl<'a> GgufWeights<'a> {
    /// The tensor as the file stores it, `None` if the file lacks it.
    fn raw(&self, key: &str) -> Result<Option<RawTensor<'a>>, WeightError> {
        let Some(info) = self.file.tensor(key) else {
            return Ok(None);
        };
        let data = self
            .file
            .tensor_bytes(self.bytes, info)
            .map_err(|e| source(key, e))?;
        // GGUF lists the fastest-varying dimension first; row-major shapes list it last.
        let shape = info
            .dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect();
        Ok(Some(RawTensor {
            ty: info.ggml_type,
            data,
            shape,
        }))
    }

    fn released(&mut self, data: &[u8]) {
        if let Some(release) = self.release.as_mut() {
            // `data` is a sub-slice of `bytes`, so the subtraction cannot underflow.
            let start = data.as_ptr() as usize - self.bytes.as_ptr() as usize;
            release(0, start..start + data.len());
        }
    }
}

fn source(key: &str, e: GgufError) -> WeightError {
    WeightError::Source {
        tensor: key.to_owned(),
        source: Box::new(e),
    }
}

impl WeightSource for GgufWeights<'_> {
    fn describe(&self, name: WeightName) -> String {
        names::gguf(name)
    }

    fn read(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError> {
        let key = names::gguf(name);
        let Some(RawTensor { shape, .. }) = self.raw(&key)? else {
            return Ok(None);
        };
        let data = self
            .file
            .tensor_f32(self.bytes, &key)
            .map_err(|e| source(&key, e))?;
        Ok(Some(HostTensor { shape, data }))
    }

    /// The tensor in the file's type: blocks as they are, 16-bit floats as 16-bit values.
    fn read_stored(&mut self, name: WeightName) -> Result<Option<StoredTensor>, WeightError> {
        let key = names::gguf(name);
        let Some(RawTensor { ty, data, shape }) = self.raw(&key)? else {
            return Ok(None);
        };
        let values = match ty {
            GgmlType::F32 => StoredValues::F32(
                self.file
                    .tensor_f32(self.bytes, &key)
                    .map_err(|e| source(&key, e))?,
            ),
            GgmlType::F16 => StoredValues::F16(
                data.as_chunks::<2>()
                    .0
                    .iter()
                    .map(|b| f16::from_le_bytes(*b))
                    .collect(),
            ),
            GgmlType::BF16 => StoredValues::BF16(
                data.as_chunks::<2>()
                    .0
                    .iter()
                    .map(|b| bf16::from_le_bytes(*b))
                    .collect(),
            ),
            _ => StoredValues::Blocks(
                ty,
                self.views
                    .map_or_else(|| Bytes::copy_from_slice(data), |file| file.slice_ref(data)),
            ),
        };
        self.released(data);
        Ok(Some(StoredTensor { shape, values }))
    }
}

/// Parses a GGUF file's header, naming the file in the error.
pub fn parse(file_name: &str, bytes: &[u8]) -> Result<GgufFile, LoadError> {
    GgufFile::parse(bytes).map_err(|source| LoadError::Gguf {
        file: file_name.into(),
        source,
    })
}
