//! The compressed model a study names (METHOD §8): one the host opens (a file, an alias), or
//! the base compressed here by a recipe, calibrated on the request's calibration set.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{PromptSource, RunError, RunIo};
use crate::compress::recipe::{METHOD_NAMES, looks_like_recipe};
use crate::compress::{Method, Summary, compress};
use crate::load::TextAssets;
use crate::model::Llama;
use crate::pipeline::OnProgress;
use crate::refusal::EncodedPrompts;

/// The prompts or text calibrated methods (GPTQ, Wanda, SparseGPT) measure activations on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CalibrationRequest {
    /// Calibration prompts, chat-formatted; the built-in harmless set when absent.
    pub calib: Option<PromptSource>,
    /// A plain text to calibrate on instead (named; the host reads it), cut into windows of
    /// `calib-seq` tokens.
    pub calib_text: Option<String>,
    /// At most this many calibration prompts or windows.
    pub n_calib: usize,
    /// Tokens per window of `calib-text`.
    pub calib_seq: usize,
}

impl CalibrationRequest {
    pub const N_CALIB: usize = 128;
    pub const CALIB_SEQ: usize = 256;

    /// # Errors
    ///
    /// [`RunError::Invalid`] for both `calib` and `calib-text`, or empty windows.
    pub fn validate(&self) -> Result<(), RunError> {
        if self.calib.is_some() && self.calib_text.is_some() {
            return Err(RunError::invalid(
                "calib-text",
                "give calibration prompts (calib) or a text, not both",
            ));
        }
        if self.calib_seq == 0 {
            return Err(RunError::invalid("calib-seq", "must be at least 1"));
        }
        Ok(())
    }

    /// Tokenizes the calibration set for this model.
    ///
    /// # Errors
    ///
    /// Sets the host cannot read, an empty set, template and tokenizer errors.
    pub fn load(&self, text: &TextAssets, io: &mut dyn RunIo) -> Result<Calibration, RunError> {
        self.validate()?;
        let (source, kind, ids) = if let Some(name) = &self.calib_text {
            let content = io.read_text(name)?;
            let tokens = text
                .tokenizer
                .encode(&content, false)
                .map_err(|e| RunError::Input(format!("{name}: {e}")))?;
            let seq = self.calib_seq;
            let ids: Vec<Vec<u32>> = tokens
                .chunks(seq)
                .filter(|w| w.len() == seq || tokens.len() < seq)
                .take(self.n_calib)
                .map(<[u32]>::to_vec)
                .collect();
            (name.clone(), "text", ids)
        } else {
            let (mut prompts, source) = match &self.calib {
                Some(set) => set.read(io)?,
                None => (
                    crate::refusal::prompts::builtin_harmless(),
                    "built-in harmless set".to_owned(),
                ),
            };
            prompts.truncate(self.n_calib);
            let ids = EncodedPrompts::new(text, &prompts, None)?.ids;
            (source, "prompts", ids)
        };
        if ids.iter().all(Vec::is_empty) {
            return Err(RunError::Input(format!(
                "the calibration set {source} is empty"
            )));
        }
        let mut hasher = Sha256::new();
        for sample in &ids {
            hasher.update((sample.len() as u32).to_le_bytes());
            for id in sample {
                hasher.update(id.to_le_bytes());
            }
        }
        Ok(Calibration {
            source,
            kind,
            samples: ids.len(),
            tokens: ids.iter().map(Vec::len).sum(),
            sha256: format!("{:x}", hasher.finalize()),
            ids,
        })
    }
}

impl Default for CalibrationRequest {
    fn default() -> CalibrationRequest {
        CalibrationRequest {
            calib: None,
            calib_text: None,
            n_calib: CalibrationRequest::N_CALIB,
            calib_seq: CalibrationRequest::CALIB_SEQ,
        }
    }
}

/// `compress`: a method and its parameters, the calibration set, and the batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CompressRequest {
    /// rtn, gguf, gptq, magnitude, wanda or sparsegpt.
    pub method: Option<String>,
    /// Bits per weight (rtn, gptq).
    pub bits: usize,
    /// Weights per quantization group; 0 for one group per row (rtn, gptq).
    pub group: usize,
    /// Asymmetric grid (zero point); symmetric by default.
    pub asym: bool,
    /// Symmetric grid (the default; for recipes that spell it).
    pub sym: bool,
    /// The GGUF block type (gguf): q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k.
    #[serde(rename = "type")]
    pub ggml_type: Option<String>,
    /// Fraction of weights pruned per row (magnitude, wanda, sparsegpt).
    pub sparsity: Option<f64>,
    /// N:M pattern instead of a fraction (e.g. 2:4).
    pub pattern: Option<String>,
    #[serde(flatten)]
    pub calibration: CalibrationRequest,
    /// Calibration prompts per forward pass.
    pub batch_size: usize,
}

impl CompressRequest {
    pub const BITS: usize = 4;
    pub const GROUP: usize = 128;
    pub const BATCH_SIZE: usize = 16;

    /// The method the fields spell, as the recipe it would be written as (`rtn:4:128:sym`).
    ///
    /// # Errors
    ///
    /// [`RunError::Invalid`] naming the missing or conflicting field, and the recipe's parse
    /// error for parameters out of range.
    pub fn method(&self) -> Result<Method, RunError> {
        let Some(name) = self.method.as_deref() else {
            return Err(RunError::invalid(
                "method",
                format!("required: one of {}", METHOD_NAMES.join(", ")),
            ));
        };
        if self.asym && self.sym {
            return Err(RunError::invalid("asym", "give asym or sym, not both"));
        }
        let pruning = || match (self.sparsity, &self.pattern) {
            (Some(_), Some(_)) => Err(RunError::invalid(
                "pattern",
                "give sparsity or pattern, not both",
            )),
            (_, Some(p)) if p.split(':').count() != 2 => Err(RunError::invalid(
                "pattern",
                format!("`{p}`: expected N:M, e.g. 2:4"),
            )),
            (_, Some(p)) => Ok(format!("{name}:{p}")),
            (Some(s), None) => Ok(format!("{name}:{s}")),
            (None, None) => Err(RunError::invalid(
                "sparsity",
                format!("{name} needs sparsity FRACTION or pattern N:M"),
            )),
        };
        let recipe = match name {
            "rtn" | "gptq" => {
                let grid = if self.asym { "asym" } else { "sym" };
                format!("{name}:{}:{}:{grid}", self.bits, self.group)
            }
            "gguf" => match &self.ggml_type {
                Some(ty) => format!("gguf:{ty}"),
                None => {
                    return Err(RunError::invalid(
                        "type",
                        "gguf needs a type (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k)",
                    ));
                }
            },
            "magnitude" | "wanda" | "sparsegpt" => pruning()?,
            other => {
                return Err(RunError::invalid(
                    "method",
                    format!(
                        "unknown method `{other}`; one of {}",
                        METHOD_NAMES.join(", ")
                    ),
                ));
            }
        };
        recipe
            .parse()
            .map_err(|e: crate::compress::CompressError| RunError::Input(e.to_string()))
    }

    /// # Errors
    ///
    /// The method's and the calibration's, and a batch size of 0.
    pub fn validate(&self) -> Result<(), RunError> {
        self.method()?;
        self.calibration.validate()?;
        if self.batch_size == 0 {
            return Err(RunError::invalid("batch-size", "must be at least 1"));
        }
        Ok(())
    }
}

impl Default for CompressRequest {
    fn default() -> CompressRequest {
        CompressRequest {
            method: None,
            bits: CompressRequest::BITS,
            group: CompressRequest::GROUP,
            asym: false,
            sym: false,
            ggml_type: None,
            sparsity: None,
            pattern: None,
            calibration: CalibrationRequest::default(),
            batch_size: CompressRequest::BATCH_SIZE,
        }
    }
}

/// The calibration set, tokenized, and what identifies it.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub source: String,
    /// `prompts` (chat-formatted) or `text` windows.
    pub kind: &'static str,
    pub samples: usize,
    pub tokens: usize,
    /// SHA-256 of the token ids (u32 little-endian, each sample prefixed by its length).
    pub sha256: String,
    #[serde(skip)]
    pub ids: Vec<Vec<u32>>,
}

impl Calibration {
    /// No calibration at all, for a method that decides without one when its output error is
    /// not wanted (the playground's compressed column).
    pub fn none() -> Calibration {
        Calibration {
            source: "none".into(),
            kind: "prompts",
            samples: 0,
            tokens: 0,
            sha256: String::new(),
            ids: Vec::new(),
        }
    }

    /// How a line of progress names it.
    pub fn describe(&self) -> String {
        if self.samples == 0 {
            "no calibration".to_owned()
        } else {
            format!(
                "calibration: {} {} from {}",
                self.samples, self.kind, self.source
            )
        }
    }
}

/// A compressed model: opened by the host, or the base compressed by a recipe.
pub struct CompressedModel {
    /// What the user gave (`wanda:0.5`, a path, an alias).
    pub spec: String,
    pub llama: Llama,
    /// The recipe, when the model was compressed here.
    pub method: Option<Method>,
    pub compression: Option<Summary>,
}

/// `base` compressed by `method` on `calibration`, and what compression did: what
/// [`RunIo::compress`] does for a host that keeps nothing.
///
/// # Errors
///
/// The method's errors, naming it, and cancellation.
pub async fn compress_base(
    base: &Llama,
    method: Method,
    calibration: &Calibration,
    batch_size: usize,
    on_progress: &mut OnProgress<'_>,
) -> Result<(Llama, Summary), RunError> {
    let compressed = compress(
        base.clone(),
        method,
        &calibration.ids,
        0,
        batch_size,
        on_progress,
    )
    .await
    .map_err(|e| RunError::Input(format!("compressing with {method}: {e}")))?;
    let summary = Summary::of(&compressed.layers);
    Ok((compressed.model, summary))
}

/// Checks a spec before the work that comes first: one that starts like a recipe
/// (`wanda:…`) but does not parse, and names no model either, is an error at once.
///
/// # Errors
///
/// [`RunError::Input`] with the recipe's parse error.
pub fn check_spec(spec: &str, io: &mut dyn RunIo) -> Result<(), RunError> {
    match spec.parse::<Method>() {
        Err(e) if looks_like_recipe(spec) && !io.names_model(spec) => {
            Err(RunError::Input(e.to_string()))
        }
        _ => Ok(()),
    }
}

/// The model `spec` names: one the host opens if it names one (a file called `wanda:0.5`
/// wins over the recipe), else `base` compressed by the recipe `spec` spells, calibrated on
/// `calibration` (loaded only then). With `output_error`, methods that need no calibration
/// are calibrated too, to report the error they leave in each layer's output.
///
/// # Errors
///
/// A spec that is neither, a model whose shapes are not the base's, calibration and
/// compression errors.
pub async fn compressed_model(
    spec: &str,
    base: &Llama,
    text: &TextAssets,
    calibration: &CalibrationRequest,
    batch_size: usize,
    output_error: bool,
    io: &mut dyn RunIo,
) -> Result<CompressedModel, RunError> {
    let as_recipe = spec.parse::<Method>();
    let opens = io.names_model(spec);
    let method = match as_recipe {
        Ok(method) if !opens => method,
        Err(e) if looks_like_recipe(spec) && !opens => return Err(RunError::Input(e.to_string())),
        _ => {
            let llama = io.open_model(spec)?;
            let (b, c) = (base.config(), llama.config());
            if (b.n_layers, b.d_model, b.d_ff, b.vocab_size)
                != (c.n_layers, c.d_model, c.d_ff, c.vocab_size)
            {
                return Err(RunError::Input(format!(
                    "{spec} does not have the shapes of the base model ({} layers x {} vs {} x {})",
                    c.n_layers, c.d_model, b.n_layers, b.d_model
                )));
            }
            return Ok(CompressedModel {
                spec: spec.to_owned(),
                llama,
                method: None,
                compression: None,
            });
        }
    };
    let calibration = if output_error || method.needs_calibration() {
        calibration.load(text, io)?
    } else {
        Calibration::none()
    };
    io.note(&format!(
        "compressing with {method} ({})",
        calibration.describe()
    ));
    let (llama, summary) = io.compress(base, method, &calibration, batch_size).await?;
    Ok(CompressedModel {
        spec: spec.to_owned(),
        llama,
        method: Some(method),
        compression: Some(summary),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_calibration_request_takes_prompts_or_a_text_not_both() {
        let both = CalibrationRequest {
            calib: Some(PromptSource::Named("builtin:harmless".into())),
            calib_text: Some("wiki.txt".into()),
            ..CalibrationRequest::default()
        };
        let err = both.validate().unwrap_err().to_string();
        assert!(
            err.contains("calib-text") && err.contains("not both"),
            "{err}"
        );
        let no_windows = CalibrationRequest {
            calib_seq: 0,
            ..CalibrationRequest::default()
        };
        assert!(
            no_windows
                .validate()
                .unwrap_err()
                .to_string()
                .contains("calib-seq")
        );
        assert!(CalibrationRequest::default().validate().is_ok());
    }
}
