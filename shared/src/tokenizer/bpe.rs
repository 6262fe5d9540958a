//! Byte-level BPE vocabularies from GGUF (`tokenizer.ggml.model = "gpt2"`: Qwen2, SmolLM,
//! Llama 3, ...): merges as listed, and the pre-tokenizer regexes llama.cpp selects for
//! `tokenizer.ggml.pre`, so that token ids match llama.cpp exactly.

use tokenizers::SplitDelimiterBehavior;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};

use super::{GgufVocab, TokenizerError};

/// GPT-2 split regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_GPT2`). llama.cpp's own pattern lacks
/// the trailing `|\s+`, but its splitter keeps unmatched whitespace as separate pieces, which is
/// what the extra alternative produces with an isolating split.
const REGEX_GPT2: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3 split regex, with the case-insensitive contractions spelt out as llama.cpp does.
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2 split regex: like Llama 3 but digits are split one by one.
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Single digits, split off before the GPT-2 regex by StarCoder-style tokenizers (SmolLM).
const REGEX_DIGIT: &str = r"\p{N}";

/// How a GGUF byte-level BPE vocabulary splits text before merging.
pub(super) struct PreTokenizerSpec {
    /// Regexes applied in order; each one splits every piece left by the previous one, keeping
    /// both matches and the text between them.
    regexes: &'static [&'static str],
    /// Whether a whole pre-token found in the vocabulary is emitted without running merges
    /// (llama.cpp `ignore_merges`, set for Llama 3).
    pub(super) ignore_merges: bool,
}

impl PreTokenizerSpec {
    /// Resolves `tokenizer.ggml.pre` the way llama.cpp's vocabulary loader does, for the
    /// families whose pre-tokenizer is nothing more than these regexes.
    pub(super) fn from_name(pre: Option<&str>) -> Result<Self, TokenizerError> {
        let spec = |regexes, ignore_merges| PreTokenizerSpec {
            regexes,
            ignore_merges,
        };
        // llama.cpp falls back to its "default" regex set when the key is absent.
        let Some(name) = pre else {
            return Ok(spec(DEFAULT_REGEXES, false));
        };
        Ok(match name {
            "default" => spec(DEFAULT_REGEXES, false),
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" => spec(&[REGEX_LLAMA3], true),
            "dbrx" | "smaug-bpe" => spec(&[REGEX_LLAMA3], false),
            "qwen2" | "deepseek-r1-qwen" | "megrez" | "stablelm2" | "hunyuan" | "solar-open" => {
                spec(&[REGEX_QWEN2], false)
            }
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" => spec(&[REGEX_DIGIT, REGEX_GPT2], false),
            "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "exaone4"
            | "granite-docling" | "gigachat" => spec(&[REGEX_GPT2], false),
            other => return Err(TokenizerError::UnknownPreTokenizer(other.to_owned())),
        })
    }
}

/// llama.cpp's "default" BPE pre-tokenizer: punctuation runs, then GPT-2, then digit runs,
/// then groups of three ASCII digits.
const DEFAULT_REGEXES: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    REGEX_GPT2,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// The byte-level BPE model, pre-tokenizer and decoder of `v` over `vocab`.
pub(super) fn tokenizer(
    v: &GgufVocab,
    vocab: Vocab,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let spec = PreTokenizerSpec::from_name(v.pre.as_deref())?;
    let merges = v
        .merges
        .iter()
        .map(|m| {
            // Split at the first space after the first character, as llama.cpp does, so a
            // merge whose left part starts with a space character still parses.
            let start = m.chars().next().map_or(0, char::len_utf8);
            m[start..]
                .find(' ')
                .map(|p| (m[..start + p].to_owned(), m[start + p + 1..].to_owned()))
                .ok_or_else(|| TokenizerError::InvalidVocab(format!("malformed merge {m:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(spec.ignore_merges)
        .build()
        .map_err(TokenizerError::Backend)?;

    let mut pre: Vec<PreTokenizerWrapper> = Vec::with_capacity(spec.regexes.len() + 1);
    for regex in spec.regexes {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(TokenizerError::Backend)?;
        pre.push(split.into());
    }
    // The regexes above already split the text; ByteLevel only maps bytes to symbols.
    pre.push(ByteLevel::new(false, false, false).into());

    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner
        .with_pre_tokenizer(Some(Sequence::new(pre)))
        .with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}
