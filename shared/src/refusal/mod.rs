//! The refusal-direction method (METHOD §2–7): prompts and positions, candidate directions,
//! the refusal score, interventions, selection of one direction, evaluation, and weight
//! orthogonalization.
//!
//! Everything here is `async` where it reads tensors back to the host, so the same code runs
//! natively (under a trivial executor) and in the browser (where WebGPU readback must be
//! awaited). Long computations report [`Progress`](crate::pipeline::Progress) and stop when the
//! callback says so.

pub mod aird;
pub mod compare;
pub(crate) mod complete;
pub mod cosine;
pub mod directions;
pub mod encoding;
pub mod evaluate;
pub mod find;
pub mod intervals;
pub mod intervention;
pub mod judge;
pub mod model_judge;
pub mod orthogonalize;
pub mod plots;
pub mod prompts;
pub mod refusal_tokens;
pub mod repair_study;
pub mod score;
pub mod seeds;
pub mod select;
pub mod variant;

pub use directions::CandidateDirections;
pub use encoding::{EncodedPrompts, EncodedSplit};
pub use intervention::Intervention;
pub use prompts::{Prompt, PromptFormat};
pub use refusal_tokens::RefusalTokens;
pub use select::{Selection, SelectionSettings};
pub use variant::{Variant, VariantDirection, VariantModels};
