//! Turning checkpoint bytes into a runnable model. The caller reads (or memory-maps, or
//! downloads) the files; this module only parses bytes, so it runs in the browser too.

pub mod gguf;
pub mod hf;
pub mod names;

use burn::tensor::Device;
use bytes::Bytes;
use thiserror::Error;

use crate::chat::{self, ChatError, ChatTemplate};
use crate::gguf::{GgufError, GgufFile};
use crate::model::{ConfigError, Llama, WeightError, WeightStorage, weights};
use crate::tokenizer::{self, Tokenizer, TokenizerError};

/// Why a checkpoint could not be loaded; every variant names the file.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{file}: {source}")]
    Gguf {
        file: String,
        #[source]
        source: GgufError,
    },
    #[error("{file}: {source}")]
    Config {
        file: String,
        #[source]
        source: ConfigError,
    },
    #[error("{file}: {source}")]
    Weights {
        file: String,
        #[source]
        source: WeightError,
    },
    #[error("{file}: invalid JSON: {source}")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{file}: invalid safetensors: {message}")]
    Safetensors { file: String, message: String },
    #[error("{file}: {source}")]
    Tokenizer {
        file: String,
        #[source]
        source: TokenizerError,
    },
    #[error("{file}: {source}")]
    Chat {
        file: String,
        #[source]
        source: ChatError,
    },
}

/// What turns text into model input: the tokenizer and the model's chat template.
#[derive(Debug)]
pub struct TextAssets {
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
}

/// The tokenizer and chat template embedded in a GGUF file's metadata.
pub fn gguf_text_assets(file_name: &str, file: &GgufFile) -> Result<TextAssets, LoadError> {
    let tok_err = |source| LoadError::Tokenizer {
        file: file_name.into(),
        source,
    };
    let tokenizer = Tokenizer::from_gguf_vocab(&tokenizer::gguf_vocab(file).map_err(tok_err)?)
        .map_err(tok_err)?;
    let chat =
        ChatTemplate::for_model(chat::gguf_template(file), &tokenizer).map_err(|source| {
            LoadError::Chat {
                file: file_name.into(),
                source,
            }
        })?;
    Ok(TextAssets { tokenizer, chat })
}

/// The tokenizer and chat template of a Hugging Face checkpoint. Newer checkpoints keep the
/// template in its own `chat_template.jinja`, which then wins over `tokenizer_config.json`.
pub fn hf_text_assets(
    tokenizer_json: &[u8],
    tokenizer_config_json: Option<&[u8]>,
    chat_template_jinja: Option<&str>,
) -> Result<TextAssets, LoadError> {
    let tokenizer =
        Tokenizer::from_json_bytes(tokenizer_json, tokenizer_config_json).map_err(|source| {
            LoadError::Tokenizer {
                file: "tokenizer.json".into(),
                source,
            }
        })?;
    let chat_err = |source| LoadError::Chat {
        file: "tokenizer_config.json".into(),
        source,
    };
    let template = match (chat_template_jinja, tokenizer_config_json) {
        (Some(jinja), _) => Some(jinja.to_string()),
        (None, Some(bytes)) => chat::template_from_tokenizer_config(bytes).map_err(chat_err)?,
        (None, None) => None,
    };
    let chat = ChatTemplate::for_model(template.as_deref(), &tokenizer).map_err(chat_err)?;
    Ok(TextAssets { tokenizer, chat })
}

/// How a checkpoint is loaded.
#[derive(Default)]
pub struct LoadOptions<'a> {
    /// The type of the large matrices (default: the checkpoint's; GGML blocks stay blocks on
    /// the CPU).
    pub storage: WeightStorage,
    /// Told which file bytes each weight came from once they are copied (see
    /// [`hf::SafetensorsWeights::releasing`]).
    pub release: Option<hf::ReleaseBytes<'a>>,
}

/// Loads the decoder of a GGUF file (parsed with [`gguf::parse`] from `bytes`), calling
/// `progress(done, total)` per weight.
pub fn gguf_model<'a>(
    file_name: &str,
    file: &'a GgufFile,
    bytes: &'a [u8],
    device: &Device,
    options: LoadOptions<'a>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Llama, LoadError> {
    gguf_model_from(file_name, file, bytes, None, device, options, progress)
}

/// [`gguf_model`] from the file's bytes held shared: the model's blocks are views into them
/// rather than copies. The browser loads this way, since its memory never shrinks and would
/// otherwise hold the file and a copy of its blocks at once.
pub fn gguf_model_viewing<'a>(
    file_name: &str,
    file: &'a GgufFile,
    bytes: &'a Bytes,
    device: &Device,
    options: LoadOptions<'a>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Llama, LoadError> {
    gguf_model_from(
        file_name,
        file,
        bytes,
        Some(bytes),
        device,
        options,
        progress,
    )
}

fn gguf_model_from<'a>(
    file_name: &str,
    file: &'a GgufFile,
    bytes: &'a [u8],
    views: Option<&'a Bytes>,
    device: &Device,
    options: LoadOptions<'a>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Llama, LoadError> {
    let config = gguf::config(file, bytes).map_err(|source| LoadError::Config {
        file: file_name.into(),
        source,
    })?;
    let mut source = gguf::GgufWeights {
        file,
        bytes,
        release: options.release,
        views,
    };
    weights::build(config, &mut source, device, options.storage, progress).map_err(|source| {
        LoadError::Weights {
            file: file_name.into(),
            source,
        }
    })
}

/// Loads the decoder of a Hugging Face checkpoint from `config.json` and its safetensors
/// shards (`(file name, bytes)`), one tensor at a time.
pub fn hf_model<'a>(
    config_json: &[u8],
    shards: &[(String, &'a [u8])],
    device: &Device,
    options: LoadOptions<'a>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Llama, LoadError> {
    let mut config = hf::parse_config("config.json", config_json)?;
    let mut source = hf::SafetensorsWeights::new(shards)?;
    if let Some(release) = options.release {
        source = source.releasing(release);
    }
    // Some checkpoints leave `tie_word_embeddings` unset and simply omit `lm_head`.
    if !source.contains(crate::model::WeightName::OutputHead) {
        config.tied_embeddings = true;
    }
    let file = shards
        .first()
        .map(|(f, _)| f.clone())
        .unwrap_or_else(|| "model.safetensors".into());
    weights::build(config, &mut source, device, options.storage, progress)
        .map_err(|source| LoadError::Weights { file, source })
}
