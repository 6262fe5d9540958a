//! Chat-formatted, tokenized prompts and their post-instruction positions (METHOD §2).

use crate::load::TextAssets;

use super::Prompt;
use super::prompts::{StudyPrompts, builtin_harmful, builtin_harmless, hold_out};
use crate::pipeline::PipelineError;

/// Token ids of chat-formatted prompts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompts {
    /// One id sequence per prompt, in the order of the prompts.
    pub ids: Vec<Vec<u32>>,
    /// How many tokens after the instruction every prompt shares: the template's
    /// post-instruction tokens (5 for ChatML: `<|im_end|>`, `\n`, `<|im_start|>`, `assistant`,
    /// `\n`). Positions `-post_instruction..=-1` are the candidate positions of METHOD §3.
    pub post_instruction: usize,
}

impl EncodedPrompts {
    /// Formats every instruction as a user turn (with `system` as system prompt, if given) and
    /// tokenizes it.
    ///
    /// # Errors
    ///
    /// Template and tokenizer errors.
    pub fn new(
        text: &TextAssets,
        prompts: &[Prompt],
        system: Option<&str>,
    ) -> Result<EncodedPrompts, PipelineError> {
        let mut ids = Vec::with_capacity(prompts.len());
        let mut post_instruction = usize::MAX;
        for prompt in prompts {
            let formatted = text.chat.user_prompt(&prompt.instruction, system)?;
            let full = text.tokenizer.encode(&formatted.text, false)?;
            let head = text.tokenizer.encode(
                &format!("{}{}", formatted.prefix, prompt.instruction),
                false,
            )?;
            // Where BPE merges across the instruction's end the head is not a prefix of the
            // whole; the suffix tokenized alone is then the best count available.
            let n = if full.len() > head.len() && full.starts_with(&head) {
                full.len() - head.len()
            } else {
                text.tokenizer.encode(&formatted.suffix, false)?.len()
            };
            post_instruction = post_instruction.min(n.clamp(1, full.len().max(1)));
            ids.push(full);
        }
        Ok(EncodedPrompts {
            ids,
            post_instruction: if prompts.is_empty() {
                1
            } else {
                post_instruction
            },
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The post-instruction positions counted from the end, earliest first: `[-n, ..., -1]`.
    pub fn positions(&self) -> Vec<isize> {
        (1..=self.post_instruction as isize)
            .rev()
            .map(|k| -k)
            .collect()
    }

    /// Prompt indices in batches of at most `batch_size`, grouping prompts of similar length
    /// so that little compute goes to padding.
    pub fn batches(&self, batch_size: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.ids.len()).collect();
        order.sort_by_key(|&i| self.ids[i].len());
        order
            .chunks(batch_size.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// The id sequences of one batch.
    pub fn select(&self, indices: &[usize]) -> Vec<Vec<u32>> {
        indices.iter().map(|&i| self.ids[i].clone()).collect()
    }

    /// Two disjoint halves, the prompts at even and at odd indices (a split's sets are already
    /// shuffled), with the same post-instruction positions as the whole; an odd prompt out
    /// goes to the first.
    pub fn halves(&self) -> (EncodedPrompts, EncodedPrompts) {
        let half = |parity: usize| EncodedPrompts {
            ids: self.ids.iter().skip(parity).step_by(2).cloned().collect(),
            post_instruction: self.post_instruction,
        };
        (half(0), half(1))
    }
}

/// Training and validation prompts of both kinds, encoded: what directions are extracted from
/// and what AIRD is fitted on.
#[derive(Debug, Clone)]
pub struct EncodedSplit {
    pub harmful: EncodedPrompts,
    pub harmless: EncodedPrompts,
    pub val_harmful: EncodedPrompts,
    pub val_harmless: EncodedPrompts,
}

impl EncodedSplit {
    /// Encodes the four sets as user turns without a system prompt.
    ///
    /// # Errors
    ///
    /// Template and tokenizer errors.
    pub fn new(
        text: &TextAssets,
        harmful: &[Prompt],
        harmless: &[Prompt],
        val_harmful: &[Prompt],
        val_harmless: &[Prompt],
    ) -> Result<EncodedSplit, PipelineError> {
        let encode = |p: &[Prompt]| EncodedPrompts::new(text, p, None);
        Ok(EncodedSplit {
            harmful: encode(harmful)?,
            harmless: encode(harmless)?,
            val_harmful: encode(val_harmful)?,
            val_harmless: encode(val_harmless)?,
        })
    }

    /// `n_train` training and `n_val` validation prompts of each built-in set, held out as
    /// [`hold_out`] does with `seed`.
    ///
    /// # Errors
    ///
    /// Template and tokenizer errors.
    pub fn builtin(
        text: &TextAssets,
        n_train: usize,
        n_val: usize,
        seed: u64,
    ) -> Result<EncodedSplit, PipelineError> {
        let (harmful, val_harmful) = hold_out(builtin_harmful(), n_train, n_val, seed);
        let (harmless, val_harmless) = hold_out(builtin_harmless(), n_train, n_val, seed);
        EncodedSplit::new(text, &harmful, &harmless, &val_harmful, &val_harmless)
    }
}

/// A study's training and validation sets, encoded.
impl StudyPrompts {
    /// The training and validation sets as token ids.
    ///
    /// # Errors
    ///
    /// Template and tokenizer errors.
    pub fn encoded_split(&self, text: &TextAssets) -> Result<EncodedSplit, PipelineError> {
        EncodedSplit::new(
            text,
            &self.harmful,
            &self.harmless,
            &self.val_harmful,
            &self.val_harmless,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatTemplate;
    use crate::tokenizer::Tokenizer;

    /// A word-level tokenizer whose ChatML markers are added tokens.
    fn assets() -> TextAssets {
        let json = br#"{
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [
                {"id": 0, "content": "<|im_start|>", "special": true, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
                {"id": 1, "content": "<|im_end|>", "special": true, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<|im_start|>": 0, "<|im_end|>": 1, "user": 2, "assistant": 3, "say": 4, "hi": 5, "please": 6, "[UNK]": 7}, "unk_token": "[UNK]"}
        }"#;
        let tokenizer = Tokenizer::from_json_bytes(json, None).unwrap();
        let chat = ChatTemplate::chatml("", "<|im_end|>").unwrap();
        TextAssets { tokenizer, chat }
    }

    #[test]
    fn halves_are_disjoint_cover_every_prompt_and_keep_the_positions() {
        let encoded = EncodedPrompts {
            ids: (0..5u32).map(|i| vec![i, 100 + i]).collect(),
            post_instruction: 2,
        };
        let (a, b) = encoded.halves();
        assert_eq!(a.ids, [[0, 100], [2, 102], [4, 104]]);
        assert_eq!(b.ids, [[1, 101], [3, 103]]);
        assert_eq!((a.post_instruction, b.post_instruction), (2, 2));
    }

    #[test]
    fn post_instruction_positions_are_the_template_tokens_after_the_instruction() {
        let text = assets();
        let prompts = [Prompt::new("say hi"), Prompt::new("say hi please")];
        let encoded = EncodedPrompts::new(&text, &prompts, None).unwrap();
        // `<|im_start|> user say hi <|im_end|> <|im_start|> assistant`: whitespace splitting drops
        // the newlines, so three template tokens follow the instruction here.
        assert_eq!(encoded.ids[0], [0, 2, 4, 5, 1, 0, 3]);
        assert_eq!(encoded.post_instruction, 3);
        assert_eq!(encoded.positions(), [-3, -2, -1]);
        assert_eq!(encoded.batches(1), [vec![0], vec![1]]);
    }
}
