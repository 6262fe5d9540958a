//! What every long computation of the core shares, the refusal method's and compression's
//! alike: the progress it reports and the cancellation its callback asks for, the error it
//! fails with, and reading tensors back from the device (awaited, as WebGPU requires).

use std::ops::ControlFlow;

use burn::tensor::Tensor;

/// What a long computation is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading activations for candidate directions.
    Extract,
    /// Generating completions to find the model's refusal tokens.
    RefusalTokens,
    /// Scoring validation prompts with no intervention.
    Baseline,
    /// Scoring candidate directions (bypass, induce, KL).
    Select,
    /// Generating and judging completions.
    Generate,
    /// A judge model reading completions.
    Judge,
    /// Cross-entropy on a text.
    CrossEntropy,
    /// Compressing the linear layers, block by block.
    Compress,
    /// Recording the base and compressed models' activations that AIRD is fitted on.
    Aird,
}

/// Progress of one stage: `done` of `total` units (prompts, candidates or tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub stage: Stage,
    pub done: usize,
    pub total: usize,
}

/// Called as work advances; returning `ControlFlow::Break` cancels the computation.
pub type OnProgress<'a> = dyn FnMut(Progress) -> ControlFlow<()> + 'a;

/// Why a pipeline step failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cancelled")]
    Cancelled,
    #[error("reading a tensor back from the device: {0}")]
    Readback(String),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
    #[error("the {0} prompt set is empty")]
    NoPrompts(&'static str),
    #[error(
        "the {set} give {n_train} training and {n_val} validation prompts; at least 2 and 1 are needed"
    )]
    TooFewPrompts {
        /// The kind and its source, e.g. "harmful prompts (built-in harmful set)".
        set: String,
        n_train: usize,
        n_val: usize,
    },
    #[error("the vector has {got} dimensions but the model's residual stream has {expected}")]
    WidthMismatch { expected: usize, got: usize },
    #[error("layer {layer} does not exist (the model has {n_layers} layers)")]
    LayerOutOfRange { layer: usize, n_layers: usize },
    #[error("position {position} is not one of the post-instruction positions {available:?}")]
    PositionOutOfRange {
        position: isize,
        available: Vec<isize>,
    },
    #[error("the direction is zero or not finite and cannot be normalised")]
    DegenerateDirection,
    #[error("refusal token {0:?} is not a single token for this tokenizer")]
    NotOneToken(String),
    #[error("no refusal tokens given")]
    NoRefusalTokens,
    #[error("the `{0}` completion needs a direction")]
    NeedsDirection(&'static str),
    #[error("the `{0}` completion needs a compressed model")]
    NeedsCompressed(&'static str),
    #[error(
        "no candidate direction passed METHOD §6, and none below layer {layer_limit} has KL <= {kl_max} (the fallback's bound)"
    )]
    NoCandidate { kl_max: f64, layer_limit: usize },
    #[error("no AIRD scale alpha to choose from")]
    NoAlpha,
}

/// Reports progress and turns a cancel request into [`PipelineError::Cancelled`].
pub(crate) fn report(
    on_progress: &mut OnProgress<'_>,
    stage: Stage,
    done: usize,
    total: usize,
) -> Result<(), PipelineError> {
    match on_progress(Progress { stage, done, total }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(PipelineError::Cancelled),
    }
}

/// Reads an f32 tensor back to the host, awaiting the device (required on WebGPU).
pub async fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, PipelineError> {
    let data = t
        .into_data_async()
        .await
        .map_err(|e| PipelineError::Readback(format!("{e:?}")))?;
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| PipelineError::Readback(format!("{e:?}")))
}
