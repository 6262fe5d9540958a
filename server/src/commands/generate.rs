//! `refusal-lens generate`: one prompt, chat-formatted, answered by the model as it is and,
//! given a direction, side by side with the model under each intervention of METHOD §5; given
//! a compressed model (or a recipe), by that model too (METHOD §8), and with a direction as
//! well, by the compressed model repaired by AIRD (METHOD §10).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use futures_lite::future::block_on;
use refusal_core::refusal::Variant;
use refusal_core::runs::RunIo;
use refusal_core::runs::aird::DirectionSource;
use refusal_core::runs::defaults;
use refusal_core::runs::generate::{self, GenerateRequest};

use super::Terminal;
use super::compress::CalibrationArgs;
use crate::model_args::ModelArgs;
use crate::outputs::StagedDir;
use crate::progress::RunControl;

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    /// A system prompt (none by default, METHOD §2).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = GenerateRequest::MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = defaults::TOP_P)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A direction written by `directions` (its directory, .safetensors or .json), for the
    /// interventions.
    #[arg(long)]
    pub direction: Option<PathBuf>,
    /// Completions to produce, comma-separated: none, ablate, actadd, orthogonalized,
    /// compressed, compressed+aird. Default: none, the four interventions when --direction is
    /// given, compressed when --compressed is given, and compressed+aird given both.
    #[arg(long, value_delimiter = ',', value_parser = variant_parser())]
    pub variants: Vec<Variant>,
    /// The compressed model of the compressed columns (file, directory or alias), or a recipe
    /// compressed on the fly (e.g. wanda:0.5, rtn:4:128).
    #[arg(long)]
    pub compressed: Option<String>,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    /// Training prompts of each built-in set that AIRD is fitted on, at the direction's layer
    /// (a quarter as many more, held out, choose its ridge penalty).
    #[arg(long, default_value_t = defaults::AIRD_FIT_PROMPTS)]
    pub aird_prompts: usize,
    /// Scale of the AIRD update.
    #[arg(long, default_value_t = defaults::AIRD_ALPHA)]
    pub aird_alpha: f32,
    /// Prompts per forward pass while compressing and fitting AIRD.
    #[arg(long, default_value_t = GenerateRequest::BATCH_SIZE)]
    pub batch_size: usize,
    /// Activation-addition coefficient.
    #[arg(long, default_value_t = defaults::ACTADD_COEFF)]
    pub coeff: f32,
    /// Layer of the activation addition (default: the direction's layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Also write the completions as generate.json into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl GenerateArgs {
    pub fn request(&self) -> GenerateRequest {
        GenerateRequest {
            prompt: self.prompt.clone(),
            system: self.system.clone(),
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            variants: self.variants.clone(),
            direction: self
                .direction
                .as_ref()
                .map(|p| DirectionSource::Named(p.display().to_string())),
            coeff: self.coeff,
            layer: self.layer,
            compressed: self.compressed.clone(),
            calibration: self.calibration.request(),
            aird_prompts: self.aird_prompts,
            aird_alpha: self.aird_alpha,
            batch_size: self.batch_size,
        }
    }
}

/// Generates every variant in turn, streaming text to the terminal (or the run's observer).
///
/// # Errors
///
/// An intervention without a direction, a direction of another width, and model errors.
pub fn run(args: &GenerateArgs, control: &RunControl) -> Result<()> {
    let request = args.request();
    let mut io = Terminal::new(control, &args.model);
    io.print_completions = !args.json && !control.is_observed();
    let json = write(&request, &args.model, args.out.as_deref(), &mut io)?;
    // The bar is cleared before the report is printed.
    drop(io);
    if args.json {
        println!("{json}");
    }
    Ok(())
}

/// Runs `request` on the model `models` names and, given `out`, writes the completions as
/// generate.json into it; returns that JSON.
///
/// # Errors
///
/// The request's, the model's and the run's errors.
pub fn write(
    request: &GenerateRequest,
    models: &ModelArgs,
    out: Option<&Path>,
    io: &mut dyn RunIo,
) -> Result<String> {
    // Checked before the model is loaded, which takes seconds.
    request.validate()?;
    let (loaded, fingerprint) = models.load_with_fingerprint()?;
    let report = block_on(generate::run(
        request,
        &loaded.llama,
        &loaded.text,
        fingerprint,
        io,
    ))?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(dir) = out {
        let mut staged = StagedDir::new(dir)?;
        staged.write("generate.json", &json)?;
        staged
            .commit()
            .with_context(|| format!("writing {}", dir.display()))?;
    }
    Ok(json)
}

/// `--variants` values: the core's variant names (clap lists them in --help and the job API).
fn variant_parser() -> impl TypedValueParser<Value = Variant> {
    PossibleValuesParser::new(Variant::ALL.map(Variant::name))
        .try_map(|name| name.parse::<Variant>())
}
