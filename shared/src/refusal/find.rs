//! A model's refusal direction end to end (METHOD §3-6): candidates at every layer and
//! post-instruction position, their scores, and the chosen one, with a fallback for models
//! where no candidate passes METHOD §6 (small or heavily compressed ones), so that a
//! comparison always has a direction to compare.

use web_time::Instant;

use super::directions::extract;
use super::select::{CandidateScore, ChosenBy, select};
use super::{CandidateDirections, EncodedSplit, RefusalTokens, Selection, SelectionSettings};
use crate::pipeline::{OnProgress, PipelineError};

/// How a model's direction is found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FindSettings {
    pub selection: SelectionSettings,
    /// Only these positions are scored (all post-instruction positions when `None`).
    pub positions: Option<Vec<isize>>,
    /// The relaxed KL bound of the fallback when no candidate passes METHOD §6.
    pub fallback_kl_max: f64,
}

/// A model's candidate directions, their selection table and the chosen one.
pub struct FoundDirection {
    /// Every layer and position (a cosine map between two models uses them all).
    pub candidates: CandidateDirections,
    pub selection: Selection,
    pub chosen: CandidateScore,
    pub chosen_by: ChosenBy,
    pub vector: Vec<f32>,
    pub seconds: f64,
}

impl FoundDirection {
    /// Index of the chosen cell in the full layer x position grid (layer-major).
    pub fn cell(&self) -> usize {
        let p = self
            .candidates
            .position_index(self.chosen.position)
            .unwrap_or(0);
        self.chosen.layer * self.candidates.positions.len() + p
    }
}

/// METHOD §6's pick, else the fallback: the lowest bypass score among the candidates below
/// the layer limit whose KL is at most `fallback_kl_max`.
///
/// # Errors
///
/// [`PipelineError::NoCandidate`] when even the fallback finds none.
pub fn choose_or_fall_back(
    selection: &Selection,
    fallback_kl_max: f64,
) -> Result<(usize, ChosenBy), PipelineError> {
    if let Some(i) = selection.selected {
        return Ok((i, ChosenBy::Selection));
    }
    let limit = selection.settings.layer_limit(selection.n_layers);
    selection
        .candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c.layer < limit && c.bypass.is_finite() && c.kl.is_finite() && c.kl <= fallback_kl_max
        })
        .min_by(|a, b| a.1.bypass.total_cmp(&b.1.bypass))
        .map(|(i, _)| (i, ChosenBy::Fallback))
        .ok_or(PipelineError::NoCandidate {
            kl_max: fallback_kl_max,
            layer_limit: limit,
        })
}

/// Extracts candidates from the training prompts, scores them on the validation prompts and
/// chooses one.
///
/// # Errors
///
/// Pipeline errors, cancellation, and [`PipelineError::NoCandidate`].
pub async fn find_direction(
    model: &crate::model::Llama,
    sets: &EncodedSplit,
    tokens: &RefusalTokens,
    settings: &FindSettings,
    on_progress: &mut OnProgress<'_>,
) -> Result<FoundDirection, PipelineError> {
    let started = Instant::now();
    let bs = settings.selection.batch_size;
    let candidates = extract(model, &sets.harmful, &sets.harmless, bs, on_progress).await?;
    let subset = match &settings.positions {
        Some(p) => Some(candidates.with_positions(p)?),
        None => None,
    };
    let scored = subset.as_ref().unwrap_or(&candidates);
    let selection = select(
        model,
        scored,
        &sets.val_harmful,
        &sets.val_harmless,
        tokens,
        settings.selection,
        on_progress,
    )
    .await?;
    let (index, chosen_by) = choose_or_fall_back(&selection, settings.fallback_kl_max)?;
    let chosen = selection.candidates[index].clone();
    let vector = scored.direction(chosen.layer, scored.position_index(chosen.position)?);
    Ok(FoundDirection {
        candidates,
        selection,
        chosen,
        chosen_by,
        vector,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::refusal_tokens::TokenOrigin;

    fn selection(candidates: &[(usize, f64, f64)], selected: Option<usize>) -> Selection {
        Selection {
            settings: SelectionSettings::default(),
            refusal_tokens: RefusalTokens {
                ids: vec![1],
                tokens: vec!["I".into()],
                origin: TokenOrigin::User,
            },
            n_layers: 5,
            positions: vec![-1],
            n_val_harmful: 1,
            n_val_harmless: 1,
            baseline_harmful_score: 0.0,
            baseline_harmless_score: 0.0,
            candidates: candidates
                .iter()
                .map(|&(layer, bypass, kl)| CandidateScore {
                    layer,
                    position: -1,
                    norm: 1.0,
                    bypass,
                    induce: 0.0,
                    kl,
                    separation: 0.0,
                    dropped: vec![],
                })
                .collect(),
            selected,
        }
    }

    #[test]
    fn the_fallback_takes_the_lowest_bypass_under_the_kl_bound_and_layer_limit() {
        // Layer limit floor(0.8 * 5) = 4.
        let s = selection(
            &[
                (0, 0.5, 0.0),
                (1, -1.0, 0.5),
                (2, f64::NAN, 0.0),
                (3, 0.2, 0.1),
                (4, -3.0, 0.0),
            ],
            None,
        );
        assert_eq!(
            choose_or_fall_back(&s, 0.3).unwrap(),
            (3, ChosenBy::Fallback)
        );
        assert_eq!(
            choose_or_fall_back(&s, 0.05).unwrap(),
            (0, ChosenBy::Fallback)
        );
        assert!(matches!(
            choose_or_fall_back(&s, -1.0),
            Err(PipelineError::NoCandidate { layer_limit: 4, .. })
        ));
        let chosen = selection(&[(0, 0.5, 0.0), (1, 0.1, 0.0)], Some(0));
        assert_eq!(
            choose_or_fall_back(&chosen, 0.3).unwrap(),
            (0, ChosenBy::Selection)
        );
    }
}
