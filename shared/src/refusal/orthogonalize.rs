//! Weight orthogonalization (METHOD §5): the weight-space equivalent of directional ablation.
//! Every matrix that writes to the residual stream loses its component along `r^`, so no layer
//! can write the direction and no hook is needed at run time.

use burn::module::Param;
use burn::tensor::{FloatDType, Tensor};

use crate::model::{BlockWeight, Llama, ModelConfig, Weight, WeightName};

use super::PipelineError;
use super::intervention::{check_width, unit, vector};

/// The weights [`orthogonalize`] changes in a model of this configuration (taken before the
/// edit): a tied output head becomes a weight of its own, an untied one is left as it is.
pub fn edited_weights(config: &ModelConfig) -> Vec<WeightName> {
    let mut names = vec![WeightName::TokenEmbedding];
    if config.tied_embeddings {
        names.push(WeightName::OutputHead);
    }
    for l in 0..config.n_layers {
        names.push(WeightName::Block(l, BlockWeight::O));
        names.push(WeightName::Block(l, BlockWeight::Down));
    }
    names
}

/// `W <- W - (W r^) r^T` for a matrix whose rows live in the residual stream (`[rows, d_model]`),
/// computed in f32 and stored back in the matrix's type (a 16-bit matrix is rounded to it).
fn remove_rows(w: Tensor<2>, unit: &Tensor<1>) -> Tensor<2> {
    let [d] = unit.dims();
    let dtype = w.dtype();
    let w = w.cast(FloatDType::F32);
    let along = w.clone().matmul(unit.clone().reshape([d, 1])); // [rows, 1]
    (w - along.matmul(unit.clone().reshape([1, d]))).cast(dtype)
}

/// Orthogonalizes `model` against `direction` (any non-zero vector, normalised here): the
/// token embedding, every attention output and MLP down projection (and their biases, if any).
/// A tied output head is untied first, so the unembedding is left as it was. Weights kept in
/// f16 or bf16 are edited in f32 and rounded back to their type.
///
/// # Errors
///
/// [`PipelineError::WidthMismatch`], [`PipelineError::DegenerateDirection`].
pub fn orthogonalize(mut model: Llama, direction: &[f32]) -> Result<Llama, PipelineError> {
    check_width(direction, model.config().d_model)?;
    let unit = vector(&unit(direction)?, &model.device());
    let edit_bias = |b: Tensor<1>| {
        let along = (b.clone() * unit.clone()).sum();
        b - unit.clone() * along
    };

    if model.head.is_none() {
        model.head = Some(model.embedding.clone());
        model.config.tied_embeddings = false;
    }
    model.embedding = Weight::Dense(Param::from_tensor(remove_rows(
        model.embedding_values(),
        &unit,
    )));
    for block in &mut model.blocks {
        for linear in [&mut block.attn.o, &mut block.mlp.down] {
            // Linear weights are `[d_in, d_model]`: each row is written into the stream.
            linear.set_weight(remove_rows(linear.weight_values(), &unit));
            if let Some(bias) = linear.bias.take() {
                linear.bias = Some(Param::from_tensor(edit_bias(bias.val())));
            }
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Capture, DirectionalAblation, HookPoint, KvCache, NoHook, TokenBatch, read_f32,
    };

    fn direction(d: usize) -> Vec<f32> {
        (0..d).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect()
    }

    #[test]
    fn orthogonalized_weights_give_the_logits_of_hook_ablation() {
        let device = burn::tensor::Device::flex();
        let config = ModelConfig::tiny();
        assert!(
            config.tied_embeddings,
            "the tiny model must exercise untying"
        );
        let model = Llama::random(&config, 7, &device);
        let r = direction(config.d_model);
        let prompts = [vec![1, 5, 9, 2, 7], vec![3, 4]];
        let batch = TokenBatch::left_padded(&prompts, 0, &device);

        let mut ablation = DirectionalAblation::new(vector(&r, &device));
        let hooked = read_f32(model.last_logits(&batch, &mut ablation));
        let edited = orthogonalize(model, &r).unwrap();
        assert!(!edited.config().tied_embeddings && edited.head.is_some());
        let baked = read_f32(edited.last_logits(&batch, &mut NoHook));
        // Same maths, different summation order: a few f32 ulps of logits of size ~1.
        for (a, b) in hooked.iter().zip(&baked) {
            assert!((a - b).abs() <= 1e-4, "{a} vs {b}");
        }

        // And the stream itself has no component along r^ anywhere.
        let mut capture = Capture::every_layer(config.n_layers, HookPoint::ResidPost, vec![]);
        edited.hidden(&batch, &mut KvCache::new(), &mut capture);
        let unit = vector(&r, &device) / (r.iter().map(|v| v * v).sum::<f32>().sqrt());
        for (_, x) in capture.into_captured() {
            let [n, s, d] = x.dims();
            let along = read_f32(
                x.clone()
                    .matmul(unit.clone().reshape([1, d, 1]))
                    .reshape([n * s]),
            );
            let norms = read_f32(x.square().sum_dim(2).sqrt().reshape([n * s]));
            for (a, m) in along.iter().zip(&norms) {
                assert!(
                    a.abs() <= 1e-4 * m.max(1.0),
                    "{a} along r^ of a vector of norm {m}"
                );
            }
        }
    }

    #[test]
    fn a_bf16_model_is_edited_in_f32_and_stays_bf16() {
        let device = burn::tensor::Device::flex();
        let config = ModelConfig::tiny();
        let model = Llama::random_bf16(&config, 7, &device);
        let r = direction(config.d_model);
        let batch = TokenBatch::left_padded(&[vec![1, 5, 9, 2, 7], vec![3, 4]], 0, &device);
        let mut ablation = DirectionalAblation::new(vector(&r, &device));
        let hooked = read_f32(model.last_logits(&batch, &mut ablation));
        let edited = orthogonalize(model, &r).unwrap();
        for w in [
            edited.embedding_values(),
            edited.head_values().expect("untied"),
            edited.blocks[1].attn.o.weight_values(),
            edited.blocks[1].mlp.down.weight_values(),
        ] {
            assert_eq!(w.dtype(), burn::tensor::DType::BF16);
        }
        let baked = read_f32(edited.last_logits(&batch, &mut NoHook));
        // The edited matrices are rounded to bf16 (relative error up to 2^-9 per weight), so
        // logits of size ~1 move by a few 1e-3: allow 2e-2.
        for (a, b) in hooked.iter().zip(&baked) {
            assert!((a - b).abs() <= 2e-2, "{a} vs {b}");
        }
    }

    #[test]
    fn bad_directions_are_refused() {
        let device = burn::tensor::Device::flex();
        let config = ModelConfig::tiny();
        let model = Llama::random(&config, 7, &device);
        assert!(matches!(
            orthogonalize(model.clone(), &[1.0]),
            Err(PipelineError::WidthMismatch { .. })
        ));
        assert!(matches!(
            orthogonalize(model, &vec![0.0; config.d_model]),
            Err(PipelineError::DegenerateDirection)
        ));
    }
}
