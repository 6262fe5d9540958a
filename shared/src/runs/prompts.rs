//! Where a run's prompt sets come from (built in, inline, or named and read by the host) and
//! how training and validation prompts are split from them.

use serde::{Deserialize, Serialize};

use super::{RunError, RunIo};
use crate::pipeline::PipelineError;
use crate::refusal::prompts::{
    BuiltinSet, Prompt, PromptUse, builtin_harmful, builtin_harmless, hold_out, shuffled,
};

/// A prompt set in a request: `builtin:harmful` / `builtin:harmless`, another name the host
/// reads (a file on the command line), or the instructions themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptSource {
    Named(String),
    Inline(Vec<String>),
}

impl PromptSource {
    /// The prompts, and how a report names where they came from.
    ///
    /// # Errors
    ///
    /// What the host says of a name it cannot read; [`PipelineError::NoPrompts`] for an
    /// empty inline set.
    pub fn read(&self, io: &mut dyn RunIo) -> Result<(Vec<Prompt>, String), RunError> {
        match self {
            PromptSource::Named(name) => Ok((
                match name.as_str() {
                    "builtin:harmful" => builtin_harmful(),
                    "builtin:harmless" => builtin_harmless(),
                    _ => io.read_prompts(name)?,
                },
                name.clone(),
            )),
            PromptSource::Inline(instructions) => {
                if instructions.is_empty() {
                    return Err(PipelineError::NoPrompts("inline").into());
                }
                let prompts = instructions
                    .iter()
                    .map(|i| Prompt::new(i.clone()))
                    .collect();
                Ok((prompts, format!("{} inline prompts", instructions.len())))
            }
        }
    }
}

/// Training and validation prompts of each kind (directions, compare, AIRD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct SplitRequest {
    /// Harmful prompts; the built-in set when absent.
    pub harmful: Option<PromptSource>,
    /// Harmless prompts; the built-in set when absent.
    pub harmless: Option<PromptSource>,
    /// Harmful validation prompts; by default held out from `harmful`.
    pub harmful_val: Option<PromptSource>,
    /// Harmless validation prompts; by default held out from `harmless`.
    pub harmless_val: Option<PromptSource>,
    /// Training prompts of each kind.
    pub n_train: usize,
    /// Validation prompts of each kind.
    pub n_val: usize,
    /// Seed of the prompt sampling.
    pub seed: u64,
}

impl SplitRequest {
    pub const N_TRAIN: usize = 128;
    pub const N_VAL: usize = 32;

    /// # Errors
    ///
    /// [`RunError::Invalid`] for fewer than 2 training or 1 validation prompts asked for.
    pub fn validate(&self) -> Result<(), RunError> {
        if self.n_train < 2 {
            return Err(RunError::invalid(
                "n-train",
                "at least 2 training prompts are needed",
            ));
        }
        if self.n_val == 0 {
            return Err(RunError::invalid(
                "n-val",
                "at least 1 validation prompt is needed",
            ));
        }
        Ok(())
    }
}

impl Default for SplitRequest {
    fn default() -> SplitRequest {
        SplitRequest {
            harmful: None,
            harmless: None,
            harmful_val: None,
            harmless_val: None,
            n_train: SplitRequest::N_TRAIN,
            n_val: SplitRequest::N_VAL,
            seed: 0,
        }
    }
}

/// The four prompt sets of a run and where they came from.
#[derive(Debug, Clone)]
pub struct Splits {
    pub harmful: Vec<Prompt>,
    pub harmless: Vec<Prompt>,
    pub val_harmful: Vec<Prompt>,
    pub val_harmless: Vec<Prompt>,
    pub harmful_use: PromptUse,
    pub harmless_use: PromptUse,
}

impl SplitRequest {
    /// Reads and splits both kinds.
    ///
    /// # Errors
    ///
    /// Unreadable sets, and [`PipelineError::TooFewPrompts`] for a set that gives fewer than 2
    /// training or 1 validation prompts.
    pub fn load(&self, io: &mut dyn RunIo) -> Result<Splits, RunError> {
        let (harmful, val_harmful, harmful_use) = self.split(
            BuiltinSet::Harmful,
            self.harmful.as_ref(),
            self.harmful_val.as_ref(),
            io,
        )?;
        let (harmless, val_harmless, harmless_use) = self.split(
            BuiltinSet::Harmless,
            self.harmless.as_ref(),
            self.harmless_val.as_ref(),
            io,
        )?;
        Ok(Splits {
            harmful,
            harmless,
            val_harmful,
            val_harmless,
            harmful_use,
            harmless_use,
        })
    }

    /// Train and validation prompts of one kind: a separate validation set, or held out from
    /// the same set.
    fn split(
        &self,
        kind: BuiltinSet,
        set: Option<&PromptSource>,
        val_set: Option<&PromptSource>,
        io: &mut dyn RunIo,
    ) -> Result<(Vec<Prompt>, Vec<Prompt>, PromptUse), RunError> {
        let name = kind.name();
        let (all, train_source) = match set {
            Some(source) => source.read(io)?,
            None => (kind.prompts(), format!("built-in {name} set")),
        };
        let (n_train, n_val, seed) = (self.n_train, self.n_val, self.seed);
        let (train, val, val_source) = match val_set {
            Some(source) => {
                let (val, val_source) = source.read(io)?;
                let val = shuffled(val, seed.wrapping_add(1));
                (
                    shuffled(all, seed).into_iter().take(n_train).collect(),
                    val.into_iter().take(n_val).collect(),
                    val_source,
                )
            }
            None => {
                let (train, val) = hold_out(all, n_train, n_val, seed);
                (train, val, train_source.clone())
            }
        };
        if train.len() < 2 || val.is_empty() {
            return Err(PipelineError::TooFewPrompts {
                set: format!("{name} prompts ({train_source})"),
                n_train: train.len(),
                n_val: val.len(),
            }
            .into());
        }
        if train.len() < n_train || val.len() < n_val {
            io.note(&format!(
                "{name}: using {} training and {} validation prompts (asked for {n_train} and {n_val})",
                train.len(),
                val.len()
            ));
        }
        let used = PromptUse {
            train_source,
            val_source,
            n_train: train.len(),
            n_val: val.len(),
        };
        Ok((train, val, used))
    }
}
