//! Candidate refusal directions (METHOD §3): the difference between the mean residual stream
//! on harmful and on harmless prompts, for every layer and post-instruction position, with
//! sums accumulated in f64.

use burn::tensor::{Tensor, TensorData};

use crate::model::{Llama, TokenBatch};

use super::EncodedPrompts;
use crate::pipeline::{OnProgress, PipelineError, Stage, read, report};

/// Mean `resid_pre` activations on both prompt sets, for every layer and position.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateDirections {
    pub n_layers: usize,
    /// The post-instruction positions, counted from the end (`[-n, ..., -1]`).
    pub positions: Vec<isize>,
    pub d_model: usize,
    pub n_harmful: usize,
    pub n_harmless: usize,
    /// `mu^l_i`, laid out `[layer][position][d_model]`.
    pub harmful_mean: Vec<f64>,
    /// `nu^l_i`, laid out `[layer][position][d_model]`.
    pub harmless_mean: Vec<f64>,
}

impl CandidateDirections {
    fn offset(&self, layer: usize, position: usize) -> usize {
        (layer * self.positions.len() + position) * self.d_model
    }

    /// The index of `position` (e.g. `-1`) in [`CandidateDirections::positions`].
    ///
    /// # Errors
    ///
    /// [`PipelineError::PositionOutOfRange`] for a position that was not extracted.
    pub fn position_index(&self, position: isize) -> Result<usize, PipelineError> {
        self.positions
            .iter()
            .position(|&p| p == position)
            .ok_or_else(|| PipelineError::PositionOutOfRange {
                position,
                available: self.positions.clone(),
            })
    }

    /// `r^l_i = mu^l_i - nu^l_i` (not normalised), by position index.
    pub fn direction(&self, layer: usize, position: usize) -> Vec<f32> {
        let o = self.offset(layer, position);
        self.harmful_mean[o..o + self.d_model]
            .iter()
            .zip(&self.harmless_mean[o..o + self.d_model])
            .map(|(h, s)| (h - s) as f32)
            .collect()
    }

    /// `|r^l_i|`.
    pub fn norm(&self, layer: usize, position: usize) -> f64 {
        let o = self.offset(layer, position);
        self.harmful_mean[o..o + self.d_model]
            .iter()
            .zip(&self.harmless_mean[o..o + self.d_model])
            .map(|(h, s)| (h - s) * (h - s))
            .sum::<f64>()
            .sqrt()
    }

    /// The same candidates at a subset of the positions (in the order given).
    ///
    /// # Errors
    ///
    /// [`PipelineError::PositionOutOfRange`] for a position that was not extracted.
    pub fn with_positions(
        &self,
        positions: &[isize],
    ) -> Result<CandidateDirections, PipelineError> {
        let indices = positions
            .iter()
            .map(|&p| self.position_index(p))
            .collect::<Result<Vec<_>, _>>()?;
        let pick = |means: &[f64]| {
            let mut out = Vec::with_capacity(self.n_layers * indices.len() * self.d_model);
            for l in 0..self.n_layers {
                for &p in &indices {
                    let o = self.offset(l, p);
                    out.extend_from_slice(&means[o..o + self.d_model]);
                }
            }
            out
        };
        Ok(CandidateDirections {
            positions: positions.to_vec(),
            harmful_mean: pick(&self.harmful_mean),
            harmless_mean: pick(&self.harmless_mean),
            ..self.clone()
        })
    }

    /// Every direction, laid out `[layer][position][d_model]`.
    pub fn all_directions(&self) -> Vec<f32> {
        self.harmful_mean
            .iter()
            .zip(&self.harmless_mean)
            .map(|(h, s)| (h - s) as f32)
            .collect()
    }
}

/// Extracts the candidate directions, reading every layer in one forward pass per batch.
///
/// # Errors
///
/// [`PipelineError::NoPrompts`] for an empty set, readback errors, [`PipelineError::Cancelled`].
pub async fn extract(
    model: &Llama,
    harmful: &EncodedPrompts,
    harmless: &EncodedPrompts,
    batch_size: usize,
    on_progress: &mut OnProgress<'_>,
) -> Result<CandidateDirections, PipelineError> {
    if harmful.is_empty() {
        return Err(PipelineError::NoPrompts("harmful"));
    }
    if harmless.is_empty() {
        return Err(PipelineError::NoPrompts("harmless"));
    }
    let n_positions = harmful.post_instruction.min(harmless.post_instruction);
    let total = harmful.len() + harmless.len();
    let mut progress = |done: usize| report(on_progress, Stage::Extract, done, total);
    progress(0)?;
    let harmful_mean = mean_activations(model, harmful, n_positions, batch_size, &mut |n| {
        progress(n)
    })
    .await?;
    let harmless_mean = mean_activations(model, harmless, n_positions, batch_size, &mut |n| {
        progress(harmful.len() + n)
    })
    .await?;
    let config = model.config();
    Ok(CandidateDirections {
        n_layers: config.n_layers,
        positions: (1..=n_positions as isize).rev().map(|k| -k).collect(),
        d_model: config.d_model,
        n_harmful: harmful.len(),
        n_harmless: harmless.len(),
        harmful_mean,
        harmless_mean,
    })
}

/// `resid_pre` of every layer at the last `n_positions` positions of each prompt in a batch.
/// The last block runs no further than its input: its output is no layer's `resid_pre`, and
/// neither the final norm nor a cache is needed.
///
/// # Shapes
/// → `[n_layers, batch, n_positions, d_model]`
pub(crate) fn capture_batch(model: &Llama, ids: &[Vec<u32>], n_positions: usize) -> Tensor<4> {
    let n_layers = model.config().n_layers;
    let batch = TokenBatch::left_padded(ids, 0, &model.device());
    let (mut x, ctx) = model.embed(&batch);
    let [_, seq, _] = x.dims();
    let mut captured = Vec::with_capacity(n_layers);
    for block in &model.blocks {
        captured.push(x.clone().narrow(1, seq - n_positions, n_positions));
        if captured.len() == n_layers {
            break;
        }
        x = block.forward_prompt(x, &ctx);
    }
    Tensor::stack(captured, 0)
}

/// Mean activations `[layer][position][d_model]` over all prompts, summed in f64.
async fn mean_activations(
    model: &Llama,
    prompts: &EncodedPrompts,
    n_positions: usize,
    batch_size: usize,
    progress: &mut dyn FnMut(usize) -> Result<(), PipelineError>,
) -> Result<Vec<f64>, PipelineError> {
    let config = model.config();
    let (n_layers, d) = (config.n_layers, config.d_model);
    let mut sums = vec![0.0f64; n_layers * n_positions * d];
    let mut done = 0;
    for batch in prompts.batches(batch_size) {
        let values = read(capture_batch(model, &prompts.select(&batch), n_positions)).await?;
        // `values` is [layer][row][position][d]; sums is [layer][position][d].
        let per_layer = batch.len() * n_positions * d;
        for (layer, block) in values.chunks_exact(per_layer).enumerate() {
            let target = &mut sums[layer * n_positions * d..(layer + 1) * n_positions * d];
            for row in block.chunks_exact(n_positions * d) {
                for (s, &v) in target.iter_mut().zip(row) {
                    *s += v as f64;
                }
            }
        }
        done += batch.len();
        progress(done)?;
    }
    let n = prompts.len() as f64;
    Ok(sums.into_iter().map(|s| s / n).collect())
}

/// Projections `x^l_i . r^l_i / |r^l_i|` of every prompt onto the candidate at its own layer
/// and position, laid out `[prompt][layer][position]` in prompt order.
///
/// # Errors
///
/// Readback errors, [`PipelineError::Cancelled`].
pub async fn projections(
    model: &Llama,
    candidates: &CandidateDirections,
    prompts: &EncodedPrompts,
    batch_size: usize,
    stage: Stage,
    on_progress: &mut OnProgress<'_>,
) -> Result<Vec<f64>, PipelineError> {
    let (n_layers, n_positions, d) = (
        candidates.n_layers,
        candidates.positions.len(),
        candidates.d_model,
    );
    let mut units = candidates.all_directions();
    for unit in units.chunks_exact_mut(d) {
        let norm = unit.iter().map(|&v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            unit.iter_mut().for_each(|v| *v /= norm);
        }
    }
    let units: Tensor<4> = Tensor::from_data(
        TensorData::new(units, [n_layers, 1, n_positions, d]),
        &model.device(),
    );
    let per_prompt = n_layers * n_positions;
    let mut out = vec![0.0f64; prompts.len() * per_prompt];
    let mut done = 0;
    report(on_progress, stage, 0, prompts.len())?;
    for batch in prompts.batches(batch_size) {
        let x = capture_batch(model, &prompts.select(&batch), n_positions);
        let projected = read((x * units.clone()).sum_dim(3)).await?; // [layer][row][position]
        for (layer, block) in projected
            .chunks_exact(batch.len() * n_positions)
            .enumerate()
        {
            for (row, values) in block.chunks_exact(n_positions).enumerate() {
                let base = batch[row] * per_prompt + layer * n_positions;
                for (o, &v) in out[base..base + n_positions].iter_mut().zip(values) {
                    *o = v as f64;
                }
            }
        }
        done += batch.len();
        report(on_progress, stage, done, prompts.len())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Capture, HookPoint, KvCache, ModelConfig, read_f32};
    use crate::refusal::RefusalTokens;
    use crate::refusal::refusal_tokens::TokenOrigin;
    use crate::refusal::select::{SelectionSettings, select};
    use futures_lite::future::block_on;

    fn prompts(seed: u32, n: usize) -> EncodedPrompts {
        let ids = (0..n)
            .map(|i| {
                let len = 3 + (i * 7 + seed as usize) % 6;
                (0..len)
                    .map(|j| ((i * 31 + j * 17) as u32 + seed) % 60 + 1)
                    .collect()
            })
            .collect();
        EncodedPrompts {
            ids,
            post_instruction: 3,
        }
    }

    /// The batched, padded, f64-accumulated means equal the plain per-prompt computation.
    #[test]
    fn candidate_directions_are_the_difference_of_per_prompt_means() {
        let device = burn::tensor::Device::flex();
        let config = ModelConfig::tiny();
        let model = Llama::random(&config, 11, &device);
        let (harmful, harmless) = (prompts(1, 7), prompts(2, 5));
        let mut quiet = |_| std::ops::ControlFlow::Continue(());
        let got = block_on(extract(&model, &harmful, &harmless, 3, &mut quiet)).unwrap();
        assert_eq!(got.positions, [-3, -2, -1]);

        let mean = |set: &EncodedPrompts, layer: usize, k: usize| {
            let mut sum = vec![0.0f64; config.d_model];
            for ids in &set.ids {
                let mut capture = Capture::new(vec![(layer, HookPoint::ResidPre)], vec![k]);
                let batch = TokenBatch::left_padded(std::slice::from_ref(ids), 0, &device);
                model.hidden(&batch, &mut KvCache::new(), &mut capture);
                let x = read_f32(capture.get(layer, HookPoint::ResidPre).unwrap().clone());
                sum.iter_mut().zip(x).for_each(|(s, v)| *s += v as f64);
            }
            sum.into_iter()
                .map(|s| s / set.len() as f64)
                .collect::<Vec<_>>()
        };
        for layer in 0..config.n_layers {
            for (p, k) in [3, 2, 1].into_iter().enumerate() {
                let (h, s) = (mean(&harmful, layer, k), mean(&harmless, layer, k));
                let want: Vec<f32> = h.iter().zip(&s).map(|(a, b)| (a - b) as f32).collect();
                for (a, b) in got.direction(layer, p).iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5, "layer {layer} pos -{k}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn selection_scores_every_candidate_and_explains_every_drop() {
        let device = burn::tensor::Device::flex();
        let config = ModelConfig::tiny();
        let model = Llama::random(&config, 5, &device);
        let mut quiet = |_| std::ops::ControlFlow::Continue(());
        let candidates = block_on(extract(
            &model,
            &prompts(1, 6),
            &prompts(2, 6),
            4,
            &mut quiet,
        ))
        .unwrap();
        let tokens = RefusalTokens {
            ids: vec![3, 4],
            tokens: vec!["a".into(), "b".into()],
            origin: TokenOrigin::User,
        };
        let settings = SelectionSettings {
            kl_max: f64::INFINITY,
            induce_min: f64::NEG_INFINITY,
            ..SelectionSettings::default()
        };
        let selection = block_on(select(
            &model,
            &candidates,
            &prompts(3, 4),
            &prompts(4, 4),
            &tokens,
            settings,
            &mut quiet,
        ))
        .unwrap();
        assert_eq!(selection.candidates.len(), config.n_layers * 3);
        // floor(0.8 * 2) = 1: only layer 0 is eligible, with no other filter active.
        for c in &selection.candidates {
            assert_eq!(c.layer >= 1, !c.dropped.is_empty(), "{c:?}");
        }
        let chosen = selection.selected().unwrap();
        assert_eq!(chosen.layer, 0);
        let best = selection
            .candidates
            .iter()
            .filter(|c| c.layer == 0)
            .map(|c| c.bypass)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(chosen.bypass, best);

        // Cancelling stops the run with an error, not a partial result.
        let mut cancel = |_| std::ops::ControlFlow::Break(());
        let cancelled = block_on(select(
            &model,
            &candidates,
            &prompts(3, 4),
            &prompts(4, 4),
            &tokens,
            settings,
            &mut cancel,
        ));
        assert!(matches!(cancelled, Err(PipelineError::Cancelled)));
    }
}
