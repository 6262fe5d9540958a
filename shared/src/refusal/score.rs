//! The refusal score (METHOD §4): log-odds of the model starting its answer with a refusal
//! token, read from the logits at the last prompt position, no generation needed; and the KL
//! from the unmodified model's next-token distribution.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

/// Log-probabilities of the tokens `ids` under last-position `logits`.
///
/// # Shapes
/// - `logits`: `[batch, vocab]` → `[batch, ids.len()]`
pub fn token_log_probs(logits: Tensor<2>, ids: &[u32]) -> Tensor<2> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let n = ids.len();
    let index: Tensor<1, Int> = Tensor::from_data(TensorData::new(ids, [n]), &logits.device());
    log_softmax(logits, 1).select(1, index)
}

/// `ln(p + 1e-8) - ln(1 - p + 1e-8)` with `p` the summed probability of the refusal tokens,
/// from one row of [`RefusalTokens::log_probs`].
pub fn refusal_score(log_probs: &[f32]) -> f64 {
    let p: f64 = log_probs.iter().map(|&lp| (lp as f64).exp()).sum();
    (p + 1e-8).ln() - (1.0 - p + 1e-8).ln()
}

/// `KL(p_base || p)` per row, from last-position logits.
///
/// # Shapes
/// - `base_log_probs`, `logits`: `[batch, vocab]` → `[batch]`
pub fn kl_from_base(base_log_probs: Tensor<2>, logits: Tensor<2>) -> Tensor<1> {
    let log_probs = log_softmax(logits, 1);
    let [batch, _] = base_log_probs.dims();
    (base_log_probs.clone().exp() * (base_log_probs - log_probs))
        .sum_dim(1)
        .reshape([batch])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_is_the_log_odds_of_the_refusal_tokens() {
        // p = 0.2 + 0.3 = 0.5 → log-odds 0.
        let score = refusal_score(&[0.2f32.ln(), 0.3f32.ln()]);
        assert!(score.abs() < 1e-6, "{score}");
        let score = refusal_score(&[0.9f32.ln()]);
        assert!((score - (0.9f64 / 0.1).ln()).abs() < 1e-5, "{score}");
        // p = 1 stays finite thanks to the 1e-8 terms.
        assert!(refusal_score(&[0.0]).is_finite());
    }

    #[test]
    fn kl_matches_a_hand_computation() {
        let device = burn::tensor::Device::flex();
        let base = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.0], [1, 2]), &device);
        let other =
            Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 3.0f32.ln()], [1, 2]), &device);
        // p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3).
        let kl = crate::model::read_f32(kl_from_base(log_softmax(base, 1), other));
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl[0] as f64 - want).abs() < 1e-6, "{kl:?}");
    }
}
