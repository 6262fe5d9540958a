//! `aird` (METHOD §10): a compressed model repaired by re-inducing the base model's refusal
//! direction, against the two simple baselines (the base direction added at `l*`, the drift
//! of its own direction orthogonalized away), each judged like the base and the compressed
//! model. The report is `.aird.json`; the host saves the repaired model.

use serde::{Deserialize, Serialize};
use web_time::Instant;

use super::compress::{check_spec, compressed_model};
use super::study::{AlphaRequest, JudgeModel, StudyRequest};
use super::{RunError, RunIo};
use crate::load::TextAssets;
use crate::model::Llama;
use crate::refusal::aird::AirdSettings;
use crate::refusal::intervals::percent;
use crate::refusal::model_judge::ModelJudge;
use crate::refusal::repair_study::{
    AirdReport, AlphaSearch, BaseDirection, PerplexityText, repair_study,
};
use crate::refusal::seeds::AirdSeeds;

/// One repair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AirdRequest {
    /// The compressed model: a recipe compressed here (`wanda:0.5`), or a model the host
    /// opens.
    pub compressed: String,
    /// The base model's direction; without it, the difference in means of the training
    /// prompts at `layer` and `position`.
    pub direction: Option<DirectionSource>,
    /// `l*`, the layer whose input is corrected (default: the direction's).
    pub layer: Option<usize>,
    /// Position of the base direction (and of C's own direction for the orthogonalization
    /// baseline), counted from the end.
    pub position: isize,
    #[serde(flatten)]
    pub alpha: AlphaRequest,
    #[serde(flatten)]
    pub study: StudyRequest,
    /// Perplexity of every variant on this text (named; the host reads it).
    pub cross_entropy: Option<String>,
    /// Tokens per cross-entropy window.
    pub window: usize,
}

impl AirdRequest {
    pub const WINDOW: usize = 256;

    /// # Errors
    ///
    /// [`RunError::Invalid`] naming the first field out of bounds.
    pub fn validate(&self) -> Result<(), RunError> {
        if self.compressed.trim().is_empty() {
            return Err(RunError::invalid(
                "compressed",
                "give the compressed model or a recipe",
            ));
        }
        if self.direction.is_none() && self.layer.is_none() {
            return Err(RunError::invalid(
                "layer",
                "give the base direction (from `directions`) or the layer l*",
            ));
        }
        if self.position >= 0 {
            return Err(RunError::invalid(
                "position",
                "must be negative (counted from the end; -1 is the last token)",
            ));
        }
        if self.window == 0 {
            return Err(RunError::invalid("window", "must be at least 1"));
        }
        self.alpha.validate()?;
        self.study.validate()
    }
}

impl Default for AirdRequest {
    fn default() -> AirdRequest {
        AirdRequest {
            compressed: String::new(),
            direction: None,
            layer: None,
            position: -1,
            alpha: AlphaRequest::default(),
            study: StudyRequest::default(),
            cross_entropy: None,
            window: AirdRequest::WINDOW,
        }
    }
}

/// A direction in a request: stored and named (on the command line, a `direction.json`
/// path), or given whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DirectionSource {
    Named(String),
    Given(GivenDirection),
}

/// A refusal direction and where it was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GivenDirection {
    pub vector: Vec<f32>,
    pub layer: usize,
    pub position: isize,
}

impl GivenDirection {
    /// # Errors
    ///
    /// [`RunError::Input`] for a direction that does not fit `model`.
    pub fn check(&self, model: &Llama) -> Result<(), RunError> {
        let c = model.config();
        if self.vector.len() != c.d_model {
            return Err(RunError::Input(format!(
                "the direction has {} dimensions but this model has width {}",
                self.vector.len(),
                c.d_model
            )));
        }
        if self.layer >= c.n_layers {
            return Err(RunError::Input(format!(
                "the direction's layer {} does not exist (the model has {} layers)",
                self.layer, c.n_layers
            )));
        }
        Ok(())
    }
}

/// A finished repair.
pub struct AirdRun<M> {
    pub repaired: Llama,
    /// `.aird.json`, without the path the host writes the model to.
    pub report: AirdReport<M>,
}

/// Repairs the compressed model of the request toward `base`'s direction (`base` described
/// in the report by `model`) and judges every variant, under each of its seeds; the repaired
/// model is the first seed's.
///
/// # Errors
///
/// [`RunError::Invalid`] for a request out of bounds, inputs the host cannot read or open, a
/// direction that does not fit, cancellation and the pipeline's errors.
pub async fn run<M: Clone>(
    request: &AirdRequest,
    base: &Llama,
    text: &TextAssets,
    model: M,
    io: &mut dyn RunIo,
) -> Result<AirdRun<M>, RunError> {
    let started = Instant::now();
    request.validate()?;
    check_spec(&request.compressed, io)?;
    // Opened once: every seed's study is judged by the same model.
    let judge_model = request.study.judge.open_judge(io)?;
    let model_judge = judge_model.as_ref().map(JudgeModel::judge).transpose()?;
    let seeds = request.study.seeds();
    let mut first = None;
    let mut reports = Vec::with_capacity(seeds.len());
    for &seed in &seeds {
        if seeds.len() > 1 {
            io.note(&format!("seed {seed}"));
        }
        let one = AirdRequest {
            study: request.study.with_seed(seed),
            ..request.clone()
        };
        let run = run_seed(&one, base, text, model.clone(), model_judge.as_ref(), io).await?;
        reports.push(run.report);
        first.get_or_insert(run.repaired);
    }
    let spread = (seeds.len() > 1).then(|| AirdSeeds::of(&seeds, &reports));
    let mut report = reports.swap_remove(0);
    report.seeds = spread;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(AirdRun {
        repaired: first.ok_or_else(|| RunError::Input("no seed to run".into()))?,
        report,
    })
}

/// [`run`] under the request's one seed, judged with `model_judge` when the request's judge
/// is a model.
async fn run_seed<M>(
    request: &AirdRequest,
    base: &Llama,
    text: &TextAssets,
    model: M,
    model_judge: Option<&ModelJudge<'_>>,
    io: &mut dyn RunIo,
) -> Result<AirdRun<M>, RunError> {
    let started = Instant::now();
    let study = &request.study;
    let sets = study.prompts(io)?;
    let split = sets.encoded_split(text)?;
    let batch_size = study.judge.batch_size;
    let (vector, base_direction) = match &request.direction {
        Some(source) => {
            let (given, source) = match source {
                DirectionSource::Named(name) => (io.read_direction(name)?, name.clone()),
                DirectionSource::Given(d) => (d.clone(), "the direction given".to_owned()),
            };
            given.check(base)?;
            let norm = given
                .vector
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>();
            let described = BaseDirection {
                source,
                layer: request.layer.unwrap_or(given.layer),
                position: given.position,
                norm: norm.sqrt(),
            };
            (given.vector, described)
        }
        None => {
            let layer = request.layer.unwrap_or_default();
            BaseDirection::difference_in_means(
                base,
                &split,
                layer,
                request.position,
                batch_size,
                &mut |p| io.progress(p),
            )
            .await
            .map_err(|e| {
                RunError::Input(format!("layer {layer} position {}: {e}", request.position))
            })?
        }
    };
    let layer = base_direction.layer;
    let tokens = study.refusal_tokens(base, text, &split.harmful, io).await?;
    let c = compressed_model(
        &request.compressed,
        base,
        text,
        &study.calibration,
        batch_size,
        true,
        io,
    )
    .await?;
    let perplexity_text = match &request.cross_entropy {
        Some(name) => Some(io.read_text(name)?),
        None => None,
    };
    let judging = study.judge.judging(&tokens, model_judge)?;
    let judge = sets.judge(text, judging, study.judge.settings())?;
    let validation = sets.validation_judge(text, judging, study.judge.settings())?;
    let grid = request.alpha.grid();
    io.note(&format!(
        "repairing with AIRD at layer {layer} and judging five variants"
    ));
    let settings = AirdSettings {
        layer,
        alpha: request.alpha.alpha,
        lambda: request.alpha.lambda,
        batch_size,
    };
    let study = repair_study(
        base,
        &c.llama,
        &vector,
        request.position,
        settings,
        &split,
        &judge,
        perplexity_text.as_deref().map(|text| PerplexityText {
            text,
            window: request.window,
        }),
        grid.as_ref().map(|grid| AlphaSearch {
            grid,
            validation: &validation,
        }),
        &mut |p| io.progress(p),
    )
    .await?;
    let (fit, drift) = (&study.fit, &study.drift);
    io.note(&format!(
        "AIRD at layer {layer}: lambda {:.3e}, train MSE {:.4} -> {:.4}, |u| {:.4}; C's direction has cosine {:.3} with the base's (the base's split-half cosine there: {})",
        fit.lambda,
        fit.train.mse_before,
        fit.train.mse_after,
        fit.u_norm,
        drift.cosine,
        study
            .drift_noise_floor
            .map_or("-".into(), |f| format!("{f:.3}")),
    ));
    if let Some(sel) = &study.alpha_selection {
        let mut lines = format!(
            "alpha chosen on the validation prompts: {} (compressed model's harmless refusal {:.1}%, bound +{:.1} points)",
            sel.alpha,
            100.0 * sel.compressed_harmless_refusal,
            100.0 * sel.grid.max_harmless_increase
        );
        for a in &sel.scores {
            lines.push_str(&format!(
                "\n  alpha {:<5} ASR {}  harmless refusal {}{}",
                a.alpha,
                percent(a.asr, a.asr_interval),
                percent(a.harmless_refusal, a.harmless_refusal_interval),
                if a.allowed { "" } else { "  (over the bound)" }
            ));
        }
        io.note(&lines);
    }
    Ok(AirdRun {
        repaired: study.repaired,
        report: AirdReport {
            base: model,
            compressed: request.compressed.clone(),
            compression: c.compression,
            prompts: sets.uses,
            base_direction,
            fit: study.fit,
            alpha_selection: study.alpha_selection,
            densification: study.densification,
            drift: study.drift,
            drift_noise_floor: study.drift_noise_floor,
            variants: study.variants,
            output: None,
            seeds: None,
            seconds: started.elapsed().as_secs_f64(),
        },
    })
}
