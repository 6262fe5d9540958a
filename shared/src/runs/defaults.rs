//! Defaults that the command line, the server's API (through it) and the browser share, so
//! that a run in a tab and the same run on the server mean the same thing when a field is left
//! out.

/// Greedy tokens per judged completion (compare, aird, eval).
pub const JUDGED_TOKENS: usize = 64;

/// The fallback's KL bound when no candidate direction passes METHOD §6.
pub const FALLBACK_KL_MAX: f64 = 0.3;

/// Training prompts of each built-in set that the playground's AIRD column is fitted on.
pub const AIRD_FIT_PROMPTS: usize = 32;

/// AIRD's scale (METHOD §10).
pub const AIRD_ALPHA: f32 = 1.0;

/// The rise in harmless refusal rate an α chosen on validation prompts may cause (5 points).
pub const MAX_HARMLESS_INCREASE: f64 = 0.05;

/// Activation-addition coefficient.
pub const ACTADD_COEFF: f32 = 1.0;

/// Nucleus sampling's probability mass (used only when the temperature is above 0).
pub const TOP_P: f32 = 0.9;
