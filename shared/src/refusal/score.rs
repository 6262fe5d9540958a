//! The refusal score (METHOD §4): log-odds of the model starting its answer with a refusal
//! token, read from the logits at the last prompt position, no generation needed.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::load::TextAssets;
use crate::model::{Architecture, Llama, ModelConfig, NoHook};

use super::EncodedPrompts;
use super::evaluate::{FirstStep, complete};
use super::judge::starts_refusal;
use crate::pipeline::{OnProgress, PipelineError, Stage};

/// Model families whose refusal tokens are known (METHOD §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFamily {
    Llama2,
    Llama3,
    Mistral,
    Qwen,
}

impl ModelFamily {
    /// Recognises a family from the architecture, the tokenizer's special tokens and the chat
    /// template; `None` for models outside the known families (their tokens come from data).
    pub fn detect(config: &ModelConfig, text: &TextAssets) -> Option<ModelFamily> {
        match config.architecture {
            Architecture::Qwen2 => Some(ModelFamily::Qwen),
            Architecture::Llama if text.tokenizer.token_to_id("<|eot_id|>").is_some() => {
                Some(ModelFamily::Llama3)
            }
            // Both put turns in [INST] blocks; only Llama 2 has a system block.
            Architecture::Llama if text.chat.source().contains("<<SYS>>") => {
                Some(ModelFamily::Llama2)
            }
            Architecture::Llama if text.chat.source().contains("[INST]") => {
                Some(ModelFamily::Mistral)
            }
            Architecture::Llama => None,
        }
    }

    /// The words refusals of this family begin with.
    pub fn refusal_words(self) -> &'static [&'static str] {
        match self {
            ModelFamily::Llama2 | ModelFamily::Llama3 | ModelFamily::Mistral => &["I"],
            ModelFamily::Qwen => &["I", "As"],
        }
    }
}

/// Where a model's refusal tokens came from; always reported next to them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenOrigin {
    /// The known tokens of the model's family.
    Family { family: ModelFamily },
    /// First tokens of the greedy completions that open with a refusal phrase.
    Data { completions: usize, refusals: usize },
    /// No completion refused, so the generic English opener "I" stands in.
    Fallback { completions: usize },
    /// Given by the user.
    User,
}

/// The tokens whose probability at the last position makes up the refusal score.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RefusalTokens {
    pub ids: Vec<u32>,
    /// The text of each token.
    pub tokens: Vec<String>,
    pub origin: TokenOrigin,
}

impl RefusalTokens {
    /// The tokens and where they came from, for a line of progress.
    pub fn describe(&self) -> String {
        let origin = match &self.origin {
            TokenOrigin::Family { family } => format!("known for the {family:?} family"),
            TokenOrigin::Data {
                completions,
                refusals,
            } => format!("first tokens of {refusals} refusals in {completions} greedy completions"),
            TokenOrigin::Fallback { completions } => {
                format!("no refusal in {completions} greedy completions: generic fallback")
            }
            TokenOrigin::User => "given by the user".to_owned(),
        };
        format!("{:?} ({origin})", self.tokens)
    }
}

/// Greedy tokens generated per prompt to recognise a refusal opening.
const DERIVE_TOKENS: usize = 8;

impl RefusalTokens {
    /// The tokens of `words`, each of which must be a single token.
    ///
    /// # Errors
    ///
    /// [`PipelineError::NotOneToken`], [`PipelineError::NoRefusalTokens`] for no words.
    pub fn from_words(
        text: &TextAssets,
        words: &[&str],
        origin: TokenOrigin,
    ) -> Result<RefusalTokens, PipelineError> {
        if words.is_empty() {
            return Err(PipelineError::NoRefusalTokens);
        }
        let mut ids = Vec::with_capacity(words.len());
        for word in words {
            match text.tokenizer.encode(word, false)?.as_slice() {
                [id] => ids.push(*id),
                _ => return Err(PipelineError::NotOneToken((*word).to_owned())),
            }
        }
        Ok(RefusalTokens {
            ids,
            tokens: words.iter().map(|w| (*w).to_owned()).collect(),
            origin,
        })
    }

    /// The family's tokens when the model belongs to a known family, else tokens derived from
    /// greedy completions of `harmful` prompts (at most `max_prompts` of them).
    ///
    /// # Errors
    ///
    /// Tokenizer and readback errors; [`PipelineError::Cancelled`].
    pub async fn for_model(
        model: &Llama,
        text: &TextAssets,
        harmful: &EncodedPrompts,
        max_prompts: usize,
        batch_size: usize,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<RefusalTokens, PipelineError> {
        if let Some(family) = ModelFamily::detect(model.config(), text) {
            return RefusalTokens::from_words(
                text,
                family.refusal_words(),
                TokenOrigin::Family { family },
            );
        }
        let sample = EncodedPrompts {
            ids: harmful.ids.iter().take(max_prompts).cloned().collect(),
            post_instruction: harmful.post_instruction,
        };
        let completions = complete(
            model,
            &sample,
            &text.tokenizer.stop_ids(),
            DERIVE_TOKENS,
            batch_size,
            &mut NoHook,
            FirstStep::default(),
            Stage::RefusalTokens,
            on_progress,
        )
        .await?;
        let mut counts: Vec<(u32, usize)> = Vec::new();
        let mut refusals = 0;
        for tokens in completions.iter().map(|c| &c.tokens) {
            let Some(&first) = tokens.first() else {
                continue;
            };
            if !starts_refusal(&text.tokenizer.decode(tokens, true)?) {
                continue;
            }
            refusals += 1;
            match counts.iter_mut().find(|(id, _)| *id == first) {
                Some((_, n)) => *n += 1,
                None => counts.push((first, 1)),
            }
        }
        if counts.is_empty() {
            return RefusalTokens::from_words(
                text,
                &["I"],
                TokenOrigin::Fallback {
                    completions: completions.len(),
                },
            );
        }
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let ids: Vec<u32> = counts.iter().map(|&(id, _)| id).collect();
        let tokens = ids
            .iter()
            .map(|&id| text.tokenizer.decode(&[id], false))
            .collect::<Result<_, _>>()?;
        Ok(RefusalTokens {
            ids,
            tokens,
            origin: TokenOrigin::Data {
                completions: completions.len(),
                refusals,
            },
        })
    }

    /// Log-probabilities of the refusal tokens under last-position `logits`.
    ///
    /// # Shapes
    /// - `logits`: `[batch, vocab]` → `[batch, n_tokens]`
    pub fn log_probs(&self, logits: Tensor<2>) -> Tensor<2> {
        let ids: Vec<i64> = self.ids.iter().map(|&i| i as i64).collect();
        let n = ids.len();
        let index: Tensor<1, Int> = Tensor::from_data(TensorData::new(ids, [n]), &logits.device());
        log_softmax(logits, 1).select(1, index)
    }
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
