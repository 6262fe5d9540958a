//! Reading a resolved model's files and loading them through the core.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use memmap2::Mmap;
#[cfg(unix)]
use memmap2::UncheckedAdvice;
use refusal_core::chat::Renderer;
use refusal_core::gguf::GgufFile;
use refusal_core::load::{self, LoadOptions, TextAssets};
use refusal_core::model::{Llama, ModelConfig, RopeScaling, WeightStorage};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::hf_dir::safetensors_shards;
use crate::model::source::ResolvedModel;

/// Where the chat templates of models opened from now on render, when not in this process.
static TEMPLATE_RENDERER: OnceLock<Arc<dyn Renderer>> = OnceLock::new();

/// Renders the chat templates of every model opened from now on with `renderer` (the server's
/// [`crate::serve::template_sandbox`]); the first call decides.
pub fn render_templates_with(renderer: Arc<dyn Renderer>) {
    // A second call (a second server in one process) would pass the same kind of renderer.
    let _ = TEMPLATE_RENDERER.set(renderer);
}

/// A model ready to run, with what describes it. Cloning is cheap: the weights are shared
/// tensors, the tokenizer and description are shared.
#[derive(Clone)]
pub struct LoadedModel {
    pub llama: Llama,
    pub text: Arc<TextAssets>,
    pub info: Arc<ModelInfo>,
}

/// What `inspect` shows.
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub format: &'static str,
    pub config: ModelConfig,
    /// Number of tensors of each storage type (GGML type or safetensors dtype).
    pub tensor_types: BTreeMap<String, usize>,
    pub n_parameters: usize,
    pub chat_template: String,
    pub special_tokens: Vec<(u32, String)>,
    pub stop_tokens: Vec<u32>,
}

/// Identifies the exact model a result was computed on: saved with every direction and report
/// so that a direction applied to another model is noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// The `--model` argument.
    pub model: String,
    pub format: String,
    pub architecture: String,
    pub n_layers: usize,
    pub d_model: usize,
    /// SHA-256 of the GGUF file, or of `config.json` followed by the safetensors shards.
    pub sha256: String,
}

/// Hashes the model's files (about a second per GB), or takes the digest that fetching a GGUF
/// verified. They are read, not mapped, so hashing a 7B model does not make its 14 GB
/// resident in this process.
pub fn fingerprint(resolved: &ResolvedModel, label: &str) -> Result<Fingerprint> {
    let checkpoint = Checkpoint::open(resolved)?;
    let (config, _, _) = checkpoint.headers()?;
    let describe = |sha256| Fingerprint {
        model: label.to_owned(),
        format: checkpoint.format().to_owned(),
        architecture: config.architecture.name().to_owned(),
        n_layers: config.n_layers,
        d_model: config.d_model,
        sha256,
    };
    if let Checkpoint::Gguf { path, .. } = &checkpoint
        && let Some(digest) = crate::model::fetch::verified_digest(path)
    {
        return Ok(describe(digest));
    }
    let mut hasher = Sha256::new();
    let hash_file = |hasher: &mut Sha256, path: &Path| -> Result<()> {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        std::io::copy(&mut file, hasher).with_context(|| format!("reading {}", path.display()))?;
        Ok(())
    };
    match &checkpoint {
        Checkpoint::Gguf { path, .. } => hash_file(&mut hasher, path)?,
        Checkpoint::Hf {
            config_json,
            shards,
            ..
        } => {
            hasher.update(config_json);
            for (path, _) in shards {
                hash_file(&mut hasher, Path::new(path))?;
            }
        }
    }
    Ok(describe(crate::model::fetch::hex(&hasher.finalize())))
}

/// Memory-maps a file read-only.
fn map(path: &Path) -> Result<Mmap> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: model files are only read; a file truncated by another process while mapped would
    // fault, which is the accepted risk of every mmap-based model loader.
    unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))
}

/// Lets the system drop the pages of `bytes` from this process once loading has copied them,
/// so that a mapped checkpoint does not stay resident beside the model. Best effort: a failure
/// only leaves the pages resident.
#[cfg(unix)]
fn drop_pages(map: &Mmap, bytes: Range<usize>) {
    // SAFETY: the mapping is shared and read-only, so MADV_DONTNEED loses nothing: a later read
    // of these bytes faults them in again from the file, with the same contents.
    let _ =
        unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, bytes.start, bytes.len()) };
}

#[cfg(not(unix))]
fn drop_pages(_: &Mmap, _: Range<usize>) {}

fn weight_progress(show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("loading weights {bar:30} {pos}/{len} tensors ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// A checkpoint's files, opened (weights memory-mapped, not yet read).
enum Checkpoint {
    Gguf {
        path: PathBuf,
        bytes: Mmap,
        /// Parsed once: the header holds the whole vocabulary.
        file: GgufFile,
    },
    Hf {
        dir: PathBuf,
        config_json: Vec<u8>,
        shards: Vec<(String, Mmap)>,
    },
}

impl Checkpoint {
    fn open(resolved: &ResolvedModel) -> Result<Checkpoint> {
        Ok(match resolved {
            ResolvedModel::Gguf(path) => {
                let bytes = map(path)?;
                let file = load::gguf::parse(&path.display().to_string(), &bytes)?;
                Checkpoint::Gguf {
                    path: path.clone(),
                    bytes,
                    file,
                }
            }
            ResolvedModel::HfDir(dir) => {
                let index = dir.join("model.safetensors.index.json");
                let names: Vec<String> = if index.exists() {
                    safetensors_shards(&index)?.into_iter().collect()
                } else {
                    vec!["model.safetensors".into()]
                };
                let shards = names
                    .into_iter()
                    .map(|n| {
                        let path = dir.join(&n);
                        Ok((path.display().to_string(), map(&path)?))
                    })
                    .collect::<Result<_>>()?;
                Checkpoint::Hf {
                    dir: dir.clone(),
                    config_json: read(dir, "config.json")?,
                    shards,
                }
            }
        })
    }

    fn path(&self) -> &Path {
        match self {
            Checkpoint::Gguf { path, .. } => path,
            Checkpoint::Hf { dir, .. } => dir,
        }
    }

    fn text_assets(&self) -> Result<TextAssets> {
        let mut text = match self {
            Checkpoint::Gguf { path, file, .. } => {
                load::gguf_text_assets(&path.display().to_string(), file)?
            }
            Checkpoint::Hf { dir, .. } => {
                let optional =
                    |name: &str| dir.join(name).exists().then(|| read(dir, name)).transpose();
                let tokenizer_config = optional("tokenizer_config.json")?;
                let jinja = optional("chat_template.jinja")?
                    .map(|b| String::from_utf8(b).context("chat_template.jinja is not UTF-8"))
                    .transpose()?;
                load::hf_text_assets(
                    &read(dir, "tokenizer.json")?,
                    tokenizer_config.as_deref(),
                    jinja.as_deref(),
                )?
            }
        };
        if let Some(renderer) = TEMPLATE_RENDERER.get() {
            text.chat = text.chat.rendered_by(renderer.clone());
        }
        Ok(text)
    }

    /// The validated config, tensor counts per storage type and the parameter count, read
    /// from headers only.
    fn headers(&self) -> Result<(ModelConfig, BTreeMap<String, usize>, usize)> {
        let mut types = BTreeMap::new();
        let mut n_parameters = 0;
        let config = match self {
            Checkpoint::Gguf { path, file, bytes } => {
                let name = path.display().to_string();
                for t in &file.tensors {
                    *types.entry(t.ggml_type.name().to_string()).or_default() += 1;
                    n_parameters += t.n_elements() as usize;
                }
                load::gguf::config(file, bytes).with_context(|| name.clone())?
            }
            Checkpoint::Hf {
                config_json,
                shards,
                ..
            } => {
                for (name, bytes) in shards {
                    let st = safetensors::SafeTensors::deserialize(bytes)
                        .with_context(|| format!("{name}: invalid safetensors"))?;
                    for (_, view) in st.tensors() {
                        *types.entry(format!("{:?}", view.dtype())).or_default() += 1;
                        n_parameters += view.shape().iter().product::<usize>();
                    }
                }
                load::hf::parse_config("config.json", config_json)?
            }
        };
        Ok((config, types, n_parameters))
    }

    fn load(
        &self,
        device: &Device,
        storage: WeightStorage,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Llama> {
        Ok(match self {
            Checkpoint::Gguf { path, bytes, file } => {
                let mut release = |_: usize, range: Range<usize>| drop_pages(bytes, range);
                let options = LoadOptions {
                    storage,
                    release: Some(&mut release),
                };
                load::gguf_model(
                    &path.display().to_string(),
                    file,
                    bytes,
                    device,
                    options,
                    progress,
                )?
            }
            Checkpoint::Hf {
                config_json,
                shards,
                ..
            } => {
                let slices: Vec<(String, &[u8])> =
                    shards.iter().map(|(n, m)| (n.clone(), &m[..])).collect();
                let mut release =
                    |shard: usize, bytes: Range<usize>| drop_pages(&shards[shard].1, bytes);
                let options = LoadOptions {
                    storage,
                    release: Some(&mut release),
                };
                load::hf_model(config_json, &slices, device, options, progress)?
            }
        })
    }

    fn format(&self) -> &'static str {
        match self {
            Checkpoint::Gguf { .. } => "gguf",
            Checkpoint::Hf { .. } => "safetensors",
        }
    }
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let p = dir.join(name);
    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
}

/// What a model is, from its headers, without loading its weights.
pub fn inspect(resolved: &ResolvedModel) -> Result<ModelInfo> {
    let checkpoint = Checkpoint::open(resolved)?;
    let text = checkpoint.text_assets()?;
    describe(&checkpoint, &text)
}

/// Loads the model and its tokenizer and chat template on `device`; a 16-bit Hugging Face
/// checkpoint stays 16-bit ([`WeightStorage::AsStored`]).
pub fn open(resolved: &ResolvedModel, device: &Device, progress: bool) -> Result<LoadedModel> {
    open_as(resolved, device, WeightStorage::default(), progress)
}

/// [`open`], keeping the large matrices as `storage` says. Loading needs about the model's
/// bytes on the device plus one tensor: the memory-mapped shards are read one tensor at a time
/// and their pages dropped as they are copied.
pub fn open_as(
    resolved: &ResolvedModel,
    device: &Device,
    storage: WeightStorage,
    progress: bool,
) -> Result<LoadedModel> {
    let checkpoint = Checkpoint::open(resolved)?;
    let text = checkpoint.text_assets()?;
    let info = describe(&checkpoint, &text)?;
    let bar = weight_progress(progress);
    let llama = checkpoint.load(device, storage, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    Ok(LoadedModel {
        llama,
        text: text.into(),
        info: info.into(),
    })
}

fn describe(checkpoint: &Checkpoint, text: &TextAssets) -> Result<ModelInfo> {
    let (config, tensor_types, n_parameters) = checkpoint.headers()?;
    Ok(ModelInfo {
        path: checkpoint.path().to_path_buf(),
        format: checkpoint.format(),
        config,
        tensor_types,
        n_parameters,
        chat_template: text.chat.source().to_string(),
        special_tokens: text.tokenizer.special_tokens(),
        stop_tokens: text.tokenizer.stop_ids(),
    })
}

impl ModelInfo {
    /// The human-readable form of `inspect`.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(s, "path             {}", self.path.display());
        let _ = writeln!(s, "format           {}", self.format);
        let _ = writeln!(s, "architecture     {}", c.architecture.name());
        let _ = writeln!(
            s,
            "parameters       {:.1} M",
            self.n_parameters as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "dims             d_model {} · layers {} · heads {} (kv {}) · head_dim {} · d_ff {} · vocab {}",
            c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.d_ff, c.vocab_size
        );
        let _ = writeln!(
            s,
            "rope             theta {} · pairing {:?} · scaling {}",
            c.rope_theta,
            c.rope_pairing,
            match &c.rope_scaling {
                None => "none".to_string(),
                Some(RopeScaling::Llama3(r)) => format!("llama3 ×{}", r.factor),
                Some(RopeScaling::FreqFactors { factors }) => format!(
                    "frequency factors {:.3}..{:.3} (rope_freqs.weight)",
                    factors.iter().copied().fold(f32::INFINITY, f32::min),
                    factors.iter().copied().fold(0.0, f32::max)
                ),
            }
        );
        let _ = writeln!(
            s,
            "misc             rms eps {} · qkv bias {} · tied embeddings {} · context {}",
            c.rms_norm_eps, c.qkv_bias, c.tied_embeddings, c.max_positions
        );
        let types: Vec<String> = self
            .tensor_types
            .iter()
            .map(|(t, n)| format!("{t} ×{n}"))
            .collect();
        let _ = writeln!(s, "tensor types     {}", types.join(", "));
        // Llama 3 has 256 of them, mostly reserved placeholders; `--json` lists them all.
        const SHOWN: usize = 24;
        let mut specials: Vec<String> = self
            .special_tokens
            .iter()
            .take(SHOWN)
            .map(|(id, t)| format!("{id} {t}"))
            .collect();
        if self.special_tokens.len() > SHOWN {
            specials.push(format!("… ({} more)", self.special_tokens.len() - SHOWN));
        }
        let _ = writeln!(s, "special tokens   {}", specials.join(", "));
        let _ = writeln!(s, "stop tokens      {:?}", self.stop_tokens);
        let _ = writeln!(s, "chat template\n{}", self.chat_template);
        s
    }
}
