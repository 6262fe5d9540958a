//! The pipeline subcommands: `generate`, `directions`, `eval`, `orthogonalize`,
//! `control-vector`, `compress`, `compare`, `aird`.

pub mod aird;
pub mod compare;
pub mod compress;
pub mod control_vector;
pub mod directions;
pub mod eval;
pub mod generate;
pub mod orthogonalize;
pub mod pipeline;

use std::path::Path;

use anyhow::{Context, Result};
use futures_lite::future::block_on;
use refusal_core::defaults;
use refusal_core::refusal::evaluate::EvalSettings;
use refusal_core::refusal::prompts::{
    self, Prompt, PromptFormat, builtin_harmful, builtin_harmless,
};
use refusal_core::refusal::score::TokenOrigin;
use refusal_core::refusal::{EncodedPrompts, RefusalTokens};

use crate::open::LoadedModel;
use crate::progress::StageBar;

/// How completions are generated and judged (`eval`, `compare`, `aird`).
#[derive(Debug, Clone, clap::Args)]
pub struct JudgeArgs {
    /// Greedy tokens per completion.
    #[arg(long, default_value_t = defaults::JUDGED_TOKENS)]
    pub max_new_tokens: usize,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Refusal tokens, comma-separated (default: a direction's, else the model family's, else
    /// derived from data).
    #[arg(long, value_delimiter = ',')]
    pub refusal_tokens: Vec<String>,
}

impl JudgeArgs {
    pub fn settings(&self) -> EvalSettings {
        EvalSettings {
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
        }
    }
}

/// Prompts named on the command line: a file, or `builtin:harmful` / `builtin:harmless`.
pub fn load_prompts(spec: &str) -> Result<Vec<Prompt>> {
    Ok(match spec {
        "builtin:harmful" => builtin_harmful(),
        "builtin:harmless" => builtin_harmless(),
        path => read_prompts(path.as_ref())?,
    })
}

/// Reads a prompt file, its format chosen by extension (`.json`, `.csv`, else one per line).
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    Ok(prompts::parse(
        &name,
        &bytes,
        PromptFormat::from_file_name(&name),
    )?)
}

/// The prompts of `file`, or the built-in set when there is none.
pub fn read_prompts_or(file: Option<&Path>, builtin: fn() -> Vec<Prompt>) -> Result<Vec<Prompt>> {
    match file {
        Some(p) => read_prompts(p),
        None => Ok(builtin()),
    }
}

/// The refusal tokens: the user's (`--refusal-tokens I,As`), else the model family's, else
/// derived from greedy completions of `harmful` prompts.
pub fn refusal_tokens(
    loaded: &LoadedModel,
    given: &[String],
    harmful: &EncodedPrompts,
    batch_size: usize,
    bar: &mut StageBar,
) -> Result<RefusalTokens> {
    if !given.is_empty() {
        let words: Vec<&str> = given.iter().map(String::as_str).collect();
        return Ok(RefusalTokens::from_words(
            &loaded.text,
            &words,
            TokenOrigin::User,
        )?);
    }
    Ok(block_on(RefusalTokens::for_model(
        &loaded.llama,
        &loaded.text,
        harmful,
        32,
        batch_size,
        &mut |p| bar.update(p),
    ))?)
}

/// A short description of where refusal tokens came from.
pub fn describe_tokens(tokens: &RefusalTokens) -> String {
    let origin = match &tokens.origin {
        TokenOrigin::Family { family } => format!("known for the {family:?} family"),
        TokenOrigin::Data {
            completions,
            refusals,
        } => format!("first tokens of {refusals} refusals in {completions} greedy completions"),
        TokenOrigin::Fallback { completions } => {
            format!("no refusal in {completions} greedy completions: generic fallback")
        }
        TokenOrigin::User => "given by the user".to_owned(),
    };
    format!("{:?} ({origin})", tokens.tokens)
}
