//! `--model`, `--backend` and `--weights`, shared by every command that runs a model.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::ValueEnum;
use refusal_core::model::WeightStorage;

use crate::device::Backend;
use crate::fetch::Cache;
use crate::open::{Fingerprint, LoadedModel, fingerprint, open_as};
use crate::source::{BuiltinModel, ModelSource, ResolvedModel, size_and_mtime};

/// A model as loaded, and what identifies its files then.
struct Kept {
    key: (PathBuf, u64, i64, Backend, Weights),
    loaded: LoadedModel,
    fingerprint: Option<Fingerprint>,
}

/// The model the last command loaded, when [`keep_last_model`] asked for it.
static LAST_MODEL: Mutex<Option<Kept>> = Mutex::new(None);
static KEEP_LAST_MODEL: AtomicBool = AtomicBool::new(false);

/// Keeps the most recently loaded model in memory, so that the next command on the same files
/// and backend starts at once (the server's jobs: a playground prompt on the 0.5B model is
/// about 5 s of loading and hashing otherwise). One model at most: loading another one drops
/// it first, so two large models are never held together.
pub fn keep_last_model() {
    KEEP_LAST_MODEL.store(true, Ordering::SeqCst);
}

/// How the model's large matrices are kept in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Weights {
    /// As the checkpoint stores them: GGUF blocks (Q4_K, Q8_0, ...) stay quantized and are
    /// multiplied as they are on the CPU, 16-bit floats stay 16-bit.
    #[default]
    Stored,
    /// Dequantized to f32: the reference for numerical checks, at several times the memory.
    F32,
}

impl Weights {
    pub fn storage(self) -> WeightStorage {
        match self {
            Weights::Stored => WeightStorage::AsStored,
            Weights::F32 => WeightStorage::F32,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A built-in alias (qwen2.5-coder-0.5b, smollm2-135m), a .gguf file, a Hugging Face
    /// directory or a Hub id (owner/name).
    #[arg(long, default_value = BuiltinModel::default().alias())]
    pub model: String,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// How the weights are kept.
    #[arg(long, value_enum, default_value_t = Weights::Stored)]
    pub weights: Weights,
}

impl ModelArgs {
    /// Finds (and if needed downloads) the model's files.
    pub fn resolve(&self) -> Result<ResolvedModel> {
        let cache = Cache::from_env()?;
        ModelSource::parse(&self.model)?.resolve(&cache, true)
    }

    /// Loads the model on the chosen backend, with a progress bar.
    pub fn load(&self) -> Result<LoadedModel> {
        Ok(self.load_kept(false)?.0)
    }

    /// Loads the model and hashes its files.
    pub fn load_with_fingerprint(&self) -> Result<(LoadedModel, Fingerprint)> {
        let (loaded, fp) = self.load_kept(true)?;
        Ok((loaded, fp.context("a fingerprint was asked for")?))
    }

    fn load_kept(&self, hash: bool) -> Result<(LoadedModel, Option<Fingerprint>)> {
        let resolved = self.resolve()?;
        let fingerprint = || {
            fingerprint(&resolved, &self.model)
                .with_context(|| format!("hashing model `{}`", self.model))
        };
        let load = || -> Result<LoadedModel> {
            let device = self.backend.device()?;
            open_as(&resolved, &device, self.weights.storage(), true)
                .with_context(|| format!("loading model `{}`", self.model))
        };
        if !KEEP_LAST_MODEL.load(Ordering::SeqCst) {
            let fp = hash.then(fingerprint).transpose()?;
            return Ok((load()?, fp));
        }
        let (ResolvedModel::Gguf(path) | ResolvedModel::HfDir(path)) = &resolved;
        let (size, mtime) = size_and_mtime(path)?;
        let key = (path.clone(), size, mtime, self.backend, self.weights);
        // Held while loading, so concurrent jobs on one model load it once.
        let mut last = LAST_MODEL.lock().unwrap_or_else(|e| e.into_inner());
        match last.as_mut() {
            Some(kept) if kept.key == key => {
                if hash && kept.fingerprint.is_none() {
                    kept.fingerprint = Some(fingerprint()?);
                }
            }
            _ => {
                *last = None;
                let fp = hash.then(fingerprint).transpose()?;
                *last = Some(Kept {
                    key,
                    loaded: load()?,
                    fingerprint: fp,
                });
            }
        }
        let kept = last.as_ref().context("the model was just kept")?;
        let fp = kept.fingerprint.clone().map(|mut fp| {
            fp.model.clone_from(&self.model);
            fp
        });
        Ok((kept.loaded.clone(), fp))
    }
}

/// `--base` and `--backend`, for the commands that compare a base model with a derived one.
#[derive(Debug, Clone, clap::Args)]
pub struct BaseArgs {
    /// The base model: a built-in alias, a .gguf file, a Hugging Face directory or a Hub id.
    #[arg(long, default_value = BuiltinModel::default().alias())]
    pub base: String,
    /// Where the models run.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// How the weights are kept.
    #[arg(long, value_enum, default_value_t = Weights::Stored)]
    pub weights: Weights,
}

impl BaseArgs {
    pub fn model_args(&self) -> ModelArgs {
        ModelArgs {
            model: self.base.clone(),
            backend: self.backend,
            weights: self.weights,
        }
    }
}
