//! Writing a (possibly edited) model back out: a GGUF that keeps the source file's metadata and
//! every untouched tensor byte for byte, or Hugging Face safetensors.

use std::collections::BTreeMap;

use burn::tensor::{DType, Tensor};

use crate::compress::PackedWeight;
use crate::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetadataValue, in_sixteen_bits};
use crate::load::names;
use crate::model::llama::{Linear, Weight};
use crate::model::{
    BlockWeight, HostTensor, Llama, RopePairing, RopeScaling, WeightName, read_f32,
};

/// Why a model could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("writing safetensors: {0}")]
    Safetensors(String),
    #[error("the model has no weight {0:?} to export")]
    MissingWeight(WeightName),
    #[error("the source GGUF has no tensor `{0}` to replace")]
    NotInSource(String),
    #[error(
        "the model's RoPE frequency factors (GGUF rope_freqs.weight) have no config.json form; save it as .gguf"
    )]
    FreqFactorsInHfConfig,
}

/// One weight as the model holds it, in file layout: matrices `[d_out, d_in]`.
enum Held {
    Matrix(Tensor<2>),
    Vector(Tensor<1>),
}

impl Held {
    fn dtype(&self) -> DType {
        match self {
            Held::Matrix(t) => t.dtype(),
            Held::Vector(t) => t.dtype(),
        }
    }

    fn into_host(self) -> HostTensor {
        match self {
            Held::Matrix(t) => {
                let [rows, cols] = t.dims();
                HostTensor {
                    shape: vec![rows, cols],
                    data: read_f32(t),
                }
            }
            Held::Vector(t) => {
                let [n] = t.dims();
                HostTensor {
                    shape: vec![n],
                    data: read_f32(t),
                }
            }
        }
    }
}

fn held(model: &Llama, name: WeightName) -> Option<Held> {
    // Linear layers multiply `[d_in, d_out]`; files hold the transpose.
    let weight = |l: &Linear| Held::Matrix(l.weight_values().transpose());
    let bias = |l: &Linear| l.bias.as_ref().map(|b| Held::Vector(b.val()));
    Some(match name {
        WeightName::TokenEmbedding => Held::Matrix(model.embedding_values()),
        WeightName::OutputHead => Held::Matrix(model.head_values()?),
        WeightName::FinalNorm => Held::Vector(model.norm.weight.val()),
        WeightName::Block(l, w) => {
            let b = model.blocks.get(l)?;
            match w {
                BlockWeight::AttnNorm => Held::Vector(b.attn_norm.weight.val()),
                BlockWeight::MlpNorm => Held::Vector(b.mlp_norm.weight.val()),
                BlockWeight::Q => weight(&b.attn.q),
                BlockWeight::K => weight(&b.attn.k),
                BlockWeight::V => weight(&b.attn.v),
                BlockWeight::O => weight(&b.attn.o),
                BlockWeight::Gate => weight(&b.mlp.gate),
                BlockWeight::Up => weight(&b.mlp.up),
                BlockWeight::Down => weight(&b.mlp.down),
                BlockWeight::QBias => bias(&b.attn.q)?,
                BlockWeight::KBias => bias(&b.attn.k)?,
                BlockWeight::VBias => bias(&b.attn.v)?,
            }
        }
    })
}

/// Host values of one weight in file layout: matrices `[d_out, d_in]`, row-major, as GGUF
/// (dims reversed) and Hugging Face store them; 16-bit weights are widened to f32 (exactly).
/// `None` for a weight the model does not have (a tied head, absent biases).
pub fn host_weight(model: &Llama, name: WeightName) -> Option<HostTensor> {
    held(model, name).map(Held::into_host)
}

/// The matrix `name` as the model keeps it; `None` for vectors and weights it lacks.
fn kept_matrix(model: &Llama, name: WeightName) -> Option<&Weight> {
    match name {
        WeightName::TokenEmbedding => Some(&model.embedding),
        WeightName::OutputHead => model.head.as_ref(),
        WeightName::FinalNorm => None,
        WeightName::Block(l, w) => {
            let b = model.blocks.get(l)?;
            Some(match w {
                BlockWeight::Q => &b.attn.q.weight,
                BlockWeight::K => &b.attn.k.weight,
                BlockWeight::V => &b.attn.v.weight,
                BlockWeight::O => &b.attn.o.weight,
                BlockWeight::Gate => &b.mlp.gate.weight,
                BlockWeight::Up => &b.mlp.up.weight,
                BlockWeight::Down => &b.mlp.down.weight,
                BlockWeight::AttnNorm
                | BlockWeight::MlpNorm
                | BlockWeight::QBias
                | BlockWeight::KBias
                | BlockWeight::VBias => return None,
            })
        }
    }
}

/// The type [`gguf_with_weights`] writes a replaced weight in: 16 bits for a matrix the model
/// keeps compact (GGML blocks or 16-bit floats; see [`in_sixteen_bits`]), so the edited file
/// keeps about the source's size and loads into the 16-bit kernels; F32 for an f32 matrix (the
/// `--weights f32` reference, which stays exact) and for vectors. Values that 16 bits cannot
/// hold are written as F32 all the same.
pub fn replaced_type(model: &Llama, name: WeightName) -> GgmlType {
    match sixteen_bit_source(model, name) {
        Some(GgmlType::BF16) => GgmlType::BF16,
        Some(_) => GgmlType::F16,
        None => GgmlType::F32,
    }
}

/// The type [`in_sixteen_bits`] is given for a changed matrix kept compact; `None` for an f32
/// matrix and for vectors.
fn sixteen_bit_source(model: &Llama, name: WeightName) -> Option<GgmlType> {
    match kept_matrix(model, name)? {
        Weight::Quantized(q) => Some(q.ty()),
        Weight::Dense(w) => match w.val().dtype() {
            DType::BF16 => Some(GgmlType::BF16),
            DType::F16 => Some(GgmlType::F16),
            _ => None,
        },
    }
}

/// A GGUF with the source file's metadata and tensors, except that the `replaced` weights are
/// taken from `model` and stored as [`replaced_type`] says, and the `packed` ones are stored
/// as given (a weight the source lacks, such as the head of a formerly tied embedding, is
/// added). Untouched tensors keep their quantized bytes.
///
/// # Errors
///
/// [`ExportError::MissingWeight`] for a replaced weight the model does not have, and writer
/// errors.
pub fn gguf_with_weights<'a>(
    source: &GgufFile,
    bytes: &'a [u8],
    model: &Llama,
    replaced: &[WeightName],
    packed: &'a [PackedWeight],
) -> Result<GgufWriter<'a>, ExportError> {
    let mut new: BTreeMap<String, WeightName> =
        replaced.iter().map(|&w| (names::gguf(w), w)).collect();
    let mut packed: BTreeMap<String, &PackedWeight> =
        packed.iter().map(|p| (names::gguf(p.name), p)).collect();
    let mut writer = GgufWriter::new();
    for (key, value) in &source.metadata {
        writer.set(key, value.clone());
    }
    let add = |writer: &mut GgufWriter<'a>, name: &str, w: WeightName| {
        let t = host_weight(model, w).ok_or(ExportError::MissingWeight(w))?;
        let sixteen = sixteen_bit_source(model, w).and_then(|ty| in_sixteen_bits(ty, &t.data));
        match sixteen {
            Some((ty, bytes)) => {
                let dims = t.shape.iter().rev().map(|&d| d as u64).collect();
                writer.tensor(name, dims, ty, bytes)?;
            }
            None => writer.tensor_f32(name, &t.shape, &t.data)?,
        }
        Ok::<_, ExportError>(())
    };
    for info in &source.tensors {
        if let Some(p) = packed.remove(&info.name) {
            writer.tensor(&info.name, info.dims.clone(), p.ty, &p.bytes[..])?;
        } else if let Some(w) = new.remove(&info.name) {
            add(&mut writer, &info.name, w)?;
        } else {
            let data = source.tensor_bytes(bytes, info)?;
            writer.tensor(&info.name, info.dims.clone(), info.ggml_type, data)?;
        }
    }
    for (name, w) in new {
        add(&mut writer, &name, w)?;
    }
    if let Some(name) = packed.into_keys().next() {
        return Err(ExportError::NotInSource(name));
    }
    Ok(writer)
}

/// Records what was done to a model in its GGUF metadata (`refusal_lens.*` keys).
pub fn note_in_gguf(writer: &mut GgufWriter<'_>, key: &str, value: &str) {
    writer.set(
        &format!("refusal_lens.{key}"),
        MetadataValue::String(value.to_owned()),
    );
}

/// Hugging Face rows of q/k from GGUF Llama rows: llama.cpp's converter stores rotary pairs
/// `(2j, 2j+1)` of every head where Hugging Face has `(j, j + head_dim/2)`.
fn unpermute_rows(t: HostTensor, head_dim: usize) -> HostTensor {
    let row_len: usize = t.shape[1..].iter().product();
    let rows = t.shape[0];
    let half = head_dim / 2;
    let mut data = vec![0.0f32; t.data.len()];
    for r in 0..rows {
        let (head, within) = (r / head_dim, r % head_dim);
        let (j, s) = (within / 2, within % 2);
        let hf = head * head_dim + s * half + j;
        data[hf * row_len..(hf + 1) * row_len]
            .copy_from_slice(&t.data[r * row_len..(r + 1) * row_len]);
    }
    HostTensor {
        shape: t.shape,
        data,
    }
}

/// Every weight of `model` as a Hugging Face safetensors file (q/k rows in Hugging Face order
/// whatever format the model came from), with `metadata` in the header. Each weight is written
/// in the type the model holds it in (f32, or f16/bf16 for a 16-bit checkpoint's matrices), so
/// a 16-bit model's file is about the size of its source.
///
/// # Errors
///
/// [`ExportError::Safetensors`] if serialization fails.
pub fn safetensors_bytes(
    model: &Llama,
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>, ExportError> {
    let config = model.config();
    let mut names = vec![
        WeightName::TokenEmbedding,
        WeightName::FinalNorm,
        WeightName::OutputHead,
    ];
    for l in 0..config.n_layers {
        names.extend(BlockWeight::ALL.iter().map(|&w| WeightName::Block(l, w)));
    }
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let Some(held) = held(model, name) else {
            continue;
        };
        let dtype = held.dtype();
        let mut t = held.into_host();
        if config.rope_pairing == RopePairing::Interleaved
            && matches!(
                name,
                WeightName::Block(
                    _,
                    BlockWeight::Q | BlockWeight::K | BlockWeight::QBias | BlockWeight::KBias
                )
            )
        {
            t = unpermute_rows(t, config.head_dim);
        }
        // Encoded at once, so at most one weight is held in f32 on the host.
        tensors.push(Encoded::new(names::hf(name), t, dtype));
    }
    serialize(&tensors, metadata)
}

/// One tensor's little-endian bytes, ready for a safetensors file.
struct Encoded {
    name: String,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl Encoded {
    /// `t` in `dtype` when that is f16 or bf16 (exact for values that came from that type),
    /// else in f32.
    fn new(name: String, t: HostTensor, dtype: DType) -> Encoded {
        let (dtype, bytes) = match dtype {
            DType::BF16 => (
                safetensors::Dtype::BF16,
                t.data
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            DType::F16 => (
                safetensors::Dtype::F16,
                t.data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            _ => (
                safetensors::Dtype::F32,
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        };
        Encoded {
            name,
            dtype,
            shape: t.shape,
            bytes,
        }
    }
}

fn serialize(
    tensors: &[Encoded],
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>, ExportError> {
    let views = tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| ExportError::Safetensors(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = (!metadata.is_empty()).then_some(metadata.into_iter().collect());
    safetensors::serialize(views, metadata).map_err(|e| ExportError::Safetensors(e.to_string()))
}

/// f32 tensors (name, row-major values) as a safetensors file, with `metadata` in its header.
///
/// # Errors
///
/// [`ExportError::Safetensors`] when a shape does not match its values.
pub fn f32_safetensors(
    tensors: Vec<(String, HostTensor)>,
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>, ExportError> {
    let encoded: Vec<Encoded> = tensors
        .into_iter()
        .map(|(name, t)| Encoded::new(name, t, DType::F32))
        .collect();
    serialize(&encoded, metadata)
}

/// A transformers `config.json` describing `config` (with Hugging Face RoPE pairing, which
/// [`safetensors_bytes`] writes).
///
/// # Errors
///
/// [`ExportError::FreqFactorsInHfConfig`]: transformers has no per-pair RoPE divisors.
pub fn hf_config_json(
    config: &crate::model::ModelConfig,
) -> Result<serde_json::Value, ExportError> {
    let (architecture, model_type) = match config.architecture {
        crate::model::Architecture::Llama => ("LlamaForCausalLM", "llama"),
        crate::model::Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    let mut json = serde_json::json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.d_ff,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_positions,
        "tie_word_embeddings": config.tied_embeddings,
        "attention_bias": config.qkv_bias,
        "torch_dtype": "float32",
    });
    match &config.rope_scaling {
        None => {}
        Some(RopeScaling::Llama3(s)) => {
            json["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        Some(RopeScaling::FreqFactors { .. }) => return Err(ExportError::FreqFactorsInHfConfig),
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, NoHook, TokenBatch};

    #[test]
    fn interleaved_rows_unpermute_to_halves() {
        // One head of dim 4: GGUF rows (j=0,s=0), (0,1), (1,0), (1,1) → HF rows 0, 2, 1, 3.
        let t = HostTensor {
            shape: vec![4, 1],
            data: vec![0.0, 2.0, 1.0, 3.0],
        };
        assert_eq!(unpermute_rows(t, 4).data, [0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn a_bf16_model_exports_bf16_matrices_that_reload_to_the_same_logits() {
        let device = burn::tensor::Device::flex();
        let config = ModelConfig::tiny();
        let model = Llama::random_bf16(&config, 4, &device);
        let bytes = safetensors_bytes(&model, BTreeMap::new()).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let dtype = |name| st.tensor(&names::hf(name)).unwrap().dtype();
        assert_eq!(dtype(WeightName::TokenEmbedding), safetensors::Dtype::BF16);
        assert_eq!(
            dtype(WeightName::Block(1, BlockWeight::Down)),
            safetensors::Dtype::BF16
        );
        assert_eq!(dtype(WeightName::FinalNorm), safetensors::Dtype::F32);
        let config_json = serde_json::to_vec(&hf_config_json(&config).unwrap()).unwrap();
        let reloaded = crate::load::hf_model(
            &config_json,
            &[("model.safetensors".to_owned(), bytes.as_slice())],
            &device,
            crate::load::LoadOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        let batch = TokenBatch::left_padded(&[vec![1, 2, 3, 4, 5, 6]], 0, &device);
        // Same bf16 values, same f32 arithmetic.
        assert_eq!(
            read_f32(model.last_logits(&batch, &mut NoHook)),
            read_f32(reloaded.last_logits(&batch, &mut NoHook))
        );
    }

    #[test]
    fn safetensors_export_of_an_interleaved_model_reloads_to_the_same_logits() {
        let device = burn::tensor::Device::flex();
        let mut config = ModelConfig::tiny();
        config.rope_pairing = RopePairing::Interleaved;
        config.tied_embeddings = false;
        let model = Llama::random(&config, 3, &device);
        let bytes = safetensors_bytes(&model, BTreeMap::new()).unwrap();
        let config_json = serde_json::to_vec(&hf_config_json(&config).unwrap()).unwrap();
        let reloaded = crate::load::hf_model(
            &config_json,
            &[("model.safetensors".to_owned(), bytes.as_slice())],
            &device,
            crate::load::LoadOptions::default(),
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(reloaded.config().rope_pairing, RopePairing::Halves);
        let batch = TokenBatch::left_padded(&[vec![1, 2, 3, 4, 5, 6]], 0, &device);
        let a = read_f32(model.last_logits(&batch, &mut NoHook));
        let b = read_f32(reloaded.last_logits(&batch, &mut NoHook));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5, "{x} vs {y}");
        }
    }
}
