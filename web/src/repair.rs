//! The Repair page in the browser: the loaded model compressed in the tab by a recipe,
//! repaired by AIRD toward the base direction and judged against the two baselines of
//! METHOD §10, on the built-in prompt sets. The core's [`repair_study`] does the work, as for
//! `refusal-lens aird`, and the report is its `.aird.json`, so the app draws both alike.

use js_sys::Function;
use refusal_core::refusal::aird::AirdSettings;
use refusal_core::refusal::repair_study::{
    AirdReport, AlphaSearch, BaseDirection, RepairStudy, repair_study,
};
use serde::Deserialize;
use wasm_bindgen::prelude::*;

use crate::compare::{AirdRequest, StudyRequest};
use crate::engine::{DirectionInput, Engine, EngineInfo};
use crate::{js_error, js_progress};

/// One repair (JSON): the browser's `refusal-lens aird` on the built-in sets.
#[derive(Debug, Deserialize)]
pub struct RepairRequest {
    /// The recipe compressed in the tab (`wanda:0.5`).
    pub compressed: String,
    #[serde(flatten)]
    pub study: StudyRequest,
    /// The base direction (from the Directions page); without it, the difference in means of
    /// the training prompts at `layer` and `position`.
    #[serde(default)]
    pub direction: Option<DirectionInput>,
    /// `l*`, the layer whose input is corrected (default: the direction's).
    #[serde(default)]
    pub layer: Option<usize>,
    /// Where C's own direction is read for the drift (and the base direction without one).
    #[serde(default = "default_position")]
    pub position: isize,
    #[serde(flatten)]
    pub repair: AirdRequest,
}

fn default_position() -> isize {
    -1
}

#[wasm_bindgen]
impl Engine {
    /// Runs METHOD §10's repair study (request: JSON [`RepairRequest`]), calling
    /// `on_progress(stage, done, total)`; a `false` answer cancels. Resolves with the JSON of
    /// `.aird.json`.
    pub async fn repair(&self, request: String, on_progress: Function) -> Result<String, JsValue> {
        let started = js_sys::Date::now();
        let req: RepairRequest = serde_json::from_str(&request)
            .map_err(|e| js_error(format!("invalid request: {e}")))?;
        let study = &req.study;
        let sets = study.prompts()?;
        let split = sets.encoded_split(self.text()).map_err(js_error)?;
        let base = self.llama();
        let mut progress = js_progress(&on_progress);
        let (vector, base_direction) = match &req.direction {
            Some(d) => {
                self.check_direction(d).map_err(js_error)?;
                let norm = d.vector.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
                let described = BaseDirection {
                    source: "the direction given".into(),
                    layer: req.layer.unwrap_or(d.layer),
                    position: d.position,
                    norm: norm.sqrt(),
                };
                (d.vector.clone(), described)
            }
            None => {
                let Some(layer) = req.layer else {
                    return Err(js_error(
                        "give the base direction (from the Directions page) or the layer l*",
                    ));
                };
                BaseDirection::difference_in_means(
                    base,
                    &split,
                    layer,
                    req.position,
                    study.batch_size,
                    &mut progress,
                )
                .await
                .map_err(js_error)?
            }
        };
        let tokens = self
            .refusal_tokens(&split.harmful, study.batch_size, &mut progress)
            .await?;
        let judge = sets
            .judge(self.text(), &tokens, study.eval_settings())
            .map_err(js_error)?;
        let validation = sets
            .validation_judge(self.text(), &tokens, study.eval_settings())
            .map_err(js_error)?;
        let grid = req.repair.grid();
        let (compressed, summary) = self
            .compressed_model(
                &req.compressed,
                study.n_calib,
                study.batch_size,
                &mut progress,
            )
            .await
            .map_err(js_error)?;
        let settings = AirdSettings {
            layer: base_direction.layer,
            alpha: req.repair.alpha,
            lambda: req.repair.lambda,
            batch_size: study.batch_size,
        };
        let RepairStudy {
            fit,
            alpha_selection,
            densification,
            drift,
            variants,
            ..
        } = repair_study(
            base,
            &compressed,
            &vector,
            req.position,
            settings,
            &split,
            &judge,
            None,
            grid.as_ref().map(|grid| AlphaSearch {
                grid,
                validation: &validation,
            }),
            &mut progress,
        )
        .await
        .map_err(js_error)?;
        let report: AirdReport<EngineInfo> = AirdReport {
            base: self.info().clone(),
            compressed: req.compressed.clone(),
            compression: Some(summary),
            prompts: sets.uses.clone(),
            base_direction,
            fit,
            alpha_selection,
            densification,
            drift,
            variants,
            output: None,
            seconds: (js_sys::Date::now() - started) / 1000.0,
        };
        serde_json::to_string(&report).map_err(js_error)
    }
}
