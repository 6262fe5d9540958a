//! `generate` (METHOD §5, §8, §10): one prompt, chat-formatted, answered by the model as it
//! is and, given a direction, side by side with the model under each intervention; given a
//! compressed model or a recipe, by that model too, and with a direction as well, by the
//! compressed model repaired by AIRD. Tokens reach the host as they are decoded.

use serde::{Deserialize, Serialize};

use super::aird::{DirectionSource, GivenDirection};
use super::compress::{CalibrationRequest, compressed_model};
use super::defaults;
use super::{RunError, RunIo};
use crate::generate::{Decoder, GenerationSettings, Sampling};
use crate::load::TextAssets;
use crate::model::Llama;
use crate::pipeline::{PipelineError, read};
use crate::refusal::aird::AirdSettings;
use crate::refusal::variant::{Completion, CompressedUse, DirectionUse, GenerateReport};
use crate::refusal::{Variant, VariantDirection, VariantModels};

/// One prompt answered side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct GenerateRequest {
    pub prompt: String,
    /// A system prompt (none by default, METHOD §2).
    pub system: Option<String>,
    pub max_new_tokens: usize,
    /// 0 decodes greedily.
    pub temperature: f32,
    /// Nucleus sampling's probability mass (only when the temperature is above 0).
    pub top_p: f32,
    pub seed: u64,
    /// The completions to produce; empty: [`Variant::defaults`] for what is given.
    pub variants: Vec<Variant>,
    /// The direction of the interventions and of AIRD.
    pub direction: Option<DirectionSource>,
    /// Activation-addition coefficient.
    pub coeff: f32,
    /// Layer of the activation addition (default: the direction's).
    pub layer: Option<usize>,
    /// The compressed columns' model: a recipe (`rtn:4:128`, `wanda:0.5`) compressed now, or
    /// a model the host opens.
    pub compressed: Option<String>,
    #[serde(flatten)]
    pub calibration: CalibrationRequest,
    /// Training prompts of each built-in set that AIRD is fitted on, at the direction's layer
    /// (a quarter as many more, held out, choose its ridge penalty).
    pub aird_prompts: usize,
    /// Scale of the AIRD update.
    pub aird_alpha: f32,
    /// Prompts per forward pass while compressing and fitting AIRD.
    pub batch_size: usize,
}

impl Default for GenerateRequest {
    fn default() -> GenerateRequest {
        GenerateRequest {
            prompt: String::new(),
            system: None,
            max_new_tokens: GenerateRequest::MAX_NEW_TOKENS,
            temperature: 0.0,
            top_p: defaults::TOP_P,
            seed: 0,
            variants: Vec::new(),
            direction: None,
            coeff: defaults::ACTADD_COEFF,
            layer: None,
            compressed: None,
            calibration: CalibrationRequest::default(),
            aird_prompts: defaults::AIRD_FIT_PROMPTS,
            aird_alpha: defaults::AIRD_ALPHA,
            batch_size: GenerateRequest::BATCH_SIZE,
        }
    }
}

impl GenerateRequest {
    pub const MAX_NEW_TOKENS: usize = 128;
    pub const BATCH_SIZE: usize = 8;

    /// The completions it produces.
    pub fn variants(&self) -> Vec<Variant> {
        match self.variants.as_slice() {
            [] => Variant::defaults(self.direction.is_some(), self.compressed.is_some()),
            given => given.to_vec(),
        }
    }

    /// # Errors
    ///
    /// [`RunError::Invalid`] for an empty prompt, a column without what it needs, and the
    /// calibration's bounds.
    pub fn validate(&self) -> Result<(), RunError> {
        if self.prompt.trim().is_empty() {
            return Err(RunError::invalid("prompt", "is empty"));
        }
        if self.batch_size == 0 {
            return Err(RunError::invalid("batch-size", "must be at least 1"));
        }
        for v in self.variants() {
            if v.is_compressed() && self.compressed.is_none() {
                return Err(RunError::invalid(
                    "variants",
                    format!("{} needs `compressed`", v.name()),
                ));
            }
            if v.needs_direction() && self.direction.is_none() {
                let why = if v.is_compressed() {
                    " (AIRD restores it)"
                } else {
                    ""
                };
                return Err(RunError::invalid(
                    "variants",
                    format!("{} needs `direction`{why}", v.name()),
                ));
            }
        }
        self.calibration.validate()
    }
}

/// A completion as it is decoded, for the host to show.
#[derive(Debug, Clone, Copy)]
pub enum Streamed<'a> {
    /// A variant's completion begins (`of`: how many variants the run produces).
    Begin { variant: Variant, of: usize },
    /// The text of one more token (empty while a character is incomplete).
    Token { variant: Variant, text: &'a str },
    /// A variant's completion has ended.
    End { variant: Variant },
}

/// Generates every variant in turn, streaming each token through [`RunIo::streamed`].
///
/// # Errors
///
/// [`RunError::Invalid`] for a request out of bounds, a direction that does not fit `model`,
/// [`PipelineError::Cancelled`] when the host breaks the stream, and model errors.
pub async fn run<M>(
    request: &GenerateRequest,
    model: &Llama,
    text: &TextAssets,
    description: M,
    io: &mut dyn RunIo,
) -> Result<GenerateReport<M>, RunError> {
    request.validate()?;
    let variants = request.variants();
    let direction = match &request.direction {
        Some(DirectionSource::Named(name)) => Some(io.read_direction(name)?),
        Some(DirectionSource::Given(d)) => Some(d.clone()),
        None => None,
    };
    if let Some(d) = &direction {
        d.check(model)?;
    }
    let columns =
        compressed_columns(request, &variants, direction.as_ref(), model, text, io).await?;
    let models = VariantModels {
        base: model,
        compressed: columns.as_ref().map(|c| &c.compressed),
        repaired: columns.as_ref().and_then(|c| c.repaired.as_ref()),
    };
    let formatted = text
        .chat
        .user_prompt(&request.prompt, request.system.as_deref())
        .map_err(PipelineError::from)?;
    let ids = text
        .tokenizer
        .encode(&formatted.text, false)
        .map_err(PipelineError::from)?;
    let applied = direction.as_ref().map(|d| VariantDirection {
        vector: &d.vector,
        actadd_layer: request.layer.unwrap_or(d.layer),
        coeff: request.coeff,
    });
    let settings = GenerationSettings {
        max_new_tokens: request.max_new_tokens,
        sampling: Sampling::from_temperature(request.temperature, request.top_p, request.seed),
        stop_ids: text.tokenizer.stop_ids(),
    };
    let of = variants.len();
    let mut completions = Vec::with_capacity(of);
    for &variant in &variants {
        let setup = variant.setup(models, applied.as_ref())?;
        let on = setup.model.as_ref();
        let mut hook = setup.intervention.hook(on)?;
        if io
            .streamed(Streamed::Begin { variant, of })
            .await
            .is_break()
        {
            return Err(PipelineError::Cancelled.into());
        }
        let mut decoder = Decoder::new(on, std::slice::from_ref(&ids), 0, settings.clone());
        let mut stream = text.tokenizer.stream(true);
        let mut cancelled = false;
        while let Some(logits) = decoder.forward(&mut hook) {
            let host = read(logits).await?;
            for (_, token) in decoder.accept(&host) {
                let piece = stream
                    .push(token)
                    .map_err(PipelineError::from)?
                    .unwrap_or_default();
                cancelled |= io
                    .streamed(Streamed::Token {
                        variant,
                        text: &piece,
                    })
                    .await
                    .is_break();
            }
            if cancelled {
                decoder.cancel();
            }
        }
        if !cancelled && let Some(rest) = stream.flush().map_err(PipelineError::from)? {
            cancelled = io
                .streamed(Streamed::Token {
                    variant,
                    text: &rest,
                })
                .await
                .is_break();
        }
        cancelled |= io.streamed(Streamed::End { variant }).await.is_break();
        if cancelled {
            return Err(PipelineError::Cancelled.into());
        }
        let out = decoder.finish();
        let tokens = out.tokens.into_iter().next().unwrap_or_default();
        let completion = text
            .tokenizer
            .decode(&tokens, true)
            .map_err(PipelineError::from)?;
        completions.push(Completion::judged(
            variant,
            completion,
            tokens,
            out.finish[0],
        ));
    }
    Ok(GenerateReport {
        model: description,
        prompt: request.prompt.clone(),
        formatted_prompt: formatted.text,
        prompt_tokens: ids.len(),
        max_new_tokens: request.max_new_tokens,
        temperature: request.temperature,
        seed: request.seed,
        direction: direction.as_ref().map(|d| DirectionUse {
            layer: d.layer,
            position: d.position,
            actadd_layer: request.layer.unwrap_or(d.layer),
            coeff: request.coeff,
        }),
        compressed: columns.map(|c| c.used),
        completions,
    })
}

/// The compressed columns' models, and what the report says of them.
struct Columns {
    compressed: Llama,
    repaired: Option<Llama>,
    used: CompressedUse,
}

/// The compressed model (opened, or compressed now) and, for `compressed+aird`, its repair
/// toward the direction, when a column shows them.
async fn compressed_columns(
    request: &GenerateRequest,
    variants: &[Variant],
    direction: Option<&GivenDirection>,
    base: &Llama,
    text: &TextAssets,
    io: &mut dyn RunIo,
) -> Result<Option<Columns>, RunError> {
    let Some(spec) = request.compressed.as_deref() else {
        return Ok(None);
    };
    if !variants.iter().any(|v| v.is_compressed()) {
        return Ok(None);
    }
    // The report gives no output errors, so a method that decides without calibration skips it.
    let compressed = compressed_model(
        spec,
        base,
        text,
        &request.calibration,
        request.batch_size,
        false,
        io,
    )
    .await?
    .llama;
    let (repaired, fit) = match direction {
        Some(d) if variants.contains(&Variant::CompressedAird) => {
            let settings = AirdSettings {
                layer: d.layer,
                alpha: request.aird_alpha,
                lambda: None,
                batch_size: request.batch_size,
            };
            let (model, fit) = io
                .repair(base, &compressed, text, d, settings, request.aird_prompts)
                .await
                .map_err(|e| match e {
                    RunError::Pipeline(PipelineError::Cancelled) => e,
                    e => RunError::Input(format!("repairing with AIRD: {e}")),
                })?;
            (Some(model), Some(fit))
        }
        _ => (None, None),
    };
    Ok(Some(Columns {
        compressed,
        repaired,
        used: CompressedUse {
            spec: spec.to_owned(),
            aird: fit,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::request_from_json;

    fn request(json: &str) -> GenerateRequest {
        request_from_json(&GenerateRequest::default(), json).expect("a valid request")
    }

    fn invalid_field(r: &GenerateRequest) -> &'static str {
        match r.validate() {
            Err(RunError::Invalid { field, .. }) => field,
            other => panic!("expected a field out of bounds, got {other:?}"),
        }
    }

    #[test]
    fn the_columns_follow_what_is_given() {
        let base = request(r#"{"prompt": "Hi"}"#);
        assert_eq!(base.variants(), [Variant::None]);
        let direction = r#""direction": {"vector": [1.0], "layer": 0, "position": -1}"#;
        let both = request(&format!(
            r#"{{"prompt": "Hi", {direction}, "compressed": "wanda:0.5"}}"#
        ));
        assert_eq!(both.variants(), Variant::ALL);
        assert!(both.validate().is_ok());
    }

    #[test]
    fn a_column_without_its_input_names_the_field() {
        let r = request(r#"{"prompt": "Hi", "variants": ["compressed"]}"#);
        assert_eq!(invalid_field(&r), "variants");
        let r = request(r#"{"prompt": "Hi", "variants": ["ablate"], "compressed": "rtn:4:128"}"#);
        let Err(e) = r.validate() else {
            panic!("ablate without a direction passed")
        };
        assert!(e.to_string().contains("needs `direction`"), "{e}");
        assert_eq!(invalid_field(&request(r#"{"prompt": " "}"#)), "prompt");
        assert_eq!(
            invalid_field(&request(r#"{"prompt": "Hi", "batch-size": 0}"#)),
            "batch-size"
        );
    }

    /// Shared links keep the browser's earlier snake-case requests; they read the same.
    #[test]
    fn snake_case_fields_read_as_the_flags() {
        let r = request(r#"{"prompt": "Hi", "max_new_tokens": 3, "n_calib": 4, "aird_alpha": 2}"#);
        assert_eq!(
            (r.max_new_tokens, r.calibration.n_calib, r.aird_alpha),
            (3, 4, 2.0)
        );
        assert_eq!(r.top_p, defaults::TOP_P);
    }
}
