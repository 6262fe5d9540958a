//! What the cross-crate tests share: the fixtures beside the repository and the real models.

use std::path::PathBuf;

use std::ops::ControlFlow;

use refusal_core::generate::{GenerationSettings, Sampling, generate};
use refusal_core::gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue, quantize};
use refusal_core::load::{self, TextAssets};
use refusal_core::model::{Llama, NoHook, WeightStorage};
use refusal_core::tokenizer::Tokenizer;
use refusal_lens::model::builtin::BuiltinModel;
use refusal_lens::model::fetch::Cache;

pub mod tiny_gguf;
pub mod tiny_model;

/// `../shared/` beside the repository: data and fixtures made outside the project.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// Reads and parses a fixture JSON file.
pub fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = shared_dir().join("fixtures").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The GGUF of a built-in model, fetched into the cache if it is not there yet.
pub fn builtin_gguf(model: BuiltinModel) -> PathBuf {
    let cache = Cache::from_env().unwrap_or_else(|e| panic!("model cache: {e:#}"));
    refusal_lens::model::fetch::ensure_builtin(&model.artifact(), model.alias(), &cache, false)
        .unwrap_or_else(|e| panic!("fetching {}: {e:#}", model.alias()))
}

fn map_builtin(model: BuiltinModel) -> (String, memmap2::Mmap) {
    let path = builtin_gguf(model);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: the cache file is written once, atomically renamed into place and never modified.
    let bytes = unsafe { memmap2::Mmap::map(&file) }
        .unwrap_or_else(|e| panic!("mapping {}: {e}", path.display()));
    (path.display().to_string(), bytes)
}

/// Loads a built-in model on the CPU, its GGML blocks kept as they are (the default).
pub fn load_builtin(model: BuiltinModel) -> Llama {
    load_builtin_as(model, WeightStorage::AsStored)
}

/// Loads a built-in model on the CPU with its matrices kept as `storage` says.
pub fn load_builtin_as(model: BuiltinModel, storage: WeightStorage) -> Llama {
    let (name, bytes) = map_builtin(model);
    let file = load::gguf::parse(&name, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let device = burn::tensor::Device::flex();
    let options = load::LoadOptions {
        storage,
        release: None,
    };
    load::gguf_model(&name, &file, &bytes, &device, options, &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The GGUF `bytes` with every quantized tensor widened to `ty` (F16 or BF16) and every other
/// tensor and the metadata as they are: a 16-bit checkpoint of a built-in model, whose values
/// are the blocks' dequantized values rounded to `ty`.
pub fn widened_gguf(bytes: &[u8], ty: GgmlType) -> Vec<u8> {
    // llama.cpp's file types "mostly F16" and "mostly BF16".
    let file_type = match ty {
        GgmlType::F16 => 1,
        GgmlType::BF16 => 32,
        other => panic!("{other} is not a 16-bit float type"),
    };
    let source = GgufFile::parse(bytes).unwrap_or_else(|e| panic!("{e}"));
    let mut w = GgufWriter::new();
    for (key, value) in &source.metadata {
        w.set(key, value.clone());
    }
    w.set("general.file_type", MetadataValue::U32(file_type));
    for info in &source.tensors {
        let added = if matches!(
            info.ggml_type,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16
        ) {
            let data = source
                .tensor_bytes(bytes, info)
                .unwrap_or_else(|e| panic!("{}: {e}", info.name));
            w.tensor(&info.name, info.dims.clone(), info.ggml_type, data)
        } else {
            let values = source
                .tensor_f32(bytes, &info.name)
                .unwrap_or_else(|e| panic!("{}: {e}", info.name));
            let widened = quantize(ty, &values).expect("16-bit floats hold any shape");
            w.tensor(&info.name, info.dims.clone(), ty, widened)
        };
        added.unwrap_or_else(|e| panic!("{}: {e}", info.name));
    }
    w.to_bytes()
}

/// The tokenizer and chat template of a built-in model.
pub fn load_builtin_assets(model: BuiltinModel) -> TextAssets {
    let (name, bytes) = map_builtin(model);
    let file = load::gguf::parse(&name, &bytes).unwrap_or_else(|e| panic!("{e}"));
    load::gguf_text_assets(&name, &file).unwrap_or_else(|e| panic!("{e}"))
}

/// Greedy completions (special tokens skipped), stopping at the model's stop tokens.
pub fn greedy(llama: &Llama, tokenizer: &Tokenizer, prompts: &[Vec<u32>], n: usize) -> Vec<String> {
    greedy_tokens(llama, tokenizer, prompts, n)
        .iter()
        .map(|t| tokenizer.decode(t, true).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// The token ids of [`greedy`]'s completions.
pub fn greedy_tokens(
    llama: &Llama,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    n: usize,
) -> Vec<Vec<u32>> {
    let settings = GenerationSettings {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        stop_ids: tokenizer.stop_ids(),
    };
    generate(llama, prompts, 0, settings, &mut NoHook, &mut |_, _| {
        ControlFlow::Continue(())
    })
    .tokens
}

/// A file of llama.cpp's vocabulary tests (`ggml-vocab-NAME.gguf`, `.inp`, `.out`), fetched
/// into the cache by `scripts/fetch-vocabs.sh` (which `scripts/test.sh` runs first).
pub fn llamacpp_vocab_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("REFUSAL_LENS_VOCABS").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_else(|| panic!("HOME is not set"));
            PathBuf::from(home).join(".cache/refusal-lens/llamacpp-vocabs")
        },
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-vocabs.sh",
        path.display()
    );
    path
}
