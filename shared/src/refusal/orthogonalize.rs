//! Weight orthogonalization (METHOD §5): the weight-space equivalent of directional ablation.
//! Every matrix that writes to the residual stream loses its component along `r^`, so no layer
//! can write the direction and no hook is needed at run time.

use burn::module::Param;
use burn::tensor::Tensor;

use crate::model::{BlockWeight, Llama, ModelConfig, WeightName};

use super::intervention::{check_width, unit, vector};
use crate::pipeline::PipelineError;

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

/// Orthogonalizes `model` against `direction` (any non-zero vector, normalised here): the
/// token embedding, every attention output and MLP down projection (and their biases, if any),
/// each `W <- W - (W r^) r^T` for a matrix whose rows live in the residual stream. A tied
/// output head is untied first, so the unembedding is left as it was. The edit is computed in
/// f32: weights kept in f16 or bf16 are rounded back to their type, quantized blocks are kept
/// and the rank-one term is kept beside them (see [`crate::model::QuantizedMatrix`]), so the
/// edited model is as small and as fast as the original.
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
    model.remove_from_embedding(unit.clone());
    for block in &mut model.blocks {
        for linear in [&mut block.attn.o, &mut block.mlp.down] {
            linear.remove_from_outputs(unit.clone());
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

    /// Every layer's residual stream of `model` on `batch` has no component along `r^`.
    fn assert_stream_avoids(model: &Llama, batch: &TokenBatch, r: &[f32]) {
        let device = model.device();
        let n_layers = model.config().n_layers;
        let mut capture = Capture::every_layer(n_layers, HookPoint::ResidPost, vec![]);
        model.hidden(batch, &mut KvCache::new(), &mut capture);
        let unit = vector(r, &device) / (r.iter().map(|v| v * v).sum::<f32>().sqrt());
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
        assert_stream_avoids(&edited, &batch, &r);
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
    fn quantized_blocks_are_kept_and_give_the_logits_of_hook_ablation() {
        let device = burn::tensor::Device::flex();
        let config = ModelConfig::tiny();
        let model = Llama::random_quantized(&config, 7, crate::gguf::GgmlType::Q8_0);
        let r = direction(config.d_model);
        let batch = TokenBatch::left_padded(&[vec![1, 5, 9, 2, 7], vec![3, 4]], 0, &device);
        let mut ablation = DirectionalAblation::new(vector(&r, &device));
        let hooked = read_f32(model.last_logits(&batch, &mut ablation));
        let plain = read_f32(model.last_logits(&batch, &mut NoHook));
        let bytes = model.weight_bytes();
        let edited = orthogonalize(model, &r).unwrap();

        let types = edited.weight_types();
        let edited_count = 1 + 2 * config.n_layers;
        assert!(
            types.contains(&("Q8_0+rank1".to_string(), edited_count)),
            "{types:?}"
        );
        // Each edit adds two f32 vectors; the untied head counts as a weight of its own (in
        // memory it shares the embedding's blocks).
        let [vocab, d, d_ff] = [config.vocab_size, config.d_model, config.d_ff];
        let added = 4 * ((vocab + d) + config.n_layers * ((d + d) + (d + d_ff)));
        let head = vocab * d / 32 * crate::gguf::GgmlType::Q8_0.type_size();
        assert_eq!(edited.weight_bytes(), bytes + (added + head) as u64);

        // The head's activations are rounded to 8 bits on both sides, from streams that differ
        // in float summation order only: an occasional rounding step apart.
        let baked = read_f32(edited.last_logits(&batch, &mut NoHook));
        let max_abs_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };
        let (max_diff, effect) = (max_abs_diff(&hooked, &baked), max_abs_diff(&hooked, &plain));
        assert!(
            max_diff <= 1e-3 && effect > 100.0 * max_diff.max(1e-5),
            "{max_diff} vs {effect}"
        );

        // Decoding (the integer kernels) writes nothing along r^ either.
        let single = TokenBatch::left_padded(&[vec![4, 8]], 0, &device);
        assert_stream_avoids(&edited, &single, &r);
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
