//! Steps `compare` and `aird` share: the prompt sets, the compressed model (a file or a recipe
//! compressed on the fly), finding a model's refusal direction, and the judge of the
//! evaluation sets.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use futures_lite::future::block_on;
use refusal_core::compress::recipe::looks_like_recipe;
use refusal_core::compress::{Method, Summary};
use refusal_core::defaults;
use refusal_core::load::TextAssets;
use refusal_core::model::Llama;
use refusal_core::refusal::find::{self, FindSettings, FoundDirection};
use refusal_core::refusal::prompts::{PromptUses, StudyPrompts, without};
use refusal_core::refusal::repair_study::AlphaGrid;
use refusal_core::refusal::{EncodedSplit, RefusalTokens};

use super::compress::{Calibration, CalibrationArgs, compress_model};
use super::directions::{SplitArgs, Splits};
use super::{load_prompts, read_prompts};
use crate::model_args::ModelArgs;
use crate::progress::{RunControl, StageBar};

/// Training, validation and evaluation prompts.
#[derive(Debug, Clone, clap::Args)]
pub struct PromptArgs {
    #[command(flatten)]
    pub splits: SplitArgs,
    /// Harmful prompts for ASR (a file, or builtin:harmful); default: the harmful validation set.
    #[arg(long)]
    pub eval_harmful: Option<String>,
    /// Leave these instructions out of --eval-harmful (e.g. AdvBench minus the training split).
    #[arg(long)]
    pub exclude: Option<PathBuf>,
    /// Harmless prompts for refusal under addition; default: the harmless validation set.
    #[arg(long)]
    pub eval_harmless: Option<String>,
    /// Evaluate at most this many prompts of each evaluation set.
    #[arg(long, default_value_t = 64)]
    pub n_eval: usize,
}

impl PromptArgs {
    /// Reads and splits every set.
    ///
    /// # Errors
    ///
    /// Unreadable files and sets too small to split.
    pub fn load(&self) -> Result<StudyPrompts> {
        let Splits {
            harmful,
            harmless,
            val_harmful,
            val_harmless,
            harmful_use,
            harmless_use,
        } = self.splits.load()?;
        let mut eval_harmful = match &self.eval_harmful {
            Some(spec) => load_prompts(spec)?,
            None => val_harmful.clone(),
        };
        if let Some(ex) = &self.exclude {
            eval_harmful = without(eval_harmful, &read_prompts(ex)?);
        }
        eval_harmful.truncate(self.n_eval);
        let mut eval_harmless = match &self.eval_harmless {
            Some(spec) => load_prompts(spec)?,
            None => val_harmless.clone(),
        };
        eval_harmless.truncate(self.n_eval);
        if eval_harmful.is_empty() || eval_harmless.is_empty() {
            bail!("an evaluation set is empty (check --eval-harmful, --exclude, --n-eval)");
        }
        let uses = PromptUses {
            eval_harmful: self
                .eval_harmful
                .clone()
                .unwrap_or_else(|| "harmful validation set".into()),
            eval_harmless: self
                .eval_harmless
                .clone()
                .unwrap_or_else(|| "harmless validation set".into()),
            n_eval_harmful: eval_harmful.len(),
            n_eval_harmless: eval_harmless.len(),
            harmful: harmful_use,
            harmless: harmless_use,
        };
        Ok(StudyPrompts {
            harmful,
            harmless,
            val_harmful,
            val_harmless,
            eval_harmful,
            eval_harmless,
            uses,
        })
    }
}

/// AIRD's scale α: given, or chosen on the validation prompts.
#[derive(Debug, Clone, clap::Args)]
pub struct AlphaArgs {
    /// AIRD's update scale (1 matches the base projection on the training prompts).
    #[arg(long, default_value_t = defaults::AIRD_ALPHA)]
    pub alpha: f32,
    /// Choose α on the validation prompts among these (comma-separated, e.g. 1,2,4,8): the
    /// lowest validation ASR whose harmless refusal stays within --max-harmless-increase of
    /// the compressed model's. Replaces --alpha.
    #[arg(long, value_delimiter = ',')]
    pub alpha_grid: Vec<f32>,
    /// The bound of --alpha-grid: the largest rise in harmless refusal rate allowed (0.05 is
    /// five points).
    #[arg(long, default_value_t = defaults::MAX_HARMLESS_INCREASE)]
    pub max_harmless_increase: f64,
}

impl AlphaArgs {
    /// The grid to search, when one was given.
    pub fn grid(&self) -> Option<AlphaGrid> {
        (!self.alpha_grid.is_empty()).then(|| AlphaGrid {
            candidates: self.alpha_grid.clone(),
            max_harmless_increase: self.max_harmless_increase,
        })
    }
}

/// Finds a model's direction (METHOD §3-6, with the fallback) under the progress bar.
///
/// # Errors
///
/// Pipeline errors, no candidate even under the fallback, and cancellation.
pub fn find_direction(
    model: &Llama,
    sets: &EncodedSplit,
    tokens: &RefusalTokens,
    settings: &FindSettings,
    bar: &mut StageBar,
) -> Result<FoundDirection> {
    Ok(block_on(find::find_direction(
        model,
        sets,
        tokens,
        settings,
        &mut |p| bar.update(p),
    ))?)
}

/// A compressed model: loaded from a file, or the base compressed by a recipe.
pub struct CompressedModel {
    /// What the user gave (`wanda:0.5`, a path, an alias).
    pub spec: String,
    pub llama: Llama,
    /// The recipe, when the model was compressed here.
    pub method: Option<Method>,
    pub compression: Option<Summary>,
}

/// Loads `spec` as a model if it names one (an alias, an existing path, a Hub id), else
/// compresses `base` by the recipe it spells.
///
/// # Errors
///
/// A spec that is neither; incompatible shapes; compression errors.
pub fn compressed_model(
    spec: &str,
    base: &ModelArgs,
    base_model: &Llama,
    calibration: &dyn Fn() -> Result<Calibration>,
    batch_size: usize,
    control: &RunControl,
) -> Result<CompressedModel> {
    let as_recipe = spec.parse::<Method>();
    let is_path = std::path::Path::new(spec).exists();
    if let Err(e) = &as_recipe
        && looks_like_recipe(spec)
        && !is_path
    {
        bail!("{e}");
    }
    match as_recipe {
        Ok(method) if !is_path => {
            let calibration = calibration()?;
            let calibrated = if calibration.samples == 0 {
                "no calibration".to_owned()
            } else {
                format!(
                    "calibration: {} {} from {}",
                    calibration.samples, calibration.kind, calibration.source
                )
            };
            eprintln!("compressing {} with {method} ({calibrated})", base.model);
            let compressed = compress_model(
                base_model.clone(),
                method,
                &calibration,
                batch_size,
                control,
            )?;
            Ok(CompressedModel {
                spec: spec.to_owned(),
                compression: Some(Summary::of(&compressed.layers)),
                llama: compressed.model,
                method: Some(method),
            })
        }
        _ => {
            let args = ModelArgs {
                model: spec.to_owned(),
                backend: base.backend,
                weights: base.weights,
            };
            let loaded = args.load().with_context(|| {
                format!("`{spec}` is neither a model nor a recipe such as wanda:0.5 or rtn:4:128")
            })?;
            let (b, c) = (base_model.config(), loaded.llama.config());
            if (b.n_layers, b.d_model, b.d_ff, b.vocab_size)
                != (c.n_layers, c.d_model, c.d_ff, c.vocab_size)
            {
                bail!(
                    "{spec} does not have the shapes of the base model ({} layers x {} vs {} x {})",
                    c.n_layers,
                    c.d_model,
                    b.n_layers,
                    b.d_model
                );
            }
            Ok(CompressedModel {
                spec: spec.to_owned(),
                llama: loaded.llama,
                method: None,
                compression: None,
            })
        }
    }
}

/// Calibration for recipes, loaded on first use.
pub fn lazy_calibration<'a>(
    args: &'a CalibrationArgs,
    text: &'a TextAssets,
) -> impl Fn() -> Result<Calibration> + 'a {
    move || args.load(text)
}
