//! Tokenizers for the models Refusal Lens loads.
//!
//! Two sources are supported:
//!
//! * GGUF metadata (`tokenizer.ggml.*`), described by [`GgufVocab`] and tokenized as llama.cpp
//!   does: byte-level BPE (`tokenizer.ggml.model = "gpt2"`, [`bpe`]) and SentencePiece
//!   (`"llama"`, [`spm`]).
//! * Hugging Face `tokenizer.json` (+ optional `tokenizer_config.json`).
//!
//! Both are wrapped around [`tokenizers::Tokenizer`]. Special tokens written literally in the
//! input (e.g. `<|im_start|>`) are always matched as single tokens, which is what llama.cpp does
//! for chat prompts (`parse_special = true`).

use std::collections::BTreeSet;

mod bpe;
mod gguf;
mod spm;

pub use gguf::{GgufVocab, gguf_vocab};

/// Errors from building or using a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a tokenizer family this crate cannot build.
    #[error(
        "unsupported tokenizer model {0:?} (supported: byte-level BPE \"gpt2\", SentencePiece \"llama\")"
    )]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not know. Guessing would give
    /// silently different token ids, so this is an error.
    #[error("unknown pre-tokenizer {0:?}")]
    UnknownPreTokenizer(String),
    /// The vocabulary description is inconsistent (duplicate tokens, bad merges, length mismatch).
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),
    /// A required GGUF metadata key is absent.
    #[error("missing GGUF metadata key {0}")]
    MissingMetadata(&'static str),
    /// A GGUF metadata key has an unexpected type or value.
    #[error("GGUF metadata key {key} is not {expected}")]
    InvalidMetadata {
        /// The offending key.
        key: &'static str,
        /// What the key should have held.
        expected: &'static str,
    },
    /// `tokenizer.json` or `tokenizer_config.json` could not be parsed.
    #[error("invalid tokenizer JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The `tokenizers` library reported an error.
    #[error("tokenizer backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A token id outside the vocabulary was passed in.
    #[error("token id {0} is outside the vocabulary")]
    UnknownId(u32),
    /// A BOS token was requested but the model defines none.
    #[error("the model defines no BOS token")]
    NoBosToken,
}

/// Token texts that end a turn or a generation in the chat formats we care about (the names
/// llama.cpp treats as end-of-generation).
const STOP_TOKEN_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<EOT>",
];

/// The most token ids a vocabulary may span: past every real one (Gemma's 262k) and far from
/// what would exhaust memory.
const MAX_VOCAB: usize = 1 << 21;

/// The longest token text accepted, in bytes; real vocabularies' longest are a few hundred
/// (runs of spaces or `=` in code models).
const MAX_TOKEN_BYTES: usize = 4096;

/// The largest `tokenizer.json` read; real ones are under 35 MB (Gemma 3's).
const MAX_TOKENIZER_JSON_BYTES: usize = 64 << 20;

/// Refuses a vocabulary past what any real tokenizer has, before anything is sized by it: a
/// model file is not trusted to be sane. Merges are not bounded by the token count: vocabularies
/// converted from tiktoken list more merges than tokens (Llama 3: 280147 for 128256).
fn check_vocab_bounds<'a>(
    n_tokens: usize,
    tokens: impl IntoIterator<Item = &'a str>,
    n_merges: usize,
) -> Result<(), TokenizerError> {
    if n_tokens > MAX_VOCAB {
        return Err(TokenizerError::InvalidVocab(format!(
            "{n_tokens} tokens; a vocabulary has at most {MAX_VOCAB}"
        )));
    }
    if n_merges > MAX_VOCAB {
        return Err(TokenizerError::InvalidVocab(format!(
            "{n_merges} merges for {n_tokens} tokens; a vocabulary has at most {MAX_VOCAB}"
        )));
    }
    if let Some(long) = tokens.into_iter().find(|t| t.len() > MAX_TOKEN_BYTES) {
        let start: String = long.chars().take(24).collect();
        return Err(TokenizerError::InvalidVocab(format!(
            "a token of {} bytes ({start:?}…); tokens are at most {MAX_TOKEN_BYTES}",
            long.len()
        )));
    }
    Ok(())
}

/// How many tokens and merges the model of a `tokenizer.json` lists, counted without keeping
/// them, so that their bounds hold before the tokenizer library allocates for them (zeros
/// where it has none or is malformed, which the library then reports).
fn json_model_counts(tokenizer_json: &[u8]) -> (usize, usize) {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

    #[derive(serde::Deserialize)]
    struct Outline {
        model: Option<ModelOutline>,
    }
    #[derive(serde::Deserialize)]
    struct ModelOutline {
        #[serde(default, deserialize_with = "count")]
        vocab: usize,
        #[serde(default, deserialize_with = "count")]
        merges: usize,
    }
    /// The entries of a list or a map.
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list or a map")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(n)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(n)
        }
    }
    fn count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        d.deserialize_any(Count)
    }
    serde_json::from_slice::<Outline>(tokenizer_json)
        .ok()
        .and_then(|o| o.model)
        .map_or((0, 0), |m| (m.vocab, m.merges))
}

/// A text tokenizer with the special-token information needed for chat generation.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token text by id, kept so [`Tokenizer::id_to_token`] can hand out borrowed strings.
    id_to_token: Vec<String>,
    /// Tokens matched literally in text (control, user-defined, unknown / added tokens).
    special: Vec<(u32, String)>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.id_to_token.len())
            .field("special_tokens", &self.special.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// Builds a tokenizer from a Hugging Face `tokenizer.json`, taking BOS/EOS and the
    /// add-BOS default from `tokenizer_config.json` when given.
    pub fn from_json_bytes(
        tokenizer_json: &[u8],
        tokenizer_config_json: Option<&[u8]>,
    ) -> Result<Tokenizer, TokenizerError> {
        if tokenizer_json.len() > MAX_TOKENIZER_JSON_BYTES {
            return Err(TokenizerError::InvalidVocab(format!(
                "{} MiB of tokenizer description; at most {} MiB",
                tokenizer_json.len() >> 20,
                MAX_TOKENIZER_JSON_BYTES >> 20
            )));
        }
        let (n_listed, n_merges) = json_model_counts(tokenizer_json);
        check_vocab_bounds(n_listed, std::iter::empty(), n_merges)?;
        let inner =
            tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(TokenizerError::Backend)?;

        let vocab = inner.get_vocab(true);
        check_vocab_bounds(vocab.len(), vocab.keys().map(String::as_str), n_merges)?;
        let size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        // Ids are a table's indices: a hostile file's id 2^31 would allocate gigabytes.
        if size > MAX_VOCAB || size > 2 * vocab.len() + 1024 {
            return Err(TokenizerError::InvalidVocab(format!(
                "token ids run to {} for {} tokens; a vocabulary spans at most {MAX_VOCAB} ids, \
                 with few gaps",
                size - 1,
                vocab.len()
            )));
        }
        let mut id_to_token = vec![String::new(); size];
        for (token, id) in vocab {
            id_to_token[id as usize] = token;
        }
        let mut special: Vec<(u32, String)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content))
            .collect();
        special.sort_unstable();

        let config: Option<serde_json::Value> = tokenizer_config_json
            .map(serde_json::from_slice)
            .transpose()?;
        let token_id = |key: &str| -> Option<u32> {
            let value = config.as_ref()?.get(key)?;
            // Either a plain string or an AddedToken object with a "content" field.
            let text = value.as_str().or_else(|| value.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let bos_id = token_id("bos_token");
        let eos_id = token_id("eos_token");
        let add_bos = match config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(serde_json::Value::as_bool)
        {
            Some(add) => add,
            // Without the flag (e.g. Llama 3) the post-processor decides; ask it.
            None => bos_id.is_some_and(|bos| {
                inner
                    .encode_fast("", true)
                    .is_ok_and(|e| e.get_ids().first() == Some(&bos))
            }),
        };

        Ok(Tokenizer {
            inner,
            id_to_token,
            special,
            bos_id,
            eos_id,
            add_bos,
        })
    }

    /// Encodes text, matching special tokens written literally (e.g. `"<|im_start|>"`) as
    /// single ids, as llama.cpp does with `parse_special = true` for chat prompts.
    ///
    /// `add_bos` prepends the BOS token; see [`Tokenizer::add_bos`] for the model's default.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        // Post-processors from tokenizer.json are bypassed so BOS handling is the same for
        // every source and under the caller's control.
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(TokenizerError::Backend)?;
        let ids = encoding.get_ids();
        if !add_bos {
            return Ok(ids.to_vec());
        }
        let bos = self.bos_id.ok_or(TokenizerError::NoBosToken)?;
        let mut out = Vec::with_capacity(ids.len() + 1);
        out.push(bos);
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// The tokenizer as a Hugging Face `tokenizer.json`, e.g. to write a Hugging Face
    /// checkpoint of a model loaded from GGUF.
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(true).map_err(TokenizerError::Backend)
    }

    /// Decodes ids to text; `skip_special` drops control tokens such as `<|im_end|>`.
    ///
    /// Byte sequences that are not valid UTF-8 are replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.id_to_token.len())
        {
            return Err(TokenizerError::UnknownId(bad));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(TokenizerError::Backend)
    }

    /// Starts an incremental decoder for generated tokens.
    pub fn stream(&self, skip_special: bool) -> TokenStream<'_> {
        TokenStream {
            tokenizer: self,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special,
        }
    }

    /// The vocabulary entry for `id`, in the tokenizer's internal spelling (byte-level BPE
    /// writes a leading space as `Ġ`).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.id_to_token.get(id as usize).map(String::as_str)
    }

    /// The id of a vocabulary entry or added token, spelt as in [`Tokenizer::id_to_token`].
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.id_to_token.len()
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// The end-of-sequence token, if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Text of the BOS token (for chat templates' `bos_token`).
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_id.and_then(|id| self.id_to_token(id))
    }

    /// Text of the EOS token (for chat templates' `eos_token`).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_id.and_then(|id| self.id_to_token(id))
    }

    /// Whether the model expects prompts to start with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Ids that end a turn or a generation: EOS plus tokens such as `<|im_end|>`,
    /// `<|endoftext|>` or `<|eot_id|>` present in the vocabulary. Sorted, without duplicates.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut ids: BTreeSet<u32> = STOP_TOKEN_TEXTS
            .iter()
            .filter_map(|t| self.token_to_id(t))
            .collect();
        ids.extend(self.eos_id);
        ids.into_iter().collect()
    }

    /// Tokens matched literally in text (control, user-defined and added tokens), by id.
    pub fn special_tokens(&self) -> Vec<(u32, String)> {
        self.special.clone()
    }
}

/// Incremental decoder for generation: feed ids one at a time, get text only once it forms
/// complete UTF-8.
///
/// Each step decodes a short window of recent ids and returns what the new id added, so
/// decoders that depend on context (leading-space handling, multi-byte characters split over
/// several byte tokens) behave exactly like a full [`Tokenizer::decode`].
pub struct TokenStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the decoding window in `ids`.
    prefix_offset: usize,
    /// End of the text already returned, as an index into `ids`.
    read_offset: usize,
    skip_special: bool,
}

impl TokenStream<'_> {
    /// Appends `id`; returns the new text it completes, or `None` while a character is still
    /// incomplete (or the token renders as nothing, e.g. a skipped special token).
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        if id as usize >= self.tokenizer.vocab_size() {
            return Err(TokenizerError::UnknownId(id));
        }
        self.ids.push(id);
        let (prefix, text) = self.window()?;
        // A trailing U+FFFD means the last token ended inside a multi-byte character.
        if text.len() <= prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let new = Self::delta(&prefix, &text);
        // Slide the window so decoding cost stays constant however long the generation gets.
        self.ids.drain(..self.prefix_offset);
        self.prefix_offset = self.read_offset - self.prefix_offset;
        self.read_offset = self.ids.len();
        Ok(Some(new))
    }

    /// Returns any text still held back (an incomplete character at the end of generation,
    /// rendered with U+FFFD), and resets the pending state.
    pub fn flush(&mut self) -> Result<Option<String>, TokenizerError> {
        let (prefix, text) = self.window()?;
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        let new = Self::delta(&prefix, &text);
        Ok((!new.is_empty()).then_some(new))
    }

    /// Decodes the already-returned part of the window and the whole window.
    fn window(&self) -> Result<(String, String), TokenizerError> {
        let t = self.tokenizer;
        let prefix = t.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let text = t.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        Ok((prefix, text))
    }

    /// The part of `text` after `prefix`. Decoding is prefix-stable for the decoders we use;
    /// if some decoder ever rewrote earlier text, fall back to the common prefix rather than
    /// slicing inside a character.
    fn delta(prefix: &str, text: &str) -> String {
        let common = prefix
            .char_indices()
            .zip(text.chars())
            .find(|((_, a), b)| a != b)
            .map_or(prefix.len().min(text.len()), |((i, _), _)| i);
        text.get(common..).unwrap_or_default().to_owned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::gguf::{TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
    use super::*;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;

    /// A tiny byte-level BPE vocabulary: all 256 byte symbols, a few merges and ChatML
    /// control tokens.
    fn toy_vocab(pre: &str) -> GgufVocab {
        let bytes: Vec<String> = ByteLevel::alphabet()
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut tokens = vec![
            "<|endoftext|>".to_owned(),
            "<|im_start|>".to_owned(),
            "<|im_end|>".to_owned(),
        ];
        tokens.extend(bytes);
        let merges: Vec<String> = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        for m in &merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<tool>".to_owned());
        let mut token_types = vec![1; tokens.len()];
        token_types[..3].fill(TOKEN_TYPE_CONTROL);
        *token_types.last_mut().unwrap() = TOKEN_TYPE_USER_DEFINED;
        GgufVocab {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            token_types,
            merges,
            scores: Vec::new(),
            bos_id: Some(1),
            eos_id: Some(2),
            add_bos: false,
            add_eos: false,
            add_space_prefix: false,
        }
    }

    pub(crate) fn toy() -> Tokenizer {
        Tokenizer::from_gguf_vocab(&toy_vocab("smollm")).expect("toy tokenizer builds")
    }

    #[test]
    fn merges_apply() {
        let t = toy();
        let ids = t.encode("hello world", false).unwrap();
        let text: Vec<&str> = ids.iter().map(|&i| t.id_to_token(i).unwrap()).collect();
        assert_eq!(text, ["hello", "Ġworld"]);
    }

    #[test]
    fn special_tokens_in_text_are_single_ids() {
        let t = toy();
        let ids = t
            .encode("<|im_start|>hello<|im_end|><tool>", false)
            .unwrap();
        let hello = t.token_to_id("hello").unwrap();
        let tool = t.token_to_id("<tool>").unwrap();
        assert_eq!(ids, [1, hello, 2, tool]);
        // Control tokens are skippable, user-defined ones are text.
        assert_eq!(t.decode(&ids, true).unwrap(), "hello<tool>");
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            "<|im_start|>hello<|im_end|><tool>"
        );
    }

    #[test]
    fn bos_is_prepended_on_request() {
        let t = toy();
        let ids = t.encode("hello", true).unwrap();
        assert_eq!(ids[0], 1);
        let mut v = toy_vocab("smollm");
        v.bos_id = None;
        let t = Tokenizer::from_gguf_vocab(&v).unwrap();
        assert!(matches!(
            t.encode("x", true),
            Err(TokenizerError::NoBosToken)
        ));
    }

    #[test]
    fn round_trip_ascii_multibyte_emoji() {
        for pre in ["smollm", "qwen2", "llama-bpe", "gpt-2", "default"] {
            let t = Tokenizer::from_gguf_vocab(&toy_vocab(pre)).unwrap();
            for s in [
                "hello world, 123 + 4567!\n\tdone  ",
                "Grüße, naïve café — 東京 Ελληνικά",
                "emoji 👍🏽 and 👨‍👩‍👧 family",
            ] {
                let ids = t.encode(s, false).unwrap();
                assert_eq!(t.decode(&ids, false).unwrap(), s, "pre {pre}");
            }
        }
    }

    #[test]
    fn stream_yields_complete_utf8_only() {
        let t = toy();
        let text = "a€👍b";
        let ids = t.encode(text, false).unwrap();
        // Every non-ASCII character here is several byte tokens.
        assert_eq!(ids.len(), 1 + 3 + 4 + 1);
        let mut stream = t.stream(false);
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(piece) = stream.push(id).unwrap() {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "partial character in {piece:?}"
                );
                pieces.push(piece);
            }
        }
        assert_eq!(pieces, ["a", "€", "👍", "b"]);
        assert_eq!(stream.flush().unwrap(), None);
    }

    #[test]
    fn stream_flushes_incomplete_tail_and_skips_special() {
        let t = toy();
        let euro = t.encode("€", false).unwrap();
        let mut stream = t.stream(true);
        assert_eq!(stream.push(2).unwrap(), None);
        assert_eq!(stream.push(euro[0]).unwrap(), None);
        assert_eq!(stream.flush().unwrap().as_deref(), Some("\u{FFFD}"));
        assert!(matches!(
            stream.push(9999),
            Err(TokenizerError::UnknownId(9999))
        ));
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error() {
        let err = Tokenizer::from_gguf_vocab(&toy_vocab("no-such-pre")).unwrap_err();
        assert!(matches!(err, TokenizerError::UnknownPreTokenizer(ref n) if n == "no-such-pre"));
    }

    #[test]
    fn unsupported_model_is_an_error() {
        let mut v = toy_vocab("smollm");
        v.model = "bert".into();
        assert!(matches!(
            Tokenizer::from_gguf_vocab(&v),
            Err(TokenizerError::UnsupportedModel(m)) if m == "bert"
        ));
    }

    #[test]
    fn decode_rejects_unknown_ids() {
        assert!(matches!(
            toy().decode(&[1, 100_000], false),
            Err(TokenizerError::UnknownId(100_000))
        ));
    }

    #[test]
    fn stop_ids_include_eos_and_turn_ends() {
        let t = toy();
        assert_eq!(t.stop_ids(), [0, 2]);
        assert_eq!(t.special_tokens().len(), 4);
    }

    #[test]
    fn pre_tokenizer_regexes_split_like_llama_cpp() {
        // Digits: SmolLM splits each digit, Llama 3 groups by three, Qwen2 splits each digit.
        let pieces = |pre: &str, s: &str| -> Vec<String> {
            let t = Tokenizer::from_gguf_vocab(&toy_vocab(pre)).unwrap();
            let mut p = tokenizers::PreTokenizedString::from(s);
            tokenizers::PreTokenizer::pre_tokenize(t.inner.get_pre_tokenizer().unwrap(), &mut p)
                .unwrap();
            p.get_splits(
                tokenizers::OffsetReferential::Original,
                tokenizers::OffsetType::Byte,
            )
            .into_iter()
            .map(|(s, _, _)| s.to_owned())
            .collect()
        };
        assert_eq!(pieces("smollm", "ab 1234"), ["ab", "Ġ", "1", "2", "3", "4"]);
        assert_eq!(pieces("llama-bpe", "ab 1234"), ["ab", "Ġ", "123", "4"]);
        assert_eq!(pieces("qwen2", "ab 1234"), ["ab", "Ġ", "1", "2", "3", "4"]);
        assert_eq!(
            pieces("llama-bpe", "I'M here\n\nok"),
            ["I", "'M", "Ġhere", "ĊĊ", "ok"]
        );
        assert_eq!(pieces("gpt-2", "I'M  here"), ["I", "'", "M", "Ġ", "Ġhere"]);
    }

    #[test]
    fn json_tokenizer_loads() {
        let v = toy_vocab("gpt-2");
        let t = Tokenizer::from_gguf_vocab(&v).unwrap();
        let json = t.inner.to_string(false).unwrap();
        let config = br#"{"bos_token": {"content": "<|im_start|>"}, "eos_token": "<|im_end|>", "add_bos_token": true}"#;
        let j = Tokenizer::from_json_bytes(json.as_bytes(), Some(config)).unwrap();
        assert_eq!(j.bos_id(), Some(1));
        assert_eq!(j.eos_id(), Some(2));
        assert!(j.add_bos());
        assert_eq!(j.vocab_size(), t.vocab_size());
        let s = "<|im_start|>hello world<|im_end|>";
        assert_eq!(j.encode(s, false).unwrap(), t.encode(s, false).unwrap());
    }

    #[test]
    fn a_token_id_far_past_the_vocabulary_is_an_error_not_an_allocation() {
        let t = Tokenizer::from_gguf_vocab(&toy_vocab("gpt-2")).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_str(&t.inner.to_string(false).unwrap()).unwrap();
        let vocab = json["model"]["vocab"].as_object_mut().unwrap();
        let token = vocab.keys().next().unwrap().clone();
        vocab.insert(token, serde_json::json!(1u32 << 31));
        let Err(e) = Tokenizer::from_json_bytes(json.to_string().as_bytes(), None) else {
            panic!("a vocabulary spanning 2^31 ids loaded");
        };
        assert!(e.to_string().contains("token ids run to 2147483648"), "{e}");
    }

    #[test]
    fn too_many_merges_or_too_long_a_token_is_an_error() {
        let t = Tokenizer::from_gguf_vocab(&toy_vocab("gpt-2")).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&t.inner.to_string(false).unwrap()).unwrap();
        let n_merges = json["model"]["merges"].as_array().unwrap().len();
        assert_eq!(
            json_model_counts(json.to_string().as_bytes()),
            (json["model"]["vocab"].as_object().unwrap().len(), n_merges)
        );

        let mut many = json.clone();
        let merges = many["model"]["merges"].as_array_mut().unwrap();
        let merge = merges[0].clone();
        merges.resize(MAX_VOCAB + 1, merge);
        let Err(e) = Tokenizer::from_json_bytes(many.to_string().as_bytes(), None) else {
            panic!("more than 2^21 merges loaded");
        };
        assert!(e.to_string().contains("merges for"), "{e}");

        let mut long = json;
        let vocab = long["model"]["vocab"].as_object_mut().unwrap();
        vocab.insert(
            "a".repeat(MAX_TOKEN_BYTES + 1),
            serde_json::json!(vocab.len()),
        );
        let Err(e) = Tokenizer::from_json_bytes(long.to_string().as_bytes(), None) else {
            panic!("a 4 KiB token loaded");
        };
        assert!(e.to_string().contains("a token of 4097 bytes"), "{e}");

        let mut v = toy_vocab("gpt-2");
        v.tokens.push("b".repeat(MAX_TOKEN_BYTES + 1));
        v.token_types.push(1);
        let Err(e) = Tokenizer::from_gguf_vocab(&v) else {
            panic!("a 4 KiB token loaded from GGUF metadata");
        };
        assert!(e.to_string().contains("a token of 4097 bytes"), "{e}");
    }
}
