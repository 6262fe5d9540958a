//! How two models' refusal directions relate: the cosine of every candidate pair, and a
//! compressed model's direction decomposed along its base's (METHOD §9). The comparison and
//! the repair study both use it.

use super::EncodedSplit;
use super::directions::{CandidateDirections, extract};
use super::intervention::check_width;
use crate::model::Llama;
use crate::pipeline::{OnProgress, PipelineError};

/// `cos(r_B^{l,i}, r_C^{l,i})` for every layer and position (layer-major); NaN where either
/// direction is zero (layer 0 at positions every prompt shares).
///
/// # Errors
///
/// [`PipelineError::WidthMismatch`] when the two sets do not have the same layers, positions
/// and width.
pub fn cosine_map(
    base: &CandidateDirections,
    other: &CandidateDirections,
) -> Result<Vec<f64>, PipelineError> {
    if base.n_layers != other.n_layers
        || base.positions != other.positions
        || base.d_model != other.d_model
    {
        return Err(PipelineError::WidthMismatch {
            expected: base.n_layers * base.positions.len() * base.d_model,
            got: other.n_layers * other.positions.len() * other.d_model,
        });
    }
    let mut out = Vec::with_capacity(base.n_layers * base.positions.len());
    for l in 0..base.n_layers {
        for p in 0..base.positions.len() {
            out.push(cosine(&base.direction(l, p), &other.direction(l, p)));
        }
    }
    Ok(out)
}

/// The split-half noise floor of a model's directions: how far two draws of its prompts
/// already move them.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitHalf {
    /// [`cosine_map`] between the two halves' candidates.
    pub cosines: Vec<f64>,
    pub positions: Vec<isize>,
    /// Training prompts of each kind in each half (the smaller half).
    pub n_harmful: usize,
    pub n_harmless: usize,
}

impl SplitHalf {
    /// The cosine at `layer` and `position`, if the grid has that cell.
    pub fn at(&self, layer: usize, position: isize) -> Option<f64> {
        let p = self.positions.iter().position(|&q| q == position)?;
        self.cosines.get(layer * self.positions.len() + p).copied()
    }
}

/// The candidates extracted from one half of `split`'s training prompts of each kind against
/// those from the other half ([`EncodedPrompts::halves`](super::EncodedPrompts::halves)).
/// `None` when a set has fewer than two prompts.
///
/// # Errors
///
/// Those of [`extract`].
pub async fn split_half_cosines(
    model: &Llama,
    split: &EncodedSplit,
    batch_size: usize,
    on_progress: &mut OnProgress<'_>,
) -> Result<Option<SplitHalf>, PipelineError> {
    if split.harmful.len() < 2 || split.harmless.len() < 2 {
        return Ok(None);
    }
    let (harmful_a, harmful_b) = split.harmful.halves();
    let (harmless_a, harmless_b) = split.harmless.halves();
    let a = extract(model, &harmful_a, &harmless_a, batch_size, on_progress).await?;
    let b = extract(model, &harmful_b, &harmless_b, batch_size, on_progress).await?;
    Ok(Some(SplitHalf {
        cosines: cosine_map(&a, &b)?,
        positions: a.positions,
        n_harmful: harmful_b.len(),
        n_harmless: harmless_b.len(),
    }))
}

/// Cosine similarity in f64; NaN when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        f64::NAN
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// `r_C = (r_C . r^_B) r^_B + r_C_perp`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decomposition {
    pub cosine: f64,
    /// `r_C . r^_B`.
    pub along: f64,
    /// `|r_C_perp|`.
    pub perp_norm: f64,
    /// `|r_C|`.
    pub norm: f64,
    /// `(r_C . r^_B)^2 / |r_C|^2`: the share of `r_C`'s squared norm along the base direction.
    pub share_along: f64,
}

/// Decomposes `r_c` along `r_b` and returns the parts with `r_C_perp`.
///
/// # Errors
///
/// [`PipelineError::WidthMismatch`] and [`PipelineError::DegenerateDirection`] for a zero
/// `r_b`.
pub fn decompose(r_c: &[f32], r_b: &[f32]) -> Result<(Decomposition, Vec<f32>), PipelineError> {
    check_width(r_c, r_b.len())?;
    let unit = super::intervention::unit(r_b)?;
    let along: f64 = r_c
        .iter()
        .zip(&unit)
        .map(|(c, u)| f64::from(*c) * f64::from(*u))
        .sum();
    let perp: Vec<f32> = r_c
        .iter()
        .zip(&unit)
        .map(|(c, u)| (f64::from(*c) - along * f64::from(*u)) as f32)
        .collect();
    let norm = r_c
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt();
    let perp_norm = perp
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt();
    let share_along = if norm > 0.0 {
        (along / norm).powi(2)
    } else {
        f64::NAN
    };
    Ok((
        Decomposition {
            cosine: cosine(r_c, r_b),
            along,
            perp_norm,
            norm,
            share_along,
        },
        perp,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposition_splits_the_norm() {
        let r_b = [2.0, 0.0, 0.0];
        let r_c = [3.0, 4.0, 0.0];
        let (d, perp) = decompose(&r_c, &r_b).unwrap();
        assert_eq!(d.along, 3.0);
        assert_eq!(perp, [0.0, 4.0, 0.0]);
        assert_eq!((d.norm, d.perp_norm), (5.0, 4.0));
        assert!((d.cosine - 0.6).abs() < 1e-12);
        assert!((d.share_along - 0.36).abs() < 1e-12);
        assert!(decompose(&r_c, &[0.0; 3]).is_err());
        assert!(cosine(&[0.0, 0.0], &[1.0, 0.0]).is_nan());
    }
}
