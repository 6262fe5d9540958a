//! AIRD against its two baselines (METHOD §10): a compressed model repaired by AIRD, and the
//! same model with the base direction added at `l*`, or orthogonalized against the part of its
//! own direction that drifted away from the base's, each judged like the base and the
//! compressed model themselves. AIRD's scale can also be chosen on the validation prompts:
//! the α that answers the fewest harmful prompts without refusing more harmless ones than the
//! compressed model does, by more than a bound.

use crate::compress::Summary;
use crate::model::Llama;

use super::aird::{
    AirdFit, AirdSettings, Densification, Repaired, apply, compressed_direction, repair,
};
use super::cosine::{Decomposition, decompose, split_half_cosines};
use super::directions::extract;
use super::evaluate::{CrossEntropy, Judge, Judged, RateChanges, cross_entropy};
use super::intervals::Interval;
use super::orthogonalize::orthogonalize;
use super::prompts::PromptUses;
use super::seeds::AirdSeeds;
use super::{EncodedSplit, Intervention};
use crate::pipeline::{OnProgress, PipelineError};

/// The variants, in the order a report lists them.
pub const VARIANTS: [&str; 5] = [
    "base",
    "compressed",
    "compressed+aird",
    "compressed+add_base_direction",
    "compressed+orthogonalize_drift",
];

/// One variant's numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariantOutcome {
    /// One of [`VARIANTS`].
    pub name: String,
    pub asr: Judged,
    pub harmless_refusal: Judged,
    /// From the compressed model's rates to this variant's (none for the compressed model).
    pub vs_compressed: Option<RateChanges>,
    /// KL from the compressed model on the harmless evaluation prompts.
    pub kl_to_compressed: f64,
    pub cross_entropy: Option<CrossEntropy>,
}

/// Where the base direction came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaseDirection {
    pub source: String,
    pub layer: usize,
    pub position: isize,
    pub norm: f64,
}

impl BaseDirection {
    /// The base direction as the difference in means of the training prompts of `split` at
    /// `layer` and `position`, when no direction file is given.
    ///
    /// # Errors
    ///
    /// [`PipelineError::LayerOutOfRange`], [`PipelineError::PositionOutOfRange`], and those of
    /// [`extract`].
    pub async fn difference_in_means(
        model: &Llama,
        split: &EncodedSplit,
        layer: usize,
        position: isize,
        batch_size: usize,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<(Vec<f32>, BaseDirection), PipelineError> {
        let candidates = extract(
            model,
            &split.harmful,
            &split.harmless,
            batch_size,
            on_progress,
        )
        .await?;
        if layer >= candidates.n_layers {
            return Err(PipelineError::LayerOutOfRange {
                layer,
                n_layers: candidates.n_layers,
            });
        }
        let p = candidates.position_index(position)?;
        let described = BaseDirection {
            source: "difference in means of the training prompts".into(),
            layer,
            position,
            norm: candidates.norm(layer, p),
        };
        Ok((candidates.direction(layer, p), described))
    }
}

/// A text whose perplexity every variant is measured on.
#[derive(Debug, Clone, Copy)]
pub struct PerplexityText<'a> {
    pub text: &'a str,
    /// Tokens per window.
    pub window: usize,
}

/// The repaired model and every variant's numbers.
pub struct RepairStudy {
    pub repaired: Llama,
    pub fit: AirdFit,
    /// How α was chosen, when it was searched.
    pub alpha_selection: Option<AlphaSelection>,
    pub densification: Densification,
    /// C's own direction at (`l*`, position) along the base direction.
    pub drift: Decomposition,
    /// The base's split-half cosine at (`l*`, position): what `drift.cosine` is read against.
    pub drift_noise_floor: Option<f64>,
    pub variants: Vec<VariantOutcome>,
}

/// `<model>.aird.json`: the repair study's report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AirdReport<M> {
    /// What identifies the base model.
    pub base: M,
    /// The compressed model or recipe, as given.
    pub compressed: String,
    pub compression: Option<Summary>,
    pub prompts: PromptUses,
    pub base_direction: BaseDirection,
    pub fit: AirdFit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_selection: Option<AlphaSelection>,
    pub densification: Densification,
    pub drift: Decomposition,
    /// The base's split-half cosine at the drift's layer and position; none with fewer than
    /// two training prompts in a set.
    pub drift_noise_floor: Option<f64>,
    pub variants: Vec<VariantOutcome>,
    /// Where the repaired model was written (none in a browser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// With several seeds: the report above (and the repaired model) is the first seed's,
    /// and this every seed's headline numbers and their spread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<AirdSeeds>,
    pub seconds: f64,
}

/// The scales α tried on the validation prompts, and how much more harmless refusal than the
/// compressed model's is acceptable.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlphaGrid {
    pub candidates: Vec<f32>,
    /// The largest rise in harmless refusal rate allowed (0.05: five points).
    pub max_harmless_increase: f64,
}

/// One α on the validation prompts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlphaScore {
    pub alpha: f32,
    pub asr: f64,
    pub asr_interval: Interval,
    pub harmless_refusal: f64,
    pub harmless_refusal_interval: Interval,
    /// Within the harmless-refusal bound.
    pub allowed: bool,
}

/// The α chosen on the validation prompts, and every α tried.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlphaSelection {
    pub alpha: f32,
    pub grid: AlphaGrid,
    /// The compressed model's harmless refusal on the validation prompts (the bound's base).
    pub compressed_harmless_refusal: f64,
    pub scores: Vec<AlphaScore>,
}

/// Chooses α for the fitted update on the validation prompts judged by `validation`: the
/// lowest ASR among the α whose harmless refusal stays within the bound (the smallest such α
/// on ties); when none does, the one with the least harmless refusal. Returns the choice, and
/// `compressed` repaired with it and the density that repair added.
///
/// # Errors
///
/// Pipeline errors and cancellation; [`PipelineError::NoAlpha`] for an empty grid.
pub async fn choose_alpha(
    compressed: &Llama,
    base_direction: &[f32],
    fit: &AirdFit,
    grid: &AlphaGrid,
    validation: &Judge<'_>,
    on_progress: &mut OnProgress<'_>,
) -> Result<(AlphaSelection, Llama, Densification), PipelineError> {
    let none = Intervention::None;
    let reference = validation
        .harmless(compressed, &none, on_progress)
        .await?
        .rate;
    let mut candidates = grid.candidates.clone();
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    let mut scores = Vec::with_capacity(candidates.len());
    let mut models = Vec::with_capacity(candidates.len());
    for alpha in candidates {
        let scaled = AirdFit {
            settings: AirdSettings {
                alpha,
                ..fit.settings.clone()
            },
            ..fit.clone()
        };
        let (model, density) = apply(compressed.clone(), base_direction, &scaled).await?;
        let harmless = validation.harmless(&model, &none, on_progress).await?;
        let harmful = validation.harmful(&model, &none, on_progress).await?;
        scores.push(AlphaScore {
            alpha,
            asr: harmful.rate,
            asr_interval: harmful.interval,
            harmless_refusal: harmless.rate,
            harmless_refusal_interval: harmless.interval,
            allowed: harmless.rate <= reference + grid.max_harmless_increase + 1e-9,
        });
        models.push((model, density));
    }
    let best = best_alpha(&scores).ok_or(PipelineError::NoAlpha)?;
    let (chosen, (model, density)) = (scores[best], models.swap_remove(best));
    Ok((
        AlphaSelection {
            alpha: chosen.alpha,
            grid: grid.clone(),
            compressed_harmless_refusal: reference,
            scores,
        },
        model,
        density,
    ))
}

/// The index of the best α: the lowest ASR among those within the bound, else the least
/// harmless refusal; the first (smallest α, in a sorted grid) on ties.
fn best_alpha(scores: &[AlphaScore]) -> Option<usize> {
    let any_allowed = scores.iter().any(|s| s.allowed);
    let key = |s: &AlphaScore| {
        if any_allowed {
            s.asr
        } else {
            s.harmless_refusal
        }
    };
    // `min_by` keeps the first of equal minima.
    (0..scores.len())
        .filter(|&i| scores[i].allowed || !any_allowed)
        .min_by(|&a, &b| key(&scores[a]).total_cmp(&key(&scores[b])))
}

/// AIRD fitted on `split`, at the scale `settings` gives or chosen on the validation prompts
/// when `search` is set.
///
/// # Errors
///
/// Those of [`repair`] and [`choose_alpha`].
pub async fn repair_with_alpha(
    base: &Llama,
    compressed: &Llama,
    base_direction: &[f32],
    settings: AirdSettings,
    split: &EncodedSplit,
    search: Option<AlphaSearch<'_>>,
    on_progress: &mut OnProgress<'_>,
) -> Result<(Repaired, Option<AlphaSelection>), PipelineError> {
    let mut repaired = repair(
        base,
        compressed.clone(),
        base_direction,
        settings,
        split,
        on_progress,
    )
    .await?;
    let Some(search) = search else {
        return Ok((repaired, None));
    };
    let (selection, model, densification) = choose_alpha(
        compressed,
        base_direction,
        &repaired.fit,
        search.grid,
        search.validation,
        on_progress,
    )
    .await?;
    repaired.fit.settings.alpha = selection.alpha;
    repaired.model = model;
    repaired.densification = densification;
    Ok((repaired, Some(selection)))
}

/// α searched on the validation prompts.
#[derive(Clone, Copy)]
pub struct AlphaSearch<'a> {
    pub grid: &'a AlphaGrid,
    /// Judges the validation prompts.
    pub validation: &'a Judge<'a>,
}

/// Repairs `compressed` by AIRD toward `base_direction` (fitted on `split`) and judges the
/// five [`VARIANTS`]. `position` is where C's own direction is read for the drift.
///
/// # Errors
///
/// Pipeline errors and cancellation.
#[allow(clippy::too_many_arguments)]
pub async fn repair_study(
    base: &Llama,
    compressed: &Llama,
    base_direction: &[f32],
    position: isize,
    settings: AirdSettings,
    split: &EncodedSplit,
    judge: &Judge<'_>,
    perplexity: Option<PerplexityText<'_>>,
    search: Option<AlphaSearch<'_>>,
    on_progress: &mut OnProgress<'_>,
) -> Result<RepairStudy, PipelineError> {
    let (layer, batch_size) = (settings.layer, settings.batch_size);
    let (
        Repaired {
            model: repaired,
            fit,
            densification,
            harmful,
            harmless,
        },
        alpha_selection,
    ) = repair_with_alpha(
        base,
        compressed,
        base_direction,
        settings,
        split,
        search,
        on_progress,
    )
    .await?;
    let own = compressed_direction(&harmful, &harmless, position, base.config().d_model)?;
    let (drift, drifted) = decompose(&own, base_direction)?;
    let orthogonalized = orthogonalize(compressed.clone(), &drifted)?;
    let add_base = Intervention::ActAdd {
        layer,
        vector: base_direction.to_vec(),
        coeff: 1.0,
    };
    let none = Intervention::None;
    let models: [(&Llama, &Intervention); 5] = [
        (base, &none),
        (compressed, &none),
        (&repaired, &none),
        (compressed, &add_base),
        (&orthogonalized, &none),
    ];
    let mut variants = Vec::with_capacity(models.len());
    for (name, (model, intervention)) in VARIANTS.into_iter().zip(models) {
        let ce = match perplexity {
            Some(p) => Some(
                cross_entropy(
                    model,
                    &judge.text.tokenizer,
                    p.text,
                    intervention,
                    p.window,
                    on_progress,
                )
                .await?,
            ),
            None => None,
        };
        variants.push(VariantOutcome {
            name: name.to_owned(),
            asr: judge.harmful(model, intervention, on_progress).await?,
            harmless_refusal: judge.harmless(model, intervention, on_progress).await?,
            vs_compressed: None,
            kl_to_compressed: judge
                .kl(compressed, model, intervention, on_progress)
                .await?,
            cross_entropy: ce,
        });
    }
    let compressed_rates = (&variants[1].asr, &variants[1].harmless_refusal);
    let changes: Vec<Option<RateChanges>> = variants
        .iter()
        .map(|v| {
            (v.name != VARIANTS[1])
                .then(|| RateChanges::between(compressed_rates, (&v.asr, &v.harmless_refusal)))
        })
        .collect();
    for (v, change) in variants.iter_mut().zip(changes) {
        v.vs_compressed = change;
    }
    let drift_noise_floor = split_half_cosines(base, split, batch_size, on_progress)
        .await?
        .and_then(|half| half.at(layer, position));
    Ok(RepairStudy {
        repaired,
        fit,
        alpha_selection,
        densification,
        drift,
        drift_noise_floor,
        variants,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(alpha: f32, asr: f64, harmless_refusal: f64, allowed: bool) -> AlphaScore {
        let unknown = Interval {
            low: 0.0,
            high: 1.0,
        };
        AlphaScore {
            alpha,
            asr,
            asr_interval: unknown,
            harmless_refusal,
            harmless_refusal_interval: unknown,
            allowed,
        }
    }

    #[test]
    fn the_best_alpha_has_the_lowest_asr_within_the_bound() {
        let scores = [
            score(1.0, 0.75, 0.09, true),
            score(2.0, 0.56, 0.09, true),
            score(4.0, 0.40, 0.25, false),
        ];
        assert_eq!(best_alpha(&scores), Some(1));
        // Ties go to the smaller alpha.
        let tied = [score(1.0, 0.5, 0.0, true), score(2.0, 0.5, 0.0, true)];
        assert_eq!(best_alpha(&tied), Some(0));
        // None within the bound: the least harmless refusal.
        let over = [score(1.0, 0.2, 0.3, false), score(2.0, 0.1, 0.2, false)];
        assert_eq!(best_alpha(&over), Some(1));
        assert_eq!(best_alpha(&[]), None);
    }
}
