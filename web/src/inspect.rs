//! What a checkpoint is and what memory it needs, from its header alone: the app shows this
//! before it downloads the weights (GGUF: the first megabytes, read with a Range request;
//! Hugging Face: config.json).

use refusal_core::gguf::{GgufError, GgufFile, dot};
use refusal_core::load::{gguf, hf};
use refusal_core::model::ModelConfig;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::js_error;

/// A checkpoint's shape and memory needs.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointInfo {
    pub architecture: &'static str,
    pub n_layers: usize,
    pub d_model: usize,
    pub vocab_size: usize,
    pub n_params: u64,
    /// The weights in f32: what the engine holds of a GGUF model on WebGPU (dequantized), and
    /// at most what it holds of a 16-bit checkpoint.
    pub f32_bytes: u64,
    /// Whether the weights are GGML blocks (a quantized GGUF), which the CPU engine multiplies
    /// as they are.
    pub quantized: bool,
    /// The weights as the CPU engine keeps them: a GGUF's tensors as stored, otherwise f32.
    pub cpu_bytes: u64,
    /// The model's own name, when its metadata has one.
    pub name: Option<String>,
}

/// What [`inspect_gguf`] answers: the checkpoint, or that the header goes on past the bytes
/// given (read a longer prefix).
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Inspection {
    Checkpoint(CheckpointInfo),
    NeedMore,
}

impl CheckpointInfo {
    pub fn new(config: &ModelConfig, name: Option<String>) -> Self {
        CheckpointInfo {
            architecture: config.architecture.name(),
            n_layers: config.n_layers,
            d_model: config.d_model,
            vocab_size: config.vocab_size,
            n_params: config.n_params(),
            f32_bytes: config.n_params() * 4,
            quantized: false,
            cpu_bytes: config.n_params() * 4,
            name,
        }
    }

    /// [`CheckpointInfo::new`] for a GGUF file, whose tensor table gives the stored sizes.
    pub fn of_gguf(config: &ModelConfig, file: &GgufFile, name: Option<String>) -> Self {
        let quantized = file.tensors.iter().any(|t| dot::has_kernel(t.ggml_type));
        let stored: u64 = file.tensors.iter().filter_map(|t| t.n_bytes().ok()).sum();
        CheckpointInfo {
            quantized,
            cpu_bytes: stored,
            ..CheckpointInfo::new(config, name)
        }
    }
}

/// Reads a GGUF header from the file's first bytes.
///
/// # Errors
///
/// A malformed header or a model the engine cannot run (not a short prefix: that is
/// [`Inspection::NeedMore`]).
pub fn gguf_header(prefix: &[u8]) -> Result<Inspection, String> {
    let file = match GgufFile::parse_header(prefix) {
        Ok(file) => file,
        Err(GgufError::Truncated { .. }) => return Ok(Inspection::NeedMore),
        Err(e) => return Err(e.to_string()),
    };
    let config = gguf::header_config(&file).map_err(|e| e.to_string())?;
    let name = file
        .get("general.name")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    Ok(Inspection::Checkpoint(CheckpointInfo::of_gguf(
        &config, &file, name,
    )))
}

/// [`gguf_header`] for JavaScript: JSON `{"checkpoint": {...}}` or `"need_more"`.
#[wasm_bindgen]
pub fn inspect_gguf(prefix: &[u8]) -> Result<String, JsValue> {
    let inspection = gguf_header(prefix).map_err(js_error)?;
    serde_json::to_string(&inspection).map_err(js_error)
}

/// A Hugging Face checkpoint's `config.json`, as JSON [`CheckpointInfo`].
#[wasm_bindgen]
pub fn inspect_hf_config(config_json: &[u8]) -> Result<String, JsValue> {
    let config = hf::parse_config("config.json", config_json).map_err(js_error)?;
    serde_json::to_string(&CheckpointInfo::new(&config, None)).map_err(js_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(bytes);
        out
    }

    #[test]
    fn a_short_prefix_asks_for_more_and_garbage_is_an_error() {
        // 0 tensors, 1 metadata entry whose key is cut off.
        let mut cut = header(&[]);
        cut.extend(0u64.to_le_bytes());
        cut.extend(1u64.to_le_bytes());
        cut.extend(20u64.to_le_bytes());
        cut.extend(b"general.arch");
        assert!(matches!(gguf_header(&cut), Ok(Inspection::NeedMore)));
        assert!(gguf_header(b"PK\x03\x04 not a gguf").is_err());
    }
}
