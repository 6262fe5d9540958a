//! The in-browser engine: a model loaded from checkpoint bytes (one GGUF file, or a Hugging
//! Face checkpoint's config.json, tokenizer.json and safetensors shards) on WebGPU or the CPU,
//! what it is, and its logits; the runs on it are the core's, one module each beside this one.
//! Every readback is awaited (WebGPU cannot block).

use std::collections::HashMap;

use burn::tensor::Device;
use bytes::Bytes;
use js_sys::{Array, Function, Uint8Array};
use refusal_core::load::{self, LoadOptions, TextAssets, gguf};
use refusal_core::model::{Llama, NoHook, TokenBatch};
use refusal_core::pipeline::read;
use refusal_core::runs::study::{JudgeRequest, StudyRequest};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::compressed::Kept;
use crate::inspect::CheckpointInfo;
use crate::{init_device, js_error};

/// A loaded model and what the page shows about it.
#[wasm_bindgen]
pub struct Engine {
    llama: Llama,
    text: TextAssets,
    info: EngineInfo,
    kept: Kept,
}

/// The model as loaded (JSON of [`Engine::info`]).
#[derive(Debug, Clone, Serialize)]
pub struct EngineInfo {
    /// The file the model came from (the GGUF file, or the first safetensors shard).
    pub file: String,
    pub format: &'static str,
    /// `webgpu` or `cpu`.
    pub backend: &'static str,
    #[serde(flatten)]
    pub checkpoint: CheckpointInfo,
}

/// Prompts per forward pass in a tab: a tab's memory is shorter than the CLI's machine.
pub const TAB_BATCH_SIZE: usize = 8;

/// A study's defaults in a tab: the CLI's, in batches of [`TAB_BATCH_SIZE`].
pub fn tab_study() -> StudyRequest {
    StudyRequest {
        judge: JudgeRequest {
            batch_size: TAB_BATCH_SIZE,
            ..JudgeRequest::default()
        },
        ..StudyRequest::default()
    }
}

/// Checkpoint files by name; every name a checkpoint needs is looked up here.
struct Files(HashMap<String, Bytes>);

impl Files {
    fn from_js(names: &Array, contents: &Array) -> Result<Files, String> {
        if names.length() != contents.length() {
            return Err(format!(
                "{} file names for {} files",
                names.length(),
                contents.length()
            ));
        }
        let mut files = HashMap::new();
        for (name, bytes) in names.iter().zip(contents.iter()) {
            let name = name.as_string().ok_or("a file name is not a string")?;
            let bytes = bytes
                .dyn_into::<Uint8Array>()
                .map_err(|_| format!("{name}: the contents are not a Uint8Array"))?;
            // Only the base name counts: a dropped folder gives "dir/config.json".
            let base = name.rsplit('/').next().unwrap_or(&name).to_owned();
            if files.insert(base.clone(), bytes.to_vec().into()).is_some() {
                return Err(format!("{base} is given twice"));
            }
        }
        Ok(Files(files))
    }

    fn gguf(&self) -> Option<(&String, &Bytes)> {
        self.0
            .iter()
            .find(|(n, b)| n.to_ascii_lowercase().ends_with(".gguf") || b.starts_with(b"GGUF"))
    }

    fn required(&self, name: &str) -> Result<&[u8], String> {
        self.0.get(name).map(|b| &b[..]).ok_or_else(|| {
            format!(
                "{name} is missing: a Hugging Face checkpoint needs config.json, tokenizer.json \
                 and its .safetensors files (or give one .gguf file); given: {}",
                self.names()
            )
        })
    }

    fn names(&self) -> String {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        names.join(", ")
    }
}

/// Loads a checkpoint from its files (parallel arrays of names and `Uint8Array`s) on WebGPU
/// (`webgpu = true`) or the CPU, calling `on_progress(done, total)` per weight.
///
/// # Errors
///
/// WebGPU unavailable, missing files, and every load error, naming the file.
#[wasm_bindgen]
pub async fn load_engine(
    webgpu: bool,
    names: Array,
    contents: Array,
    on_progress: Function,
) -> Result<Engine, JsValue> {
    let files = Files::from_js(&names, &contents).map_err(js_error)?;
    drop(contents);
    let device = init_device(webgpu).await?;
    let mut progress = |done: usize, total: usize| {
        // A failing progress callback must not abort the load.
        let _ = on_progress.call2(&JsValue::NULL, &done.into(), &total.into());
    };
    Engine::load(&files, &device, &mut progress, webgpu).map_err(js_error)
}

impl Engine {
    pub(crate) fn llama(&self) -> &Llama {
        &self.llama
    }

    pub(crate) fn text(&self) -> &TextAssets {
        &self.text
    }

    pub(crate) fn info(&self) -> &EngineInfo {
        &self.info
    }

    pub(crate) fn kept(&self) -> &Kept {
        &self.kept
    }

    fn load(
        files: &Files,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
        webgpu: bool,
    ) -> Result<Engine, String> {
        let backend = if webgpu { "webgpu" } else { "cpu" };
        if let Some((name, bytes)) = files.gguf() {
            let file = gguf::parse(name, bytes).map_err(|e| e.to_string())?;
            let text = load::gguf_text_assets(name, &file).map_err(|e| e.to_string())?;
            // The blocks stay views into the file: a copy would double the tab's memory.
            let llama = load::gguf_model_viewing(
                name,
                &file,
                bytes,
                device,
                LoadOptions::default(),
                progress,
            )
            .map_err(|e| e.to_string())?;
            let model_name = file
                .get("general.name")
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            let checkpoint = CheckpointInfo::of_gguf(llama.config(), &file, model_name);
            return Ok(Engine {
                llama,
                text,
                info: EngineInfo {
                    file: name.clone(),
                    format: "gguf",
                    backend,
                    checkpoint,
                },
                kept: Kept::default(),
            });
        }
        let config = files.required("config.json")?;
        let tokenizer = files.required("tokenizer.json")?;
        let mut shards: Vec<(String, &[u8])> = files
            .0
            .iter()
            .filter(|(n, _)| n.ends_with(".safetensors"))
            .map(|(n, b)| (n.clone(), &b[..]))
            .collect();
        if shards.is_empty() {
            files.required("model.safetensors")?;
        }
        shards.sort_by(|a, b| a.0.cmp(&b.0));
        let text = load::hf_text_assets(
            tokenizer,
            files.0.get("tokenizer_config.json").map(|b| &b[..]),
            files
                .0
                .get("chat_template.jinja")
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let llama = load::hf_model(config, &shards, device, LoadOptions::default(), progress)
            .map_err(|e| e.to_string())?;
        let checkpoint = CheckpointInfo::new(llama.config(), None);
        Ok(Engine {
            llama,
            text,
            info: EngineInfo {
                file: shards[0].0.clone(),
                format: "safetensors",
                backend,
                checkpoint,
            },
            kept: Kept::default(),
        })
    }
}

#[wasm_bindgen]
impl Engine {
    /// The model as loaded, as JSON [`EngineInfo`].
    #[wasm_bindgen(js_name = info)]
    pub fn info_json(&self) -> Result<String, JsValue> {
        serde_json::to_string(&self.info).map_err(js_error)
    }

    /// The chat-formatted `prompts`' last-position logits, `[prompts, vocab]` row-major, run as
    /// one left-padded batch: what the browser tests compare with the native engine.
    pub async fn prompts_logits(&self, prompts: Vec<String>) -> Result<Vec<f32>, JsValue> {
        let ids = prompts
            .iter()
            .map(|prompt| {
                let formatted = self.text.chat.user_prompt(prompt, None)?;
                Ok(self.text.tokenizer.encode(&formatted.text, false)?)
            })
            .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()
            .map_err(js_error)?;
        let device = self.llama.device();
        let batch = TokenBatch::left_padded(&ids, 0, &device);
        read(self.llama.last_logits(&batch, &mut NoHook))
            .await
            .map_err(js_error)
    }
}
