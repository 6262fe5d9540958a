//! SentencePiece vocabularies from GGUF (`tokenizer.ggml.model = "llama"`: Llama 2, Mistral,
//! Phi-3, ...).
//!
//! llama.cpp tokenizes them by repeatedly merging the adjacent pair of pieces whose
//! concatenation is the highest-scoring vocabulary entry, starting from single characters and
//! spelling characters outside the vocabulary as `<0xNN>` byte tokens; spaces are written `▁`
//! and a space is put before text that starts a prompt or follows a special token. That is
//! byte-fallback BPE whose merges are ranked by the merged piece's score, which is how Hugging
//! Face converts the same vocabularies (`SentencePieceExtractor`); building it as such keeps
//! decoding, streaming and `tokenizer.json` export the same as for byte-level BPE.

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence};

use super::gguf::{TOKEN_TYPE_BYTE, TOKEN_TYPE_UNKNOWN};
use super::{GgufVocab, TokenizerError};

/// SentencePiece's space marker.
const SPACE: &str = "\u{2581}";

/// The score-ranked BPE model, normalizer and decoder of `v` over `vocab`.
pub(super) fn tokenizer(
    v: &GgufVocab,
    vocab: Vocab,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    if v.scores.len() != v.tokens.len() {
        return Err(if v.scores.is_empty() {
            TokenizerError::MissingMetadata("tokenizer.ggml.scores")
        } else {
            TokenizerError::InvalidVocab(format!(
                "{} scores for {} tokens",
                v.scores.len(),
                v.tokens.len()
            ))
        });
    }
    if let Some(i) = v.scores.iter().position(|s| !s.is_finite()) {
        return Err(TokenizerError::InvalidVocab(format!(
            "token {i} ({:?}) has score {}",
            v.tokens[i], v.scores[i]
        )));
    }
    let merges = merges_by_score(&v.tokens, &v.scores, &vocab);
    let has_bytes = v.token_types.contains(&TOKEN_TYPE_BYTE);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(has_bytes)
        .fuse_unk(true);
    let unknown = v.token_types.iter().position(|&t| t == TOKEN_TYPE_UNKNOWN);
    if let Some(unk) = unknown {
        builder = builder.unk_token(v.tokens[unk].clone());
    }
    let bpe = builder.build().map_err(TokenizerError::Backend)?;

    let replace = |from: &str, to: &str| Replace::new(from, to).map_err(TokenizerError::Backend);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::with_capacity(2);
    if v.add_space_prefix {
        normalizers.push(Prepend::new(SPACE.to_owned()).into());
    }
    normalizers.push(replace(" ", SPACE)?.into());
    let mut decoders: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(replace(SPACE, " ")?),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    // llama.cpp drops the space the prefix put before the first piece when detokenizing.
    if v.add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_normalizer(Some(Sequence::new(normalizers)))
        .with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

/// Every split of a vocabulary piece into two vocabulary pieces, as a merge ranked by the whole
/// piece's score (highest first; ties: longer left part, then longer right part, then by the
/// parts' ids), the order Hugging Face's SentencePiece converter gives them.
fn merges_by_score(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    struct Merge {
        score: f32,
        left_chars: usize,
        right_chars: usize,
        ids: (u32, u32),
    }
    let mut merges = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let start = merges.len();
        let n_chars = piece.chars().count();
        for (left_chars, (at, _)) in piece.char_indices().enumerate().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&l), Some(&r)) = (vocab.get(left), vocab.get(right)) {
                merges.push(Merge {
                    score,
                    left_chars,
                    right_chars: n_chars - left_chars,
                    ids: (l, r),
                });
            }
        }
        merges[start..].sort_by_key(|m| m.ids);
    }
    // Stable, so equal keys keep the order of the pieces in the vocabulary.
    merges.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
    });
    // Ids are indices into `tokens`: the vocabulary was built from it.
    let text = |id: u32| tokens[id as usize].clone();
    merges
        .into_iter()
        .map(|m| (text(m.ids.0), text(m.ids.1)))
        .collect()
}
