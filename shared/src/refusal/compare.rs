//! Base vs compressed (METHOD §9): the comparison of a compressed model C with its base B
//! (each model's own direction, the cosines and decomposition of [`super::cosine`],
//! necessity, sufficiency, transfer, and AIRD's repair) that `runs::compare` runs, and the
//! report it makes.

use web_time::Instant;

use crate::compress::Summary;
use crate::model::Llama;

use super::aird::{AirdFit, AirdSettings, Densification, Repaired};
use super::cosine::{Decomposition, cosine_map, decompose, split_half_cosines};
use super::evaluate::{Baseline, Judge, Judged, RateChanges};
use super::find::{FindSettings, FoundDirection, find_direction};
use super::plots::{ColorScale, heatmap};
use super::prompts::PromptUses;
use super::repair_study::{AlphaGrid, AlphaSearch, AlphaSelection, repair_with_alpha};
use super::seeds::CompareSeeds;
use super::select::{CandidateScore, ChosenBy, nan_from_null, nans_from_nulls};
use super::{EncodedSplit, Intervention, RefusalTokens};
use crate::pipeline::{OnProgress, PipelineError};

/// The cosine heatmap with the base's selected cell outlined.
pub fn cosine_figure(
    n_layers: usize,
    positions: &[isize],
    cosines: &[f64],
    base_selected: Option<usize>,
) -> String {
    heatmap(
        "cos(base direction, compressed direction) per layer and position",
        n_layers,
        positions,
        cosines,
        &vec![false; cosines.len()],
        base_selected,
        ColorScale::Diverging,
    )
}

/// A model's chosen direction, as a comparison reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Chosen {
    pub layer: usize,
    pub position: isize,
    pub chosen_by: ChosenBy,
    pub scores: CandidateScore,
    /// Candidates that passed METHOD §6.
    pub eligible: usize,
    pub baseline_harmful_score: f64,
    pub baseline_harmless_score: f64,
    pub seconds: f64,
}

impl Chosen {
    pub fn of(found: &FoundDirection) -> Chosen {
        Chosen {
            layer: found.chosen.layer,
            position: found.chosen.position,
            chosen_by: found.chosen_by,
            scores: found.chosen.clone(),
            eligible: found
                .selection
                .candidates
                .iter()
                .filter(|c| c.dropped.is_empty())
                .count(),
            baseline_harmful_score: found.selection.baseline_harmful_score,
            baseline_harmless_score: found.selection.baseline_harmless_score,
            seconds: found.seconds,
        }
    }
}

/// AIRD on one compressed model, repaired toward the base's selected direction.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AirdOutcome {
    pub fit: AirdFit,
    /// How α was chosen, when it was searched on the validation prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_selection: Option<AlphaSelection>,
    pub densification: Densification,
    pub asr: Judged,
    pub harmless_refusal: Judged,
    /// From the compressed model's rates to the repaired one's.
    pub vs_compressed: RateChanges,
    /// KL from the compressed model to the repaired one on harmless prompts.
    pub kl_to_compressed: f64,
    /// KL from the base model to the repaired one on harmless prompts.
    pub kl_to_base: f64,
    pub seconds: f64,
}

/// One compressed model against the base.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompressedReport {
    pub spec: String,
    pub compression: Option<Summary>,
    pub direction: Chosen,
    /// cos(r_B, r_C) per layer and position (layer-major), NaN (null) where undefined.
    #[serde(deserialize_with = "nans_from_nulls")]
    pub cosines: Vec<f64>,
    /// At the base's selected layer and position.
    #[serde(deserialize_with = "nan_from_null")]
    pub cosine_at_base_selected: f64,
    /// r_C (C's selected direction) along r^_B.
    pub decomposition: Decomposition,
    pub baseline: Baseline,
    /// From the base model's rates to this one's, with no intervention.
    pub vs_base: RateChanges,
    /// ASR of C with its own direction ablated.
    pub asr_ablate_own: Judged,
    /// Harmless refusal of C with its own direction added at its layer.
    pub harmless_refusal_add_own: Judged,
    /// ASR of C with the base direction ablated.
    pub asr_ablate_base: Judged,
    /// Harmless refusal of C with the base direction added at the base's layer.
    pub harmless_refusal_add_base: Judged,
    pub aird: Option<AirdOutcome>,
    pub seconds: f64,
}

/// The base model's side of a comparison.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaseReport<M> {
    /// What identifies the model (a fingerprint natively, the engine's description in a tab).
    pub model: M,
    pub direction: Chosen,
    pub baseline: Baseline,
    /// What the cosines of the compressed models are to be read against; none with fewer
    /// than two training prompts in a set.
    pub noise_floor: Option<NoiseFloor>,
}

/// The base's split-half cosines ([`split_half_cosines`]): how far two draws of the same
/// model's prompts already move its direction. A compressed model's cosine at or above it is
/// as close to the base's as the base is to itself at half the prompts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoiseFloor {
    /// Per layer and position (layer-major), NaN (null) where undefined.
    #[serde(deserialize_with = "nans_from_nulls")]
    pub cosines: Vec<f64>,
    #[serde(deserialize_with = "nan_from_null")]
    pub at_base_selected: f64,
    /// Training prompts of each set in each half.
    pub n_harmful_per_half: usize,
    pub n_harmless_per_half: usize,
}

impl NoiseFloor {
    /// The base's split-half cosines on the training prompts of `split`.
    ///
    /// # Errors
    ///
    /// Those of [`split_half_cosines`].
    pub async fn of(
        base: &Llama,
        split: &EncodedSplit,
        base_found: &FoundDirection,
        batch_size: usize,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<Option<NoiseFloor>, PipelineError> {
        let Some(half) = split_half_cosines(base, split, batch_size, on_progress).await? else {
            return Ok(None);
        };
        let chosen = &base_found.chosen;
        Ok(Some(NoiseFloor {
            at_base_selected: half.at(chosen.layer, chosen.position).unwrap_or(f64::NAN),
            cosines: half.cosines,
            n_harmful_per_half: half.n_harmful,
            n_harmless_per_half: half.n_harmless,
        }))
    }
}

/// `compare.json`: the base and every compressed model, with the same prompts and positions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompareReport<M> {
    pub base: BaseReport<M>,
    pub prompts: PromptUses,
    pub positions: Vec<isize>,
    pub n_layers: usize,
    pub refusal_tokens: RefusalTokens,
    pub coeff: f32,
    pub max_new_tokens: usize,
    pub compressed: Vec<CompressedReport>,
    /// With several seeds: the report above is the first seed's, and this every seed's
    /// headline numbers and their spread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<CompareSeeds>,
}

/// AIRD's scale and penalty in a comparison (it is fitted at the base's selected layer).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RepairSettings {
    pub alpha: f32,
    /// A fixed ridge penalty; `None` chooses it on the validation prompts.
    pub lambda: Option<f64>,
    /// When set, α is chosen on the validation prompts instead.
    #[serde(default)]
    pub alpha_grid: Option<AlphaGrid>,
}

/// A comparison under way: the base model with its direction, the prompts, and how every
/// compressed model is measured against it (METHOD §9, and §10 when `repair` is set).
pub struct Comparison<'a> {
    pub base: &'a Llama,
    pub base_found: &'a FoundDirection,
    /// The base's rates with no intervention, which every compressed model's are compared to.
    pub base_baseline: &'a Baseline,
    /// Training and validation prompts: each compressed model's direction is found on the
    /// same ones as the base's, and AIRD is fitted on them.
    pub split: &'a EncodedSplit,
    pub judge: &'a Judge<'a>,
    /// Judges the validation prompts (AIRD's α search).
    pub validation: &'a Judge<'a>,
    pub find: &'a FindSettings,
    /// Activation-addition coefficient for sufficiency and transfer.
    pub coeff: f32,
    pub repair: Option<RepairSettings>,
}

impl Comparison<'_> {
    /// Finds `compressed`'s own direction and measures it against the base's: cosine map,
    /// decomposition, necessity (its direction ablated), sufficiency (added), transfer (the
    /// base's direction ablated and added), and AIRD's repair.
    ///
    /// # Errors
    ///
    /// Pipeline errors, [`PipelineError::NoCandidate`] and cancellation.
    pub async fn measure(
        &self,
        spec: &str,
        compressed: &Llama,
        compression: Option<Summary>,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<CompressedReport, PipelineError> {
        let started = Instant::now();
        let judge = self.judge;
        let base_found = self.base_found;
        let found =
            find_direction(compressed, self.split, judge.tokens, self.find, on_progress).await?;
        let cosines = cosine_map(&base_found.candidates, &found.candidates)?;
        let (decomposition, _) = decompose(&found.vector, &base_found.vector)?;
        let baseline = judge.baseline(compressed, on_progress).await?;
        let ablate = |v: &[f32]| Intervention::Ablate {
            direction: v.to_vec(),
        };
        let add = |layer: usize, v: &[f32]| Intervention::ActAdd {
            layer,
            vector: v.to_vec(),
            coeff: self.coeff,
        };
        let asr_ablate_own = judge
            .harmful(compressed, &ablate(&found.vector), on_progress)
            .await?;
        let harmless_refusal_add_own = judge
            .harmless(
                compressed,
                &add(found.chosen.layer, &found.vector),
                on_progress,
            )
            .await?;
        let asr_ablate_base = judge
            .harmful(compressed, &ablate(&base_found.vector), on_progress)
            .await?;
        let harmless_refusal_add_base = judge
            .harmless(
                compressed,
                &add(base_found.chosen.layer, &base_found.vector),
                on_progress,
            )
            .await?;
        let aird = match &self.repair {
            Some(r) => Some(self.repaired(compressed, &baseline, r, on_progress).await?),
            None => None,
        };
        Ok(CompressedReport {
            spec: spec.to_owned(),
            compression,
            direction: Chosen::of(&found),
            cosine_at_base_selected: cosines[base_found.cell()],
            cosines,
            decomposition,
            vs_base: self.base_baseline.change_to(&baseline),
            baseline,
            asr_ablate_own,
            harmless_refusal_add_own,
            asr_ablate_base,
            harmless_refusal_add_base,
            aird,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// AIRD fitted on the training prompts at the base's layer, and the repaired model judged.
    async fn repaired(
        &self,
        compressed: &Llama,
        compressed_baseline: &Baseline,
        settings: &RepairSettings,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<AirdOutcome, PipelineError> {
        let started = Instant::now();
        let aird = AirdSettings {
            layer: self.base_found.chosen.layer,
            alpha: settings.alpha,
            lambda: settings.lambda,
            batch_size: self.judge.settings.batch_size,
        };
        let search = settings.alpha_grid.as_ref().map(|grid| AlphaSearch {
            grid,
            validation: self.validation,
        });
        let (
            Repaired {
                model: repaired,
                fit,
                densification,
                ..
            },
            alpha_selection,
        ) = repair_with_alpha(
            self.base,
            compressed,
            &self.base_found.vector,
            aird,
            self.split,
            search,
            on_progress,
        )
        .await?;
        let none = Intervention::None;
        let judge = self.judge;
        let after = Baseline {
            asr: judge.harmful(&repaired, &none, on_progress).await?,
            harmless_refusal: judge.harmless(&repaired, &none, on_progress).await?,
        };
        Ok(AirdOutcome {
            vs_compressed: compressed_baseline.change_to(&after),
            asr: after.asr,
            harmless_refusal: after.harmless_refusal,
            kl_to_compressed: judge.kl(compressed, &repaired, &none, on_progress).await?,
            kl_to_base: judge.kl(self.base, &repaired, &none, on_progress).await?,
            fit,
            alpha_selection,
            densification,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
