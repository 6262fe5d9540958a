//! `--model`, `--backend` and `--weights`, shared by every command that runs a model.

use anyhow::{Context, Result};
use clap::ValueEnum;
use refusal_core::model::WeightStorage;

use crate::device::Backend;
use crate::model::builtin::BuiltinModel;
use crate::model::fetch::Cache;
use crate::model::kept;
use crate::model::open::{Fingerprint, LoadedModel};
use crate::model::source::{ModelSource, ResolvedModel};

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
        kept::load(
            &self.resolve()?,
            &self.model,
            self.backend,
            self.weights.storage(),
            hash,
        )
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
