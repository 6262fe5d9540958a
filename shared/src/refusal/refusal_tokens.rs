//! Refusal tokens (METHOD §4): the tokens a model's refusals begin with, whose probability at
//! the last prompt position makes up the refusal score: its family's when it has a known
//! family, else the first tokens of its own greedy refusals.

use burn::tensor::Tensor;

use super::EncodedPrompts;
use super::complete::{FirstStep, complete};
use super::judge::starts_refusal;
use super::score::token_log_probs;
use crate::load::TextAssets;
use crate::model::{Architecture, Llama, ModelConfig, NoHook};
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
        token_log_probs(logits, &self.ids)
    }
}
