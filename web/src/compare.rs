//! The Compressed vs base page in the browser: METHOD §9 on the loaded model and compressed
//! copies of it made in the tab by recipes, on the built-in prompt sets, optionally with the
//! AIRD repair of each (METHOD §10). The core's [`Comparison`] does the work, as for
//! `refusal-lens compare`, and the report is its `compare.json`, so the app draws both alike.

use js_sys::Function;
use refusal_core::defaults;
use refusal_core::refusal::compare::{
    BaseReport, Chosen, CompareReport, Comparison, RepairSettings,
};
use refusal_core::refusal::evaluate::EvalSettings;
use refusal_core::refusal::find::{FindSettings, find_direction};
use refusal_core::refusal::prompts::StudyPrompts;
use refusal_core::refusal::repair_study::AlphaGrid;
use refusal_core::refusal::{EncodedPrompts, OnProgress, RefusalTokens};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::directions::SelectionFilters;
use crate::engine::{Engine, EngineInfo, default_aird_alpha, default_batch_size, default_n_calib};
use crate::{js_error, js_progress};

/// One comparison (JSON): the browser's `refusal-lens compare` on the built-in sets. Absent
/// fields take the CLI's defaults.
#[derive(Debug, Deserialize)]
pub struct CompareRequest {
    /// Recipes (`rtn:4:128`, `wanda:0.5`), each compressed in the tab in turn.
    pub compressed: Vec<String>,
    #[serde(flatten)]
    pub study: StudyRequest,
    /// Score only these post-instruction positions (all of them when absent).
    #[serde(default)]
    pub positions: Option<Vec<isize>>,
    #[serde(default)]
    pub score_deep_layers: bool,
    #[serde(flatten)]
    pub filters: SelectionFilters,
    #[serde(default = "default_fallback_kl_max")]
    pub fallback_kl_max: f64,
    /// Activation-addition coefficient for sufficiency and transfer.
    #[serde(default = "default_coeff")]
    pub coeff: f32,
    /// Also repair every compressed model with AIRD.
    #[serde(default)]
    pub aird: bool,
    #[serde(flatten)]
    pub repair: AirdRequest,
}

/// AIRD's scale and penalty in a request (`--alpha`, `--alpha-grid`, `--lambda`).
#[derive(Debug, Deserialize)]
pub struct AirdRequest {
    #[serde(default = "default_aird_alpha")]
    pub alpha: f32,
    #[serde(default)]
    pub lambda: Option<f64>,
    /// Choose α on the validation prompts among these instead.
    #[serde(default)]
    pub alpha_grid: Option<Vec<f32>>,
    #[serde(default = "default_max_harmless_increase")]
    pub max_harmless_increase: f64,
}

impl AirdRequest {
    /// The α grid to search, if any.
    pub(crate) fn grid(&self) -> Option<AlphaGrid> {
        self.alpha_grid.as_ref().map(|candidates| AlphaGrid {
            candidates: candidates.clone(),
            max_harmless_increase: self.max_harmless_increase,
        })
    }
}

/// Prompts, calibration and judging, shared by the compare and repair requests.
#[derive(Debug, Deserialize)]
pub struct StudyRequest {
    pub n_train: usize,
    pub n_val: usize,
    pub n_eval: usize,
    #[serde(default)]
    pub seed: u64,
    /// Built-in harmless prompts that calibrated recipes see.
    #[serde(default = "default_n_calib")]
    pub n_calib: usize,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

// The CLI's defaults (`refusal-lens compare --help`), but batches of 8 as in every tab run.
fn default_fallback_kl_max() -> f64 {
    defaults::FALLBACK_KL_MAX
}

fn default_max_harmless_increase() -> f64 {
    defaults::MAX_HARMLESS_INCREASE
}

fn default_coeff() -> f32 {
    defaults::ACTADD_COEFF
}

fn default_max_new_tokens() -> usize {
    defaults::JUDGED_TOKENS
}

impl StudyRequest {
    pub(crate) fn prompts(&self) -> Result<StudyPrompts, JsValue> {
        StudyPrompts::builtin(self.n_train, self.n_val, self.n_eval, self.seed).map_err(js_error)
    }

    pub(crate) fn eval_settings(&self) -> EvalSettings {
        EvalSettings {
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
        }
    }
}

impl Engine {
    /// The model's refusal tokens, found as the CLI does: from its family, else from 32 greedy
    /// completions of the training harmful prompts.
    pub(crate) async fn refusal_tokens(
        &self,
        harmful: &EncodedPrompts,
        batch_size: usize,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<RefusalTokens, JsValue> {
        RefusalTokens::for_model(
            self.llama(),
            self.text(),
            harmful,
            32,
            batch_size,
            on_progress,
        )
        .await
        .map_err(js_error)
    }
}

#[wasm_bindgen]
impl Engine {
    /// Runs METHOD §9 (request: JSON [`CompareRequest`]) on the loaded model and each recipe,
    /// calling `on_progress(stage, done, total)`; a `false` answer cancels. Resolves with the
    /// JSON of `compare.json`.
    pub async fn compare(&self, request: String, on_progress: Function) -> Result<String, JsValue> {
        let req: CompareRequest = serde_json::from_str(&request)
            .map_err(|e| js_error(format!("invalid request: {e}")))?;
        if req.compressed.is_empty() {
            return Err(js_error("choose at least one compression recipe"));
        }
        let study = &req.study;
        let sets = study.prompts()?;
        let split = sets.encoded_split(self.text()).map_err(js_error)?;
        let mut progress = js_progress(&on_progress);
        let tokens = self
            .refusal_tokens(&split.harmful, study.batch_size, &mut progress)
            .await?;
        let judge = sets
            .judge(self.text(), &tokens, study.eval_settings())
            .map_err(js_error)?;
        let validation = sets
            .validation_judge(self.text(), &tokens, study.eval_settings())
            .map_err(js_error)?;
        let find = FindSettings {
            selection: req
                .filters
                .settings(study.batch_size, req.score_deep_layers),
            positions: req.positions.clone(),
            fallback_kl_max: req.fallback_kl_max,
        };
        let base = self.llama();
        let base_found = find_direction(base, &split, &tokens, &find, &mut progress)
            .await
            .map_err(js_error)?;
        let baseline = judge
            .baseline(base, &mut progress)
            .await
            .map_err(js_error)?;
        let comparison = Comparison {
            base,
            base_found: &base_found,
            split: &split,
            judge: &judge,
            validation: &validation,
            find: &find,
            coeff: req.coeff,
            repair: req.aird.then(|| RepairSettings {
                alpha: req.repair.alpha,
                lambda: req.repair.lambda,
                alpha_grid: req.repair.grid(),
            }),
        };
        let mut compressed = Vec::with_capacity(req.compressed.len());
        for recipe in &req.compressed {
            let (model, summary) = self
                .compressed_model(recipe, study.n_calib, study.batch_size, &mut progress)
                .await
                .map_err(js_error)?;
            let measured = comparison
                .measure(recipe, &model, Some(summary), &mut progress)
                .await
                .map_err(js_error)?;
            compressed.push(measured);
        }
        let report: CompareReport<EngineInfo> = CompareReport {
            base: BaseReport {
                model: self.info().clone(),
                direction: Chosen::of(&base_found),
                baseline,
            },
            prompts: sets.uses.clone(),
            positions: base_found.candidates.positions.clone(),
            n_layers: base_found.candidates.n_layers,
            refusal_tokens: tokens.clone(),
            coeff: req.coeff,
            max_new_tokens: study.max_new_tokens,
            compressed,
        };
        serde_json::to_string(&report).map_err(js_error)
    }
}
