//! Tokenizers described by GGUF metadata (`tokenizer.ggml.*`): the vocabulary as the file
//! stores it, and the tokenizer llama.cpp would build from it.

use tokenizers::AddedToken;
use tokenizers::models::bpe::Vocab;

use super::bpe::PreTokenizerSpec;
use super::{Tokenizer, TokenizerError, bpe, spm};

/// Tokenizer description as stored in GGUF metadata (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: pre-tokenizer name, e.g. `"smollm"`, `"qwen2"`, `"llama-bpe"`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by token id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte); empty when absent.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges` as `"left right"` strings, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.scores`; empty when absent.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// Whether the model expects a BOS token at the start of a prompt.
    pub add_bos: bool,
    /// Whether the model expects an EOS token at the end of a prompt.
    pub add_eos: bool,
    /// `tokenizer.ggml.add_space_prefix`: SentencePiece vocabularies put a space before text
    /// that starts a prompt or follows a special token (llama.cpp's default: yes).
    pub add_space_prefix: bool,
}

// GGUF token types that llama.cpp matches literally in text before BPE.
/// `tokenizer.ggml.token_type` of the unknown token.
pub(super) const TOKEN_TYPE_UNKNOWN: i32 = 2;
/// `tokenizer.ggml.token_type` of control tokens (`<|im_start|>`, `<|endoftext|>`, ...).
pub(super) const TOKEN_TYPE_CONTROL: i32 = 3;
/// `tokenizer.ggml.token_type` of user-defined tokens (e.g. Qwen's `<tool_call>`).
pub(super) const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// `tokenizer.ggml.token_type` of byte-fallback tokens (`<0x0A>`).
pub(super) const TOKEN_TYPE_BYTE: i32 = 6;

impl Tokenizer {
    /// Builds a tokenizer from GGUF vocabulary metadata, as llama.cpp does.
    ///
    /// Byte-level BPE (`model = "gpt2"`, with the pre-tokenizers llama.cpp knows) and
    /// SentencePiece (`model = "llama"`) are supported; other models give
    /// [`TokenizerError::UnsupportedModel`] and unknown pre-tokenizer names
    /// [`TokenizerError::UnknownPreTokenizer`].
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
        let n = v.tokens.len();
        super::check_vocab_bounds(n, v.tokens.iter().map(String::as_str), v.merges.len())?;
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} token types for {n} tokens",
                v.token_types.len()
            )));
        }
        for (name, id) in [("BOS", v.bos_id), ("EOS", v.eos_id)] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(TokenizerError::InvalidVocab(format!(
                    "{name} id {id} outside a vocabulary of {n} tokens"
                )));
            }
        }

        let mut vocab = Vocab::with_capacity(n);
        for (id, token) in v.tokens.iter().enumerate() {
            let id = u32::try_from(id)
                .map_err(|_| TokenizerError::InvalidVocab("more than 2^32 tokens".into()))?;
            if vocab.insert(token.clone(), id).is_some() {
                return Err(TokenizerError::InvalidVocab(format!(
                    "duplicate token {token:?}"
                )));
            }
        }
        let mut inner = match v.model.as_str() {
            "gpt2" => bpe::tokenizer(v, vocab)?,
            "llama" => spm::tokenizer(v, vocab)?,
            _ => return Err(TokenizerError::UnsupportedModel(v.model.clone())),
        };

        // Control and unknown tokens are "special" (skippable when decoding); user-defined ones
        // are ordinary text that must nevertheless never be split.
        let mut special = Vec::new();
        let mut added = Vec::new();
        for (id, (token, &ty)) in v.tokens.iter().zip(&v.token_types).enumerate() {
            if matches!(
                ty,
                TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED
            ) {
                let is_special = ty != TOKEN_TYPE_USER_DEFINED;
                added.push(AddedToken::from(token.clone(), is_special).normalized(false));
                special.push((id as u32, token.clone()));
            }
        }
        // Already-known contents keep their vocabulary ids, so no new ids are created here.
        inner.add_tokens(&added);

        Ok(Tokenizer {
            inner,
            id_to_token: v.tokens.clone(),
            special,
            bos_id: v.bos_id,
            eos_id: v.eos_id,
            add_bos: v.add_bos,
        })
    }
}

/// Reads the tokenizer description out of GGUF metadata.
pub fn gguf_vocab(file: &crate::gguf::GgufFile) -> Result<GgufVocab, TokenizerError> {
    use crate::gguf::MetadataValue;

    const MODEL: &str = "tokenizer.ggml.model";
    const PRE: &str = "tokenizer.ggml.pre";
    const TOKENS: &str = "tokenizer.ggml.tokens";
    const TYPES: &str = "tokenizer.ggml.token_type";
    const MERGES: &str = "tokenizer.ggml.merges";
    const SCORES: &str = "tokenizer.ggml.scores";
    const BOS: &str = "tokenizer.ggml.bos_token_id";
    const EOS: &str = "tokenizer.ggml.eos_token_id";
    const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    const SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

    let string = |key: &'static str| -> Result<Option<String>, TokenizerError> {
        file.get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or(TokenizerError::InvalidMetadata {
                        key,
                        expected: "a string",
                    })
            })
            .transpose()
    };
    let array = |key: &'static str| -> Result<Option<&[MetadataValue]>, TokenizerError> {
        file.get(key)
            .map(|v| {
                v.as_array().ok_or(TokenizerError::InvalidMetadata {
                    key,
                    expected: "an array",
                })
            })
            .transpose()
    };
    let strings = |key: &'static str| -> Result<Vec<String>, TokenizerError> {
        array(key)?
            .unwrap_or_default()
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or(TokenizerError::InvalidMetadata {
                        key,
                        expected: "an array of strings",
                    })
            })
            .collect()
    };
    let id = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
        file.get(key)
            .map(|v| {
                v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or(
                    TokenizerError::InvalidMetadata {
                        key,
                        expected: "a token id",
                    },
                )
            })
            .transpose()
    };
    let flag = |key: &'static str| -> Result<Option<bool>, TokenizerError> {
        file.get(key)
            .map(|v| {
                v.as_bool().ok_or(TokenizerError::InvalidMetadata {
                    key,
                    expected: "a boolean",
                })
            })
            .transpose()
    };

    let model = string(MODEL)?.ok_or(TokenizerError::MissingMetadata(MODEL))?;
    let pre = string(PRE)?;
    let tokens = strings(TOKENS)?;
    if tokens.is_empty() {
        return Err(TokenizerError::MissingMetadata(TOKENS));
    }
    let token_types = array(TYPES)?
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let ty = match *v {
                MetadataValue::I32(x) => Some(x),
                // Some writers use another integer width; accept any that fits.
                _ => v.as_u64().and_then(|x| i32::try_from(x).ok()),
            };
            ty.ok_or(TokenizerError::InvalidMetadata {
                key: TYPES,
                expected: "an array of i32",
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let scores = array(SCORES)?
        .unwrap_or_default()
        .iter()
        .map(|v| {
            // Scores are f32 in every converter; narrowing is exact for them.
            v.as_f64()
                .map(|x| x as f32)
                .ok_or(TokenizerError::InvalidMetadata {
                    key: SCORES,
                    expected: "an array of f32",
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // llama.cpp's defaults when the flags are absent: SentencePiece and Llama 3 vocabularies
    // start prompts with BOS, other BPE vocabularies do not.
    let default_add_bos = model == "llama"
        || PreTokenizerSpec::from_name(pre.as_deref()).is_ok_and(|s| s.ignore_merges);
    Ok(GgufVocab {
        merges: strings(MERGES)?,
        bos_id: id(BOS)?,
        eos_id: id(EOS)?,
        add_bos: flag(ADD_BOS)?.unwrap_or(default_add_bos),
        add_eos: flag(ADD_EOS)?.unwrap_or(false),
        add_space_prefix: flag(SPACE_PREFIX)?.unwrap_or(true),
        model,
        pre,
        tokens,
        token_types,
        scores,
    })
}
