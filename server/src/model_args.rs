//! `--model` and `--backend`, shared by every command that runs a model.

use anyhow::{Context, Result};

use crate::device::Backend;
use crate::fetch::Cache;
use crate::open::{Fingerprint, LoadedModel, fingerprint, open};
use crate::source::{BuiltinModel, ModelSource, ResolvedModel};

#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A built-in alias (qwen2.5-coder-0.5b, smollm2-135m), a .gguf file, a Hugging Face
    /// directory or a Hub id (owner/name).
    #[arg(long, default_value = BuiltinModel::default().alias())]
    pub model: String,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
}

impl ModelArgs {
    /// Finds (and if needed downloads) the model's files.
    pub fn resolve(&self) -> Result<ResolvedModel> {
        let cache = Cache::from_env()?;
        ModelSource::parse(&self.model)?.resolve(&cache, true)
    }

    /// Loads the model on the chosen backend, with a progress bar.
    pub fn load(&self) -> Result<LoadedModel> {
        let device = self.backend.device()?;
        open(&self.resolve()?, &device, true)
            .with_context(|| format!("loading model `{}`", self.model))
    }

    /// Loads the model and hashes its files.
    pub fn load_with_fingerprint(&self) -> Result<(LoadedModel, Fingerprint)> {
        let resolved = self.resolve()?;
        let fp = fingerprint(&resolved, &self.model)
            .with_context(|| format!("hashing model `{}`", self.model))?;
        let device = self.backend.device()?;
        let loaded = open(&resolved, &device, true)
            .with_context(|| format!("loading model `{}`", self.model))?;
        Ok((loaded, fp))
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
}

impl BaseArgs {
    pub fn model_args(&self) -> ModelArgs {
        ModelArgs {
            model: self.base.clone(),
            backend: self.backend,
        }
    }
}
