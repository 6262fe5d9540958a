//! Flags `compare` and `aird` share: the prompt sets and AIRD's scale, mapped onto the core's
//! study requests.

use std::path::PathBuf;

use refusal_core::runs::PromptSource;
use refusal_core::runs::defaults;
use refusal_core::runs::study::{AlphaRequest, StudyRequest};

use super::JudgeArgs;
use super::compress::CalibrationArgs;
use super::directions::SplitArgs;

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
    #[arg(long, default_value_t = StudyRequest::N_EVAL)]
    pub n_eval: usize,
    /// Run the whole study once per seed of the prompt sampling (comma-separated, e.g.
    /// 0,1,2) instead of --seed alone: the report is the first seed's, with every seed's
    /// headline numbers and their spread.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
}

impl PromptArgs {
    /// The study these flags, the calibration's and the judge's ask for.
    pub fn study(&self, calibration: &CalibrationArgs, judge: &JudgeArgs) -> StudyRequest {
        StudyRequest {
            split: self.splits.request(),
            eval_harmful: self.eval_harmful.clone().map(PromptSource::Named),
            exclude: self
                .exclude
                .as_ref()
                .map(|p| PromptSource::Named(p.display().to_string())),
            eval_harmless: self.eval_harmless.clone().map(PromptSource::Named),
            n_eval: self.n_eval,
            seeds: self.seeds.clone(),
            calibration: calibration.request(),
            judge: judge.request(),
        }
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
    /// The scale, and the ridge penalty `lambda` (`--lambda`, chosen on the validation
    /// prompts when absent).
    pub fn request(&self, lambda: Option<f64>) -> AlphaRequest {
        AlphaRequest {
            alpha: self.alpha,
            alpha_grid: self.alpha_grid.clone(),
            max_harmless_increase: self.max_harmless_increase,
            lambda,
        }
    }
}
