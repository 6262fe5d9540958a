//! Selecting one refusal direction among the candidates (METHOD §6, Arditi et al. 2024).

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use crate::model::{Hook, Llama, NoHook, TokenBatch};

use super::directions::{CandidateDirections, projections};
use super::score::{kl_from_base, refusal_score};
use super::{EncodedPrompts, Intervention, RefusalTokens};
use crate::pipeline::{OnProgress, PipelineError, Stage, read, report};

/// The filters of METHOD §6.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SelectionSettings {
    /// Candidates with `KL > kl_max` are dropped.
    pub kl_max: f64,
    /// Candidates at layers `>= floor(max_layer_fraction * L)` are dropped.
    pub max_layer_fraction: f64,
    /// Candidates with an induce score below this are dropped.
    pub induce_min: f64,
    pub batch_size: usize,
    /// Also score the candidates the layer limit drops (for the heatmaps); skipping them
    /// saves about a fifth of the selection time.
    #[serde(default = "score_every_layer")]
    pub score_deep_layers: bool,
}

impl SelectionSettings {
    /// `floor(max_layer_fraction * n_layers)`: candidates at this layer and deeper are dropped.
    pub fn layer_limit(&self, n_layers: usize) -> usize {
        (self.max_layer_fraction * n_layers as f64).floor() as usize
    }
}

fn score_every_layer() -> bool {
    true
}

impl SelectionSettings {
    /// The filters of METHOD §6 as the paper sets them.
    pub const DEFAULT: SelectionSettings = SelectionSettings {
        kl_max: 0.1,
        max_layer_fraction: 0.8,
        induce_min: 0.0,
        batch_size: 32,
        score_deep_layers: true,
    };
}

impl Default for SelectionSettings {
    fn default() -> Self {
        SelectionSettings::DEFAULT
    }
}

/// Why a candidate cannot be selected.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum DropReason {
    /// The layer is at or past `floor(max_layer_fraction * L)`.
    LayerTooDeep { limit: usize },
    /// Ablating it moves harmless next-token distributions too much.
    KlTooHigh { max: f64 },
    /// Adding it does not make harmless prompts refuse.
    InduceTooLow { min: f64 },
    /// A score is NaN or infinite.
    NotFinite,
}

/// The scores of one candidate on the validation prompts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CandidateScore {
    pub layer: usize,
    /// Counted from the end: -1 is the last token.
    pub position: isize,
    /// `|r^l_i|`.
    pub norm: f64,
    /// Mean refusal score on harmful prompts with the direction ablated (lower is better).
    #[serde(deserialize_with = "nan_from_null")]
    pub bypass: f64,
    /// Mean refusal score on harmless prompts with the direction added at its layer.
    #[serde(deserialize_with = "nan_from_null")]
    pub induce: f64,
    /// Mean KL(base || ablated) on harmless prompts at the last position.
    #[serde(deserialize_with = "nan_from_null")]
    pub kl: f64,
    /// How far apart the projections of harmful and harmless validation prompts on the
    /// direction are: difference of means over the pooled standard deviation.
    #[serde(deserialize_with = "nan_from_null")]
    pub separation: f64,
    /// Why it was not eligible; empty when it was.
    pub dropped: Vec<DropReason>,
}

/// JSON has no NaN: serde_json writes it as `null`, which reads back as NaN here.
pub(crate) fn nan_from_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`nan_from_null`] for every element of a list.
pub(crate) fn nans_from_nulls<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<f64>, D::Error> {
    let v = <Vec<Option<f64>> as serde::Deserialize>::deserialize(d)?;
    Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
}

/// The full selection table and the choice.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    pub settings: SelectionSettings,
    pub refusal_tokens: RefusalTokens,
    pub n_layers: usize,
    pub positions: Vec<isize>,
    pub n_val_harmful: usize,
    pub n_val_harmless: usize,
    /// Mean refusal score with no intervention.
    pub baseline_harmful_score: f64,
    pub baseline_harmless_score: f64,
    /// Every candidate, layer by layer, positions in order within a layer.
    pub candidates: Vec<CandidateScore>,
    /// Index into `candidates` of the selected direction; `None` when every candidate was
    /// dropped.
    pub selected: Option<usize>,
}

/// Who chose a direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChosenBy {
    Selection,
    User,
    /// No candidate passed METHOD §6: the lowest bypass score among candidates above the
    /// layer limit whose KL stays under a relaxed bound.
    Fallback,
}

impl Selection {
    pub fn selected(&self) -> Option<&CandidateScore> {
        self.selected.map(|i| &self.candidates[i])
    }

    /// The index of the direction to use: the user's `(layer, position)` when given, else
    /// METHOD §6's pick (`None` when no candidate passed).
    ///
    /// # Errors
    ///
    /// A layer or position the selection does not have.
    pub fn choose(
        &self,
        user: Option<(usize, isize)>,
    ) -> Result<Option<(usize, ChosenBy)>, PipelineError> {
        let Some((layer, position)) = user else {
            return Ok(self.selected.map(|i| (i, ChosenBy::Selection)));
        };
        if layer >= self.n_layers {
            return Err(PipelineError::LayerOutOfRange {
                layer,
                n_layers: self.n_layers,
            });
        }
        self.candidates
            .iter()
            .position(|c| c.layer == layer && c.position == position)
            .map(|i| Some((i, ChosenBy::User)))
            .ok_or_else(|| PipelineError::PositionOutOfRange {
                position,
                available: self.positions.clone(),
            })
    }
}

/// Mean refusal score of `prompts` under `hook`.
async fn mean_score<H: Hook + ?Sized>(
    model: &Llama,
    prompts: &EncodedPrompts,
    refusal: &RefusalTokens,
    batch_size: usize,
    hook: &mut H,
) -> Result<f64, PipelineError> {
    let device = model.device();
    let mut total = 0.0;
    for batch in prompts.batches(batch_size) {
        let tokens = TokenBatch::left_padded(&prompts.select(&batch), 0, &device);
        total += score_sum(refusal, model.last_logits(&tokens, hook)).await?;
    }
    Ok(total / prompts.len() as f64)
}

/// The sum over rows of the refusal score of last-position `logits` (`[batch, vocab]`).
async fn score_sum(refusal: &RefusalTokens, logits: Tensor<2>) -> Result<f64, PipelineError> {
    let lp = read(refusal.log_probs(logits)).await?;
    Ok(lp.chunks_exact(refusal.ids.len()).map(refusal_score).sum())
}

/// Scores every candidate on validation prompts and selects one (METHOD §6).
///
/// # Errors
///
/// [`PipelineError::NoPrompts`] for an empty set, readback errors, [`PipelineError::Cancelled`].
pub async fn select(
    model: &Llama,
    candidates: &CandidateDirections,
    val_harmful: &EncodedPrompts,
    val_harmless: &EncodedPrompts,
    refusal: &RefusalTokens,
    settings: SelectionSettings,
    on_progress: &mut OnProgress<'_>,
) -> Result<Selection, PipelineError> {
    if val_harmful.is_empty() {
        return Err(PipelineError::NoPrompts("harmful validation"));
    }
    if val_harmless.is_empty() {
        return Err(PipelineError::NoPrompts("harmless validation"));
    }
    let device = model.device();
    let bs = settings.batch_size.max(1);

    // The unmodified model: refusal scores, harmless next-token distributions, projections.
    let n_baseline = val_harmful.len() + val_harmless.len();
    report(on_progress, Stage::Baseline, 0, n_baseline)?;
    let baseline_harmful_score = mean_score(model, val_harmful, refusal, bs, &mut NoHook).await?;
    // One forward pass per harmless batch gives both its baseline score and the distribution
    // every candidate's KL is measured against.
    let mut harmless_batches: Vec<(TokenBatch, Tensor<2>)> = Vec::new();
    let mut harmless_total = 0.0;
    for batch in val_harmless.batches(bs) {
        let tokens = TokenBatch::left_padded(&val_harmless.select(&batch), 0, &device);
        let logits = model.last_logits(&tokens, &mut NoHook);
        harmless_total += score_sum(refusal, logits.clone()).await?;
        harmless_batches.push((tokens, log_softmax(logits, 1)));
    }
    let baseline_harmless_score = harmless_total / val_harmless.len() as f64;
    let mut quiet = |_| std::ops::ControlFlow::Continue(());
    let proj_harmful = projections(
        model,
        candidates,
        val_harmful,
        bs,
        Stage::Baseline,
        &mut quiet,
    )
    .await?;
    report(on_progress, Stage::Baseline, val_harmful.len(), n_baseline)?;
    let proj_harmless = projections(
        model,
        candidates,
        val_harmless,
        bs,
        Stage::Baseline,
        &mut quiet,
    )
    .await?;
    report(on_progress, Stage::Baseline, n_baseline, n_baseline)?;

    let n_positions = candidates.positions.len();
    let total = candidates.n_layers * n_positions;
    let layer_limit = settings.layer_limit(candidates.n_layers);
    let mut scores = Vec::with_capacity(total);
    report(on_progress, Stage::Select, 0, total)?;
    for layer in 0..candidates.n_layers {
        for (p, &position) in candidates.positions.iter().enumerate() {
            let direction = candidates.direction(layer, p);
            let norm = candidates.norm(layer, p);
            let scored = layer < layer_limit || settings.score_deep_layers;
            let (bypass, induce, kl) = if scored && norm > 0.0 && norm.is_finite() {
                let mut ablate = Intervention::Ablate {
                    direction: direction.clone(),
                }
                .hook(model)?;
                let bypass = mean_score(model, val_harmful, refusal, bs, &mut ablate).await?;
                let mut kl_sum = 0.0;
                for (tokens, base) in &harmless_batches {
                    let logits = model.last_logits(tokens, &mut ablate);
                    kl_sum += read(kl_from_base(base.clone(), logits))
                        .await?
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>();
                }
                let mut add = Intervention::ActAdd {
                    layer,
                    vector: direction,
                    coeff: 1.0,
                }
                .hook(model)?;
                let induce = mean_score(model, val_harmless, refusal, bs, &mut add).await?;
                (bypass, induce, kl_sum / val_harmless.len() as f64)
            } else {
                // Not scored, or layer 0 at a position every prompt shares (the direction is
                // exactly zero).
                (f64::NAN, f64::NAN, f64::NAN)
            };
            let separation = separation(
                &proj_harmful,
                &proj_harmless,
                layer * n_positions + p,
                candidates.n_layers * n_positions,
            );
            let mut dropped = Vec::new();
            if layer >= layer_limit {
                dropped.push(DropReason::LayerTooDeep { limit: layer_limit });
            }
            if kl > settings.kl_max {
                dropped.push(DropReason::KlTooHigh {
                    max: settings.kl_max,
                });
            }
            if induce < settings.induce_min {
                dropped.push(DropReason::InduceTooLow {
                    min: settings.induce_min,
                });
            }
            if scored && !(bypass.is_finite() && induce.is_finite() && kl.is_finite()) {
                dropped.push(DropReason::NotFinite);
            }
            scores.push(CandidateScore {
                layer,
                position,
                norm,
                bypass,
                induce,
                kl,
                separation,
                dropped,
            });
            report(on_progress, Stage::Select, scores.len(), total)?;
        }
    }
    let selected = scores
        .iter()
        .enumerate()
        .filter(|(_, c)| c.dropped.is_empty())
        .min_by(|a, b| a.1.bypass.total_cmp(&b.1.bypass))
        .map(|(i, _)| i);
    Ok(Selection {
        settings,
        refusal_tokens: refusal.clone(),
        n_layers: candidates.n_layers,
        positions: candidates.positions.clone(),
        n_val_harmful: val_harmful.len(),
        n_val_harmless: val_harmless.len(),
        baseline_harmful_score,
        baseline_harmless_score,
        candidates: scores,
        selected,
    })
}

/// `(mean_h - mean_s) / sqrt((var_h + var_s) / 2)` of the projections at `index` of each
/// prompt's `[layer][position]` block of `stride` values.
fn separation(harmful: &[f64], harmless: &[f64], index: usize, stride: usize) -> f64 {
    let stats = |values: &[f64]| {
        let xs: Vec<f64> = values.iter().skip(index).step_by(stride).copied().collect();
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        (mean, var)
    };
    let (mh, vh) = stats(harmful);
    let (ms, vs) = stats(harmless);
    let pooled = ((vh + vs) / 2.0).sqrt();
    if pooled > 0.0 {
        (mh - ms) / pooled
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separation_is_the_mean_gap_over_the_pooled_deviation() {
        // Two prompts per set, stride 2 (layer x position blocks of 2), index 1.
        let harmful = [0.0, 3.0, 0.0, 5.0];
        let harmless = [9.0, -1.0, 9.0, 1.0];
        // means 4 and 0, variances 1 and 1 → 4.
        assert!((separation(&harmful, &harmless, 1, 2) - 4.0).abs() < 1e-12);
        assert_eq!(separation(&harmful, &harmless, 0, 2), 0.0);
    }

    #[test]
    fn the_user_choice_wins_and_must_exist() {
        let score = |layer, position| CandidateScore {
            layer,
            position,
            norm: 1.0,
            bypass: 0.0,
            induce: 0.0,
            kl: 0.0,
            separation: 0.0,
            dropped: vec![],
        };
        let selection = Selection {
            settings: SelectionSettings::default(),
            refusal_tokens: RefusalTokens {
                ids: vec![1],
                tokens: vec!["I".into()],
                origin: super::super::refusal_tokens::TokenOrigin::User,
            },
            n_layers: 2,
            positions: vec![-2, -1],
            n_val_harmful: 1,
            n_val_harmless: 1,
            baseline_harmful_score: 0.0,
            baseline_harmless_score: 0.0,
            candidates: vec![score(0, -2), score(0, -1), score(1, -2), score(1, -1)],
            selected: Some(1),
        };
        assert_eq!(
            selection.choose(None).unwrap(),
            Some((1, ChosenBy::Selection))
        );
        assert_eq!(
            selection.choose(Some((1, -2))).unwrap(),
            Some((2, ChosenBy::User))
        );
        assert!(matches!(
            selection.choose(Some((2, -1))),
            Err(PipelineError::LayerOutOfRange { layer: 2, .. })
        ));
        assert!(matches!(
            selection.choose(Some((0, -3))),
            Err(PipelineError::PositionOutOfRange { position: -3, .. })
        ));
        let none = Selection {
            selected: None,
            ..selection
        };
        assert_eq!(none.choose(None).unwrap(), None);
    }
}
