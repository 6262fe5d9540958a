//! The in-browser engine: a model loaded from checkpoint bytes (one GGUF file, or a Hugging
//! Face checkpoint's config.json, tokenizer.json and safetensors shards) on WebGPU or the CPU,
//! answering one prompt side by side under each variant of METHOD §5, and compressed by a
//! recipe (with its AIRD repair) for the compressed columns.
//!
//! Every readback is awaited (WebGPU cannot block), and the token callback may return a
//! Promise: the worker awaits a macrotask there, which is when it sees a Cancel message.

use std::collections::HashMap;
use std::ops::ControlFlow;

use burn::tensor::Device;
use bytes::Bytes;
use js_sys::{Array, Function, Promise, Uint8Array};
use refusal_core::chat::FormattedPrompt;
use refusal_core::compress::{Method, Summary};
use refusal_core::defaults;
use refusal_core::generate::{Decoder, GenerationSettings, Sampling};
use refusal_core::load::{self, LoadOptions, TextAssets, gguf};
use refusal_core::model::{Llama, NoHook, TokenBatch};
use refusal_core::pipeline::{Progress, read};
use refusal_core::refusal::variant::{Completion, DirectionUse, GenerateReport};
use refusal_core::refusal::{Prompt, Variant, VariantDirection, VariantModels};
use refusal_core::runs::aird::GivenDirection;
use refusal_core::runs::compress::{Calibration, CalibrationRequest};
use refusal_core::runs::study::{JudgeRequest, StudyRequest};
use refusal_core::runs::{LocalFuture, RunError, RunIo};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::compressed::{Columns, CompressSettings, Kept};
use crate::inspect::CheckpointInfo;
use crate::{init_device, js_error, js_progress};

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

/// One playground request (JSON), the browser's `refusal-lens generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub prompt: String,
    #[serde(default)]
    pub system: Option<String>,
    pub max_new_tokens: usize,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default = "default_top_p")]
    pub top_p: f32,
    #[serde(default)]
    pub seed: u64,
    /// Empty: the base model, or every variant when a direction is given.
    #[serde(default)]
    pub variants: Vec<Variant>,
    #[serde(default)]
    pub direction: Option<GivenDirection>,
    #[serde(default = "default_coeff")]
    pub coeff: f32,
    /// Layer of the activation addition (default: the direction's).
    #[serde(default)]
    pub layer: Option<usize>,
    /// The compressed columns' recipe (`rtn:4:128`, `wanda:0.5`), compressed in the tab.
    #[serde(default)]
    pub compressed: Option<String>,
    /// Built-in harmless prompts that calibrated recipes see.
    #[serde(default = "default_n_calib")]
    pub n_calib: usize,
    /// Training prompts of each built-in set that AIRD is fitted on.
    #[serde(default = "default_aird_prompts")]
    pub aird_prompts: usize,
    #[serde(default = "default_aird_alpha")]
    pub aird_alpha: f32,
    /// Prompts per forward pass while compressing and fitting AIRD.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

// The CLI's defaults (`refusal-lens generate --help`), but batches of 8 as in every tab run.
fn default_top_p() -> f32 {
    defaults::TOP_P
}

fn default_coeff() -> f32 {
    defaults::ACTADD_COEFF
}

fn default_n_calib() -> usize {
    CalibrationRequest::N_CALIB
}

fn default_aird_prompts() -> usize {
    defaults::AIRD_FIT_PROMPTS
}

fn default_aird_alpha() -> f32 {
    defaults::AIRD_ALPHA
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

fn default_batch_size() -> usize {
    TAB_BATCH_SIZE
}

/// A core run's I/O in the tab: progress through the page's callback (whose `false` answer
/// cancels), the built-in prompt sets and inline lists only, models made by recipes from the
/// loaded one (kept for the next run), notes in the console.
pub struct TabIo<'a> {
    engine: &'a Engine,
    on_progress: &'a Function,
}

impl<'a> TabIo<'a> {
    pub fn new(engine: &'a Engine, on_progress: &'a Function) -> TabIo<'a> {
        TabIo {
            engine,
            on_progress,
        }
    }
}

impl RunIo for TabIo<'_> {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        js_progress(self.on_progress)(progress)
    }

    fn note(&mut self, message: &str) {
        web_sys::console::info_1(&message.into());
    }

    fn read_prompts(&mut self, name: &str) -> Result<Vec<Prompt>, RunError> {
        Err(RunError::Input(format!(
            "`{name}`: a tab has only the built-in prompt sets (builtin:harmful, builtin:harmless) and inline lists"
        )))
    }

    fn open_model(&mut self, spec: &str) -> Result<Llama, RunError> {
        Err(RunError::Input(format!(
            "`{spec}`: in this browser the compressed model is made by a recipe such as \
             rtn:4:128 or wanda:0.5"
        )))
    }

    fn compress<'b>(
        &'b mut self,
        base: &'b Llama,
        method: Method,
        calibration: &'b Calibration,
        batch_size: usize,
    ) -> LocalFuture<'b, Result<(Llama, Summary), RunError>> {
        Box::pin(async move {
            self.engine
                .compressed_kept(
                    base,
                    method,
                    calibration,
                    batch_size,
                    &mut js_progress(self.on_progress),
                )
                .await
        })
    }
}

/// What [`Engine::generate`] returns: the CLI's `generate.json`, so the app shows and shares
/// both alike.
pub type Report = GenerateReport<EngineInfo>;

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

    /// The chat-formatted prompt and its token ids, as the model sees them.
    fn encode_prompt(
        &self,
        prompt: &str,
        system: Option<&str>,
    ) -> Result<(FormattedPrompt, Vec<u32>), JsValue> {
        let formatted = self
            .text
            .chat
            .user_prompt(prompt, system)
            .map_err(js_error)?;
        let ids = self
            .text
            .tokenizer
            .encode(&formatted.text, false)
            .map_err(js_error)?;
        Ok((formatted, ids))
    }
}

#[wasm_bindgen]
impl Engine {
    /// The model as loaded, as JSON [`EngineInfo`].
    #[wasm_bindgen(js_name = info)]
    pub fn info_json(&self) -> Result<String, JsValue> {
        serde_json::to_string(&self.info).map_err(js_error)
    }

    /// The chat-formatted `prompt`'s last-position logits (`[vocab]`): what the browser test
    /// compares with the native engine.
    pub async fn prompt_logits(&self, prompt: String) -> Result<Vec<f32>, JsValue> {
        let (_, ids) = self.encode_prompt(&prompt, None)?;
        let device = self.llama.device();
        let batch = TokenBatch::left_padded(&[ids], 0, &device);
        read(self.llama.last_logits(&batch, &mut NoHook))
            .await
            .map_err(js_error)
    }

    /// Generates every requested variant in turn (request: JSON [`GenerateRequest`]), calling
    /// `on_token(variant, text)` after each token (`text` may be empty while a character is
    /// incomplete). When it returns `false`, or a Promise of `false`, generation stops and
    /// this rejects with "cancelled". The compressed columns' models are made first, calling
    /// `on_progress(stage, done, total)` (`false` cancels). Resolves with JSON [`Report`].
    pub async fn generate(
        &self,
        request: String,
        on_token: Function,
        on_progress: Function,
    ) -> Result<String, JsValue> {
        let req: GenerateRequest = serde_json::from_str(&request)
            .map_err(|e| js_error(format!("invalid request: {e}")))?;
        if let Some(d) = &req.direction {
            d.check(&self.llama).map_err(js_error)?;
        }
        let variants = match req.variants.as_slice() {
            [] => Variant::defaults(req.direction.is_some(), req.compressed.is_some()),
            given => given.to_vec(),
        };
        let columns = match &req.compressed {
            Some(recipe) if variants.iter().any(|v| v.is_compressed()) => {
                let settings = CompressSettings {
                    recipe: recipe.clone(),
                    n_calib: req.n_calib,
                    aird_prompts: req.aird_prompts,
                    aird_alpha: req.aird_alpha,
                    batch_size: req.batch_size,
                };
                let repair_toward = req
                    .direction
                    .as_ref()
                    .filter(|_| variants.contains(&Variant::CompressedAird));
                Some(
                    self.compressed_columns(&settings, repair_toward, &on_progress)
                        .await
                        .map_err(js_error)?,
                )
            }
            _ => None,
        };
        let models = VariantModels {
            base: &self.llama,
            compressed: columns.as_ref().map(|c| &c.compressed),
            repaired: columns.as_ref().and_then(|c| c.repaired.as_ref()),
        };
        let (formatted, ids) = self.encode_prompt(&req.prompt, req.system.as_deref())?;
        let applied = req.direction.as_ref().map(|d| VariantDirection {
            vector: &d.vector,
            actadd_layer: req.layer.unwrap_or(d.layer),
            coeff: req.coeff,
        });
        let sampling = Sampling::from_temperature(req.temperature, req.top_p, req.seed);
        let mut completions = Vec::with_capacity(variants.len());
        for variant in variants {
            let run = variant.setup(models, applied.as_ref()).map_err(js_error)?;
            let model = run.model.as_ref();
            let mut hook = run.intervention.hook(model).map_err(js_error)?;
            let settings = GenerationSettings {
                max_new_tokens: req.max_new_tokens,
                sampling,
                stop_ids: self.text.tokenizer.stop_ids(),
            };
            let mut decoder = Decoder::new(model, std::slice::from_ref(&ids), 0, settings);
            let mut stream = self.text.tokenizer.stream(true);
            let mut cancelled = false;
            while let Some(logits) = decoder.forward(&mut hook) {
                let host = read(logits).await.map_err(js_error)?;
                for (_, token) in decoder.accept(&host) {
                    let piece = stream.push(token).map_err(js_error)?.unwrap_or_default();
                    if !keep_going(&on_token, variant, &piece).await? {
                        cancelled = true;
                    }
                }
                if cancelled {
                    decoder.cancel();
                }
            }
            if cancelled {
                return Err(js_error("cancelled"));
            }
            if let Some(rest) = stream.flush().map_err(js_error)? {
                keep_going(&on_token, variant, &rest).await?;
            }
            let out = decoder.finish();
            let tokens = out.tokens.into_iter().next().unwrap_or_default();
            let text = self
                .text
                .tokenizer
                .decode(&tokens, true)
                .map_err(js_error)?;
            completions.push(Completion::judged(variant, text, tokens, out.finish[0]));
        }
        let report = Report {
            model: self.info.clone(),
            prompt: req.prompt,
            formatted_prompt: formatted.text,
            prompt_tokens: ids.len(),
            max_new_tokens: req.max_new_tokens,
            temperature: req.temperature,
            seed: req.seed,
            direction: req.direction.as_ref().map(|d| DirectionUse {
                layer: d.layer,
                position: d.position,
                actadd_layer: req.layer.unwrap_or(d.layer),
                coeff: req.coeff,
            }),
            compressed: columns.map(|c: Columns| c.used),
            completions,
        };
        serde_json::to_string(&report).map_err(js_error)
    }
}

/// Calls the token callback; `false` (or a Promise of it) asks to stop.
async fn keep_going(on_token: &Function, variant: Variant, piece: &str) -> Result<bool, JsValue> {
    let answer = on_token.call2(&JsValue::NULL, &variant.name().into(), &piece.into())?;
    let answer = match answer.dyn_into::<Promise>() {
        Ok(promise) => JsFuture::from(promise).await?,
        Err(value) => value,
    };
    Ok(answer.as_bool() != Some(false))
}
