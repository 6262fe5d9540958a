//! AIRD, "artificially inducing the refusal direction" (METHOD §10). The seed paper gives no
//! equations; this is our reconstruction, documented as such in METHOD.md:
//!
//! 1. run the base model B and the compressed model C on the training prompts; at layer `l*`
//!    and every post-instruction position record `p_B = r^_B . x_B`, `p_C = r^_B . x_C`, and
//!    `a_C`, the input of block `l*-1`'s down projection in C;
//! 2. ridge regression `u = argmin sum (u . a_C - (p_B - p_C))^2 + lambda |u|^2` (closed form,
//!    `lambda` chosen on validation prompts);
//! 3. `W_down <- W_down + alpha r^_B u^T` in block `l*-1`: a rank-one update whose output,
//!    added to the residual stream that enters layer `l*`, moves C's projection on the base
//!    direction by `alpha u . a_C`.
//!
//! The regression is solved in its dual form, `u = A^T (A A^T + lambda I)^-1 t`, because there
//! are fewer samples (prompts x positions) than down-projection inputs.

use burn::tensor::{Tensor, TensorData};
use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatRef, Side};

use crate::load::TextAssets;
use crate::model::{Llama, TokenBatch};

use super::intervention::{check_width, unit};
use super::{EncodedPrompts, EncodedSplit};
use crate::pipeline::{OnProgress, PipelineError, Stage, read, report};

/// Ridge penalties tried, as multiples of the mean squared norm of the samples `a_C`.
pub const LAMBDA_GRID: [f64; 6] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

/// How the rank-one update is fitted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AirdSettings {
    /// `l*`: the layer whose input (`resid_pre`) is corrected; block `l*-1` is edited.
    pub layer: usize,
    /// Scale of the update (1 matches the base projection on the training prompts).
    pub alpha: f32,
    /// A fixed ridge penalty (absolute); `None` picks the best of [`LAMBDA_GRID`] on the
    /// validation prompts.
    pub lambda: Option<f64>,
    pub batch_size: usize,
}

/// How well `u . a_C` predicts the projection gap on one prompt set.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitQuality {
    /// Samples (prompts x post-instruction positions).
    pub samples: usize,
    /// Mean `p_B - p_C` (how far C's projection is below B's).
    pub mean_gap: f64,
    /// Mean squared gap with no update.
    pub mse_before: f64,
    /// Mean squared residual `(p_B - p_C - u . a_C)^2` with `alpha = 1`.
    pub mse_after: f64,
}

/// One ridge penalty and its validation error.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LambdaScore {
    pub lambda: f64,
    pub val_mse: f64,
}

/// The fitted update and how it was found.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AirdFit {
    pub settings: AirdSettings,
    /// The penalty used.
    pub lambda: f64,
    /// Every penalty tried (empty when one was given).
    pub lambda_grid: Vec<LambdaScore>,
    pub train: FitQuality,
    pub validation: Option<FitQuality>,
    pub u_norm: f64,
    /// `u`, one weight per down-projection input.
    #[serde(skip)]
    pub u: Vec<f32>,
}

/// Activations of B and C at layer `l*` on one prompt set.
pub struct LayerSamples {
    /// `p_B - p_C` per sample.
    pub gap: Vec<f64>,
    /// `a_C`, `[samples, d_ff]`.
    pub a: Vec<f32>,
    pub d_ff: usize,
    /// C's `resid_pre` at `l*` summed over prompts, `[position][d_model]` (positions
    /// `-k..=-1`), for C's own direction at that layer.
    pub c_sums: Vec<f64>,
    pub n_prompts: usize,
}

/// Records `p_B`, `p_C` and `a_C` at layer `l*` for every post-instruction position of
/// `prompts`.
///
/// # Errors
///
/// Bad layer or direction, readback errors, cancellation.
pub async fn collect(
    base: &Llama,
    compressed: &Llama,
    base_direction: &[f32],
    layer: usize,
    prompts: &EncodedPrompts,
    batch_size: usize,
    on_progress: &mut OnProgress<'_>,
) -> Result<LayerSamples, PipelineError> {
    let n_layers = compressed.blocks.len();
    if layer == 0 || layer >= n_layers {
        return Err(PipelineError::LayerOutOfRange { layer, n_layers });
    }
    let d_model = compressed.config().d_model;
    check_width(base_direction, d_model)?;
    let device = compressed.device();
    let r = Tensor::<1>::from_data(TensorData::new(unit(base_direction)?, [d_model]), &device);
    let k = prompts.post_instruction;
    let mut out = LayerSamples {
        gap: Vec::new(),
        a: Vec::new(),
        d_ff: compressed.config().d_ff,
        c_sums: vec![0.0; k * d_model],
        n_prompts: prompts.len(),
    };
    let total = prompts.len();
    let mut done = 0;
    report(on_progress, Stage::Aird, 0, total)?;
    for batch in prompts.batches(batch_size.max(1)) {
        let tokens = TokenBatch::left_padded(&prompts.select(&batch), 0, &device);
        let [n, seq] = tokens.dims();
        let last = |x: Tensor<3>| {
            let [_, _, d] = x.dims();
            x.narrow(1, seq - k, k).reshape([n * k, d])
        };
        let project = |x: Tensor<2>| x.matmul(r.clone().reshape([d_model, 1])).reshape([n * k]);

        let (mut x_b, ctx_b) = base.embed(&tokens);
        for block in &base.blocks[..layer] {
            x_b = block.forward_prompt(x_b, &ctx_b);
        }
        let (mut x_c, ctx_c) = compressed.embed(&tokens);
        for block in &compressed.blocks[..layer - 1] {
            x_c = block.forward_prompt(x_c, &ctx_c);
        }
        let (x_c, seen) = compressed.blocks[layer - 1].forward_observed(x_c, &ctx_c);
        let x_c = last(x_c);
        let p_b = read(project(last(x_b))).await?;
        let p_c = read(project(x_c.clone())).await?;
        out.gap.extend(
            p_b.iter()
                .zip(&p_c)
                .map(|(b, c)| f64::from(*b) - f64::from(*c)),
        );
        out.a.extend(read(last(seen.down)).await?);
        for (i, row) in read(x_c).await?.chunks_exact(d_model).enumerate() {
            let position = i % k;
            let sums = &mut out.c_sums[position * d_model..(position + 1) * d_model];
            for (s, v) in sums.iter_mut().zip(row) {
                *s += f64::from(*v);
            }
        }
        done += batch.len();
        report(on_progress, Stage::Aird, done, total)?;
    }
    Ok(out)
}

impl LayerSamples {
    /// The samples of both sets together.
    pub fn join(a: &LayerSamples, b: &LayerSamples) -> LayerSamples {
        LayerSamples {
            gap: [a.gap.as_slice(), &b.gap].concat(),
            a: [a.a.as_slice(), &b.a].concat(),
            d_ff: a.d_ff,
            c_sums: a.c_sums.iter().zip(&b.c_sums).map(|(x, y)| x + y).collect(),
            n_prompts: a.n_prompts + b.n_prompts,
        }
    }

    fn len(&self) -> usize {
        self.gap.len()
    }

    /// Quality of `u` on these samples.
    pub fn quality(&self, u: &[f32]) -> FitQuality {
        let n = self.len().max(1) as f64;
        let mut before = 0.0;
        let mut after = 0.0;
        for (g, a) in self.gap.iter().zip(self.a.chunks_exact(self.d_ff)) {
            let pred: f64 = a
                .iter()
                .zip(u)
                .map(|(x, w)| f64::from(*x) * f64::from(*w))
                .sum();
            before += g * g;
            after += (g - pred) * (g - pred);
        }
        FitQuality {
            samples: self.len(),
            mean_gap: self.gap.iter().sum::<f64>() / n,
            mse_before: before / n,
            mse_after: after / n,
        }
    }
}

/// C's own direction at layer `l*` and `position` (counted from the end): mean harmful minus
/// mean harmless `resid_pre`, from the sums [`collect`] kept.
pub fn compressed_direction(
    harmful: &LayerSamples,
    harmless: &LayerSamples,
    position: isize,
    d_model: usize,
) -> Result<Vec<f32>, PipelineError> {
    let k = harmful.c_sums.len() / d_model.max(1);
    let available: Vec<isize> = (1..=k as isize).rev().map(|i| -i).collect();
    let Some(p) = available.iter().position(|&q| q == position) else {
        return Err(PipelineError::PositionOutOfRange {
            position,
            available,
        });
    };
    let range = p * d_model..(p + 1) * d_model;
    Ok(harmful.c_sums[range.clone()]
        .iter()
        .zip(&harmless.c_sums[range])
        .map(|(h, s)| (h / harmful.n_prompts as f64 - s / harmless.n_prompts as f64) as f32)
        .collect())
}

/// Fits `u` on `train`, choosing the penalty on `validation` unless one is given.
///
/// # Errors
///
/// [`PipelineError::NoPrompts`] without training samples.
pub fn fit(
    train: &LayerSamples,
    validation: Option<&LayerSamples>,
    settings: AirdSettings,
) -> Result<AirdFit, PipelineError> {
    let n = train.len();
    if n == 0 {
        return Err(PipelineError::NoPrompts("AIRD training"));
    }
    let d = train.d_ff;
    let a = MatRef::from_row_major_slice(&train.a, n, d);
    let mut gram = Mat::<f32>::zeros(n, n);
    matmul(
        gram.as_mut(),
        Accum::Replace,
        a,
        a.transpose(),
        1.0f32,
        faer::get_global_parallelism(),
    );
    let gram = Mat::<f64>::from_fn(n, n, |i, j| f64::from(gram[(i, j)]));
    let mean_sq_norm = (0..n).map(|i| gram[(i, i)]).sum::<f64>() / n as f64;
    let solve = |lambda: f64| -> Vec<f32> {
        let mut k = gram.clone();
        for i in 0..n {
            k[(i, i)] += lambda;
        }
        let t = Mat::<f64>::from_fn(n, 1, |i, _| train.gap[i]);
        let Ok(llt) = k.llt(Side::Lower) else {
            return vec![0.0; d];
        };
        let c = llt.solve(t.as_ref());
        let mut u = vec![0.0f64; d];
        for (i, row) in train.a.chunks_exact(d).enumerate() {
            let ci = c[(i, 0)];
            for (uj, x) in u.iter_mut().zip(row) {
                *uj += ci * f64::from(*x);
            }
        }
        u.into_iter().map(|v| v as f32).collect()
    };

    let (lambda, u, lambda_grid) = match (settings.lambda, validation) {
        (Some(lambda), _) => (lambda, solve(lambda), Vec::new()),
        (None, Some(val)) if val.len() > 0 => {
            let mut grid = Vec::new();
            let mut best: Option<(f64, Vec<f32>, f64)> = None;
            for g in LAMBDA_GRID {
                let lambda = g * mean_sq_norm.max(f64::MIN_POSITIVE);
                let u = solve(lambda);
                let val_mse = val.quality(&u).mse_after;
                grid.push(LambdaScore { lambda, val_mse });
                if best.as_ref().is_none_or(|b| val_mse < b.2) {
                    best = Some((lambda, u, val_mse));
                }
            }
            let (lambda, u, _) = best.unwrap_or_else(|| (0.0, vec![0.0; d], 0.0));
            (lambda, u, grid)
        }
        (None, _) => {
            let lambda = 1e-2 * mean_sq_norm;
            (lambda, solve(lambda), Vec::new())
        }
    };
    Ok(AirdFit {
        lambda,
        lambda_grid,
        train: train.quality(&u),
        validation: validation.map(|v| v.quality(&u)),
        u_norm: u.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt(),
        u,
        settings,
    })
}

/// What the update did to the edited down projection.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Densification {
    /// Fraction of non-zero weights before and after.
    pub density_before: f64,
    pub density_after: f64,
}

/// Applies `W_down <- W_down + alpha r^_B u^T` to block `layer - 1` of `model` (in f32; a
/// 16-bit weight is rounded back to its type).
///
/// # Errors
///
/// Bad layer, direction or `u` width; readback errors.
pub async fn apply(
    mut model: Llama,
    base_direction: &[f32],
    fit: &AirdFit,
) -> Result<(Llama, Densification), PipelineError> {
    let layer = fit.settings.layer;
    let n_layers = model.blocks.len();
    if layer == 0 || layer >= n_layers {
        return Err(PipelineError::LayerOutOfRange { layer, n_layers });
    }
    let config = model.config().clone();
    check_width(base_direction, config.d_model)?;
    if fit.u.len() != config.d_ff {
        return Err(PipelineError::WidthMismatch {
            expected: config.d_ff,
            got: fit.u.len(),
        });
    }
    let device = model.device();
    let r = unit(base_direction)?;
    let down = &mut model.blocks[layer - 1].mlp.down;
    let density = |v: &[f32]| v.iter().filter(|x| **x != 0.0).count() as f64 / v.len() as f64;
    let density_before = density(&read(down.weight_values()).await?);
    let u = Tensor::<1>::from_data(TensorData::new(fit.u.clone(), [config.d_ff]), &device);
    let r = Tensor::<1>::from_data(TensorData::new(r, [config.d_model]), &device);
    // `[d_ff, d_model]` (input-major): the update is `alpha u r^T` in this layout, computed in
    // f32; a 16-bit weight is rounded back to its type (and measured so), quantized blocks
    // keep the term beside them.
    down.add_outer(u * fit.settings.alpha, r);
    let density_after = density(&read(down.weight_values()).await?);
    Ok((
        model,
        Densification {
            density_before,
            density_after,
        },
    ))
}

/// AIRD as the playground fits it: [`repair`] on `n_train` prompts of each built-in set, and
/// a quarter as many more (rounded up), held out, to choose the penalty.
///
/// # Errors
///
/// Template and tokenizer errors, and those of [`repair`].
pub async fn repair_on_builtin(
    base: &Llama,
    compressed: Llama,
    base_direction: &[f32],
    settings: AirdSettings,
    text: &TextAssets,
    n_train: usize,
    on_progress: &mut OnProgress<'_>,
) -> Result<Repaired, PipelineError> {
    let prompts = EncodedSplit::builtin(text, n_train, n_train.div_ceil(4), 0)?;
    repair(
        base,
        compressed,
        base_direction,
        settings,
        &prompts,
        on_progress,
    )
    .await
}

/// A compressed model repaired by AIRD, with what the fit recorded.
pub struct Repaired {
    pub model: Llama,
    pub fit: AirdFit,
    pub densification: Densification,
    /// The training prompts' samples (C's own direction at `l*` comes from their sums).
    pub harmful: LayerSamples,
    pub harmless: LayerSamples,
}

/// AIRD end to end: records B and C on the training and validation prompts of `prompts`,
/// fits `u` (the penalty chosen on the validation prompts unless `settings` fixes one) and
/// applies the update to `compressed`.
///
/// # Errors
///
/// Those of [`collect`], [`fit`] and [`apply`].
pub async fn repair(
    base: &Llama,
    compressed: Llama,
    base_direction: &[f32],
    settings: AirdSettings,
    prompts: &EncodedSplit,
    on_progress: &mut OnProgress<'_>,
) -> Result<Repaired, PipelineError> {
    let mut record = async |set: &EncodedPrompts| {
        let (layer, bs) = (settings.layer, settings.batch_size);
        collect(
            base,
            &compressed,
            base_direction,
            layer,
            set,
            bs,
            on_progress,
        )
        .await
    };
    let harmful = record(&prompts.harmful).await?;
    let harmless = record(&prompts.harmless).await?;
    let val_harmful = record(&prompts.val_harmful).await?;
    let val_harmless = record(&prompts.val_harmless).await?;
    let fit = fit(
        &LayerSamples::join(&harmful, &harmless),
        Some(&LayerSamples::join(&val_harmful, &val_harmless)),
        settings,
    )?;
    let (model, densification) = apply(compressed, base_direction, &fit).await?;
    Ok(Repaired {
        model,
        fit,
        densification,
        harmful,
        harmless,
    })
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use futures_lite::future::block_on;

    use super::*;
    use crate::compress::{Method, Sparsity, compress};
    use crate::model::ModelConfig;

    fn prompts(offset: u32) -> EncodedPrompts {
        EncodedPrompts {
            ids: (0..10u32)
                .map(|i| {
                    (0..(6 + i % 4))
                        .map(|j| (offset + i * 11 + j * 5) % 96)
                        .collect()
                })
                .collect(),
            post_instruction: 3,
        }
    }

    #[test]
    fn the_update_closes_the_projection_gap_it_was_fitted_on() {
        let device = burn::tensor::Device::flex();
        let mut config = ModelConfig::tiny();
        config.n_layers = 3;
        let base = Llama::random(&config, 9, &device);
        let pruned = block_on(compress(
            base.clone(),
            Method::Magnitude(Sparsity::Unstructured(0.6)),
            &[],
            0,
            4,
            &mut |_| ControlFlow::Continue(()),
        ))
        .unwrap()
        .model;
        let r: Vec<f32> = (0..config.d_model)
            .map(|i| ((i * 5 % 9) as f32) - 4.5)
            .collect();
        let layer = 2;
        let quiet = &mut |_| ControlFlow::Continue(());
        let collect_on = |m: &Llama, set: &EncodedPrompts, q: &mut OnProgress<'_>| {
            block_on(collect(&base, m, &r, layer, set, 4, q)).unwrap()
        };
        let (harmful, harmless) = (prompts(1), prompts(40));
        let train = LayerSamples::join(
            &collect_on(&pruned, &harmful, quiet),
            &collect_on(&pruned, &harmless, quiet),
        );
        assert_eq!(train.gap.len(), 20 * 3);
        let settings = AirdSettings {
            layer,
            alpha: 1.0,
            lambda: Some(1e-6),
            batch_size: 4,
        };
        let fit = fit(&train, None, settings).unwrap();
        assert!(
            fit.train.mse_after < 0.05 * fit.train.mse_before,
            "{:?}",
            fit.train
        );

        // Applying the update moves C's projection by exactly u . a_C: measuring again gives
        // the residual the fit predicted.
        let (repaired, density) = block_on(apply(pruned, &r, &fit)).unwrap();
        let again = LayerSamples::join(
            &collect_on(&repaired, &harmful, quiet),
            &collect_on(&repaired, &harmless, quiet),
        );
        let measured = again.quality(&vec![0.0; again.d_ff]).mse_before;
        assert!(
            (measured - fit.train.mse_after).abs() <= 1e-3 * fit.train.mse_before,
            "{measured} vs {}",
            fit.train.mse_after
        );
        // The rank-one update fills the pruned down projection.
        assert!(density.density_before < 0.45 && density.density_after > 0.99);
        // The base's own gap is zero, so fitting B against itself changes nothing.
        let own = collect_on(&base, &harmful, quiet);
        assert!(own.gap.iter().all(|g| g.abs() < 1e-4));
    }

    #[test]
    fn the_penalty_is_chosen_on_validation_samples() {
        let device = burn::tensor::Device::flex();
        let config = ModelConfig::tiny();
        let base = Llama::random(&config, 2, &device);
        let other = Llama::random(&config, 3, &device);
        let r: Vec<f32> = (0..config.d_model).map(|i| i as f32 - 30.0).collect();
        let quiet = &mut |_| ControlFlow::Continue(());
        let train = block_on(collect(&base, &other, &r, 1, &prompts(3), 4, quiet)).unwrap();
        let val = block_on(collect(&base, &other, &r, 1, &prompts(50), 4, quiet)).unwrap();
        let settings = AirdSettings {
            layer: 1,
            alpha: 1.0,
            lambda: None,
            batch_size: 4,
        };
        let fit = fit(&train, Some(&val), settings).unwrap();
        assert_eq!(fit.lambda_grid.len(), LAMBDA_GRID.len());
        let best = fit
            .lambda_grid
            .iter()
            .min_by(|a, b| a.val_mse.total_cmp(&b.val_mse))
            .unwrap();
        assert_eq!(best.lambda, fit.lambda);
        assert!(matches!(
            block_on(collect(&base, &other, &r, 0, &prompts(3), 4, quiet)),
            Err(PipelineError::LayerOutOfRange { .. })
        ));
    }

    #[test]
    fn a_quantized_down_projection_keeps_its_blocks_and_gets_the_exact_update() {
        let config = ModelConfig::tiny();
        let model = Llama::random_quantized(&config, 5, crate::gguf::GgmlType::Q8_0);
        let before = crate::model::read_f32(model.blocks[0].mlp.down.weight_values());
        let u: Vec<f32> = (0..config.d_ff).map(|i| (i as f32 * 0.1).sin()).collect();
        let r: Vec<f32> = (0..config.d_model).map(|i| (i % 5) as f32 - 2.0).collect();
        let quality = FitQuality {
            samples: 0,
            mean_gap: 0.0,
            mse_before: 0.0,
            mse_after: 0.0,
        };
        let fit = AirdFit {
            settings: AirdSettings {
                layer: 1,
                alpha: 2.0,
                lambda: Some(1.0),
                batch_size: 4,
            },
            lambda: 1.0,
            lambda_grid: Vec::new(),
            train: quality,
            validation: None,
            u_norm: 0.0,
            u: u.clone(),
        };
        let (repaired, _) = block_on(apply(model, &r, &fit)).unwrap();
        let down = &repaired.blocks[0].mlp.down;
        assert_eq!(down.weight.type_name(), "Q8_0+rank1");
        let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        let after = crate::model::read_f32(down.weight_values());
        // `[d_ff, d_model]`: `W + alpha u r^T`.
        for (k, (a, b)) in after.iter().zip(&before).enumerate() {
            let want = b + 2.0 * u[k / config.d_model] * r[k % config.d_model] / norm;
            assert!(
                (a - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{a} vs {want}"
            );
        }
    }
}
