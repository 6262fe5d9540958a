//! The Directions page in the browser: METHOD §3-6 on the built-in prompt sets, run by the
//! loaded [`Engine`]: refusal tokens, candidate directions at every layer and post-instruction
//! position, their scores and the chosen one. The report has the fields of the CLI's
//! `selection.json` and `direction.json`, so the app draws both alike.

use js_sys::Function;
use refusal_core::refusal::directions::extract;
use refusal_core::refusal::prompts::{BuiltinSet, Prompt, PromptUse, builtin_split};
use refusal_core::refusal::select::{CandidateScore, ChosenBy, select};
use refusal_core::refusal::{
    EncodedPrompts, PipelineError, RefusalTokens, Selection, SelectionSettings,
};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::engine::{Engine, EngineInfo, default_batch_size};
use crate::{js_error, js_progress};

/// One directions run (JSON): the browser's `refusal-lens directions` on the built-in sets.
#[derive(Debug, Deserialize)]
pub struct DirectionsRequest {
    pub n_train: usize,
    pub n_val: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `[layer, position]` chosen by the user instead of METHOD §6.
    #[serde(default)]
    pub select: Option<(usize, isize)>,
    /// Score only these post-instruction positions (all of them when absent): fewer
    /// candidates, a proportionally shorter run in a tab.
    #[serde(default)]
    pub positions: Option<Vec<isize>>,
    #[serde(flatten)]
    pub filters: SelectionFilters,
}

/// METHOD §6's filters in a request; absent ones take the CLI's defaults.
#[derive(Debug, Deserialize)]
pub struct SelectionFilters {
    #[serde(default)]
    pub kl_max: Option<f64>,
    #[serde(default)]
    pub max_layer_fraction: Option<f64>,
    #[serde(default)]
    pub induce_min: Option<f64>,
}

impl SelectionFilters {
    pub(crate) fn settings(&self, batch_size: usize, score_deep_layers: bool) -> SelectionSettings {
        let defaults = SelectionSettings::default();
        SelectionSettings {
            kl_max: self.kl_max.unwrap_or(defaults.kl_max),
            max_layer_fraction: self
                .max_layer_fraction
                .unwrap_or(defaults.max_layer_fraction),
            induce_min: self.induce_min.unwrap_or(defaults.induce_min),
            batch_size,
            score_deep_layers,
        }
    }
}

/// `selection.json`.
#[derive(Debug, Serialize)]
pub struct SelectionReport {
    pub model: EngineInfo,
    pub seed: u64,
    pub harmful: PromptUse,
    pub harmless: PromptUse,
    pub post_instruction_positions: Vec<isize>,
    pub refusal_tokens: RefusalTokens,
    pub selection: Selection,
    pub chosen: Option<CandidateScore>,
    pub chosen_by: Option<ChosenBy>,
    pub seconds: Timings,
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub refusal_tokens: f64,
    pub extract: f64,
    pub select: f64,
}

/// `direction.json`, with the vector that `direction.safetensors` holds.
#[derive(Debug, Serialize)]
pub struct ChosenDirection {
    pub layer: usize,
    pub position: isize,
    pub norm: f64,
    pub model: EngineInfo,
    pub refusal_tokens: RefusalTokens,
    pub scores: CandidateScore,
    pub chosen_by: ChosenBy,
    pub vector: Vec<f32>,
}

/// What [`Engine::directions`] returns.
#[derive(Debug, Serialize)]
pub struct DirectionsReport {
    pub selection: SelectionReport,
    pub direction: Option<ChosenDirection>,
}

fn seconds_since(start: f64) -> f64 {
    (js_sys::Date::now() - start) / 1000.0
}

#[wasm_bindgen]
impl Engine {
    /// Runs METHOD §3-6 (request: JSON [`DirectionsRequest`]), calling
    /// `on_progress(stage, done, total)`; a `false` answer cancels (rejecting with
    /// "cancelled"). Resolves with JSON [`DirectionsReport`].
    pub async fn directions(
        &self,
        request: String,
        on_progress: Function,
    ) -> Result<String, JsValue> {
        let req: DirectionsRequest = serde_json::from_str(&request)
            .map_err(|e| js_error(format!("invalid request: {e}")))?;
        let (llama, text) = (self.llama(), self.text());
        let split = |set| builtin_split(set, req.n_train, req.n_val, req.seed).map_err(js_error);
        let (harmful, val_harmful, harmful_use) = split(BuiltinSet::Harmful)?;
        let (harmless, val_harmless, harmless_use) = split(BuiltinSet::Harmless)?;
        let encode = |p: &[Prompt]| EncodedPrompts::new(text, p, None).map_err(js_error);
        let (harmful, harmless) = (encode(&harmful)?, encode(&harmless)?);
        let (val_harmful, val_harmless) = (encode(&val_harmful)?, encode(&val_harmless)?);
        let mut progress = js_progress(&on_progress);
        let failed = |e: PipelineError| js_error(e);

        let started = js_sys::Date::now();
        let tokens =
            RefusalTokens::for_model(llama, text, &harmful, 32, req.batch_size, &mut progress)
                .await
                .map_err(failed)?;
        let t_tokens = seconds_since(started);
        let started = js_sys::Date::now();
        let candidates = extract(llama, &harmful, &harmless, req.batch_size, &mut progress)
            .await
            .map_err(failed)?;
        let t_extract = seconds_since(started);
        let settings = req.filters.settings(req.batch_size, true);
        let subset = match &req.positions {
            Some(positions) => Some(candidates.with_positions(positions).map_err(failed)?),
            None => None,
        };
        let scored = subset.as_ref().unwrap_or(&candidates);
        let started = js_sys::Date::now();
        let selection = select(
            llama,
            scored,
            &val_harmful,
            &val_harmless,
            &tokens,
            settings,
            &mut progress,
        )
        .await
        .map_err(failed)?;
        let t_select = seconds_since(started);

        let (chosen, chosen_by) = selection.choose(req.select).map_err(failed)?.unzip();
        let chosen_score = chosen.map(|i| selection.candidates[i].clone());
        let direction = match (&chosen_score, chosen_by) {
            (Some(score), Some(by)) => {
                let p = candidates.position_index(score.position).map_err(failed)?;
                Some(ChosenDirection {
                    layer: score.layer,
                    position: score.position,
                    norm: score.norm,
                    model: self.info().clone(),
                    refusal_tokens: tokens.clone(),
                    scores: score.clone(),
                    chosen_by: by,
                    vector: candidates.direction(score.layer, p),
                })
            }
            _ => None,
        };
        let report = DirectionsReport {
            selection: SelectionReport {
                model: self.info().clone(),
                seed: req.seed,
                harmful: harmful_use,
                harmless: harmless_use,
                post_instruction_positions: candidates.positions.clone(),
                refusal_tokens: tokens,
                selection,
                chosen: chosen_score,
                chosen_by,
                seconds: Timings {
                    refusal_tokens: t_tokens,
                    extract: t_extract,
                    select: t_select,
                },
            },
            direction,
        };
        serde_json::to_string(&report).map_err(js_error)
    }
}
