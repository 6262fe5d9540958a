//! `refusal-lens generate`: one prompt, chat-formatted, answered by the model as it is and,
//! given a direction, side by side with the model under each intervention of METHOD §5; given
//! a compressed model (or a recipe), by that model too (METHOD §8), and with a direction as
//! well, by the compressed model repaired by AIRD (METHOD §10).

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use futures_lite::future::block_on;
use refusal_core::defaults;
use refusal_core::generate::{GenerationSettings, Sampling, generate};
use refusal_core::model::Llama;
use refusal_core::refusal::aird::{AirdSettings, builtin_fit_prompts, repair};
use refusal_core::refusal::variant::{Completion, CompressedUse, DirectionUse, GenerateReport};
use refusal_core::refusal::{Variant, VariantDirection, VariantModels};
use refusal_core::runs::compress::compressed_model;

use super::Terminal;
use super::compress::CalibrationArgs;
use crate::direction_file::DirectionFile;
use crate::model::open::{Fingerprint, LoadedModel};
use crate::model_args::ModelArgs;
use crate::outputs::StagedDir;
use crate::progress::{RunControl, RunEvent, StageBar};

#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    /// A system prompt (none by default, METHOD §2).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 128)]
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
    #[arg(long, default_value_t = 8)]
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

/// `generate.json`, and what `--json` prints.
pub type Report = GenerateReport<Fingerprint>;

/// Generates every variant in turn, streaming text to the terminal (or the run's observer).
///
/// # Errors
///
/// An intervention without a direction, a direction of another width, and model errors.
pub fn run(args: &GenerateArgs, control: &RunControl) -> Result<()> {
    let direction = args
        .direction
        .as_deref()
        .map(DirectionFile::read)
        .transpose()?;
    let variants = match args.variants.as_slice() {
        [] => Variant::defaults(direction.is_some(), args.compressed.is_some()),
        given => given.to_vec(),
    };
    for &v in &variants {
        if v.is_compressed() && args.compressed.is_none() {
            bail!("--variants {} needs --compressed", v.name());
        }
        if v.needs_direction() && direction.is_none() {
            let why = if v.is_compressed() {
                " (AIRD restores it)"
            } else {
                ""
            };
            bail!("--variants {} needs --direction{why}", v.name());
        }
    }
    let (loaded, fingerprint) = args.model.load_with_fingerprint()?;
    let d_model = loaded.llama.config().d_model;
    if let Some(d) = &direction
        && d.vector.len() != d_model
    {
        bail!(
            "the direction has {} dimensions but {} has width {d_model}",
            d.vector.len(),
            args.model.model
        );
    }
    let compressed = compressed_columns(args, &variants, direction.as_ref(), &loaded, control)?;
    let models = VariantModels {
        base: &loaded.llama,
        compressed: compressed.as_ref().map(|c| &c.compressed),
        repaired: compressed.as_ref().and_then(|c| c.repaired.as_ref()),
    };
    let formatted = loaded
        .text
        .chat
        .user_prompt(&args.prompt, args.system.as_deref())?;
    let ids = loaded.text.tokenizer.encode(&formatted.text, false)?;
    let sampling = Sampling::from_temperature(args.temperature, args.top_p, args.seed);
    let terminal = !args.json && !control.is_observed();
    let applied = direction.as_ref().map(|d| VariantDirection {
        vector: &d.vector,
        actadd_layer: args.layer.unwrap_or(d.meta.layer),
        coeff: args.coeff,
    });
    let mut completions = Vec::with_capacity(variants.len());
    for &variant in &variants {
        let run = variant.setup(models, applied.as_ref())?;
        let model = run.model.as_ref();
        let mut hook = run.intervention.hook(model)?;
        if terminal && variants.len() > 1 {
            println!("--- {}", variant.name());
        }
        let settings = GenerationSettings {
            max_new_tokens: args.max_new_tokens,
            sampling,
            stop_ids: loaded.text.tokenizer.stop_ids(),
        };
        let mut stream = loaded.text.tokenizer.stream(true);
        let mut stdout = std::io::stdout();
        let out = generate(
            model,
            std::slice::from_ref(&ids),
            0,
            settings,
            &mut hook,
            &mut |_, token| {
                if control.cancelled() {
                    return ControlFlow::Break(());
                }
                let Ok(Some(piece)) = stream.push(token) else {
                    return ControlFlow::Continue(());
                };
                control.emit(RunEvent::Token {
                    variant: variant.name().to_owned(),
                    text: piece.clone(),
                });
                // A closed stdout (e.g. piped into `head`) ends generation early.
                if terminal
                    && write!(stdout, "{piece}")
                        .and_then(|()| stdout.flush())
                        .is_err()
                {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
        );
        if let Ok(Some(rest)) = stream.flush() {
            control.emit(RunEvent::Token {
                variant: variant.name().to_owned(),
                text: rest.clone(),
            });
            if terminal {
                print!("{rest}");
            }
        }
        if terminal {
            println!();
        }
        if control.cancelled() {
            bail!("cancelled");
        }
        let tokens = out.tokens.into_iter().next().unwrap_or_default();
        let completion = loaded.text.tokenizer.decode(&tokens, true)?;
        completions.push(Completion::judged(
            variant,
            completion,
            tokens,
            out.finish[0],
        ));
    }
    let report = Report {
        model: fingerprint,
        prompt: args.prompt.clone(),
        formatted_prompt: formatted.text,
        prompt_tokens: ids.len(),
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        seed: args.seed,
        direction: direction.as_ref().map(|d| DirectionUse {
            layer: d.meta.layer,
            position: d.meta.position,
            actadd_layer: args.layer.unwrap_or(d.meta.layer),
            coeff: args.coeff,
        }),
        compressed: compressed.map(|c| c.used),
        completions,
    };
    let json = serde_json::to_string_pretty(&report)?;
    if args.json {
        println!("{json}");
    }
    if let Some(dir) = &args.out {
        let mut staged = StagedDir::new(dir)?;
        staged.write("generate.json", &json)?;
        staged
            .commit()
            .with_context(|| format!("writing {}", dir.display()))?;
    }
    Ok(())
}

/// `--variants` values: the core's variant names (clap lists them in --help and the job API).
fn variant_parser() -> impl TypedValueParser<Value = Variant> {
    PossibleValuesParser::new(Variant::ALL.map(Variant::name))
        .try_map(|name| name.parse::<Variant>())
}

/// The models of the compressed columns, and what the report says of them.
struct CompressedColumns {
    compressed: Llama,
    repaired: Option<Llama>,
    used: CompressedUse,
}

/// Loads or compresses the compressed model, and repairs it by AIRD when a column shows it.
fn compressed_columns(
    args: &GenerateArgs,
    variants: &[Variant],
    direction: Option<&DirectionFile>,
    loaded: &LoadedModel,
    control: &RunControl,
) -> Result<Option<CompressedColumns>> {
    let Some(spec) = args.compressed.as_deref() else {
        return Ok(None);
    };
    if !variants.iter().any(|v| v.is_compressed()) {
        return Ok(None);
    }
    // The report gives no output errors, so a method that decides without calibration skips it.
    let c = block_on(compressed_model(
        spec,
        &loaded.llama,
        &loaded.text,
        &args.calibration.request(),
        args.batch_size,
        false,
        &mut Terminal::new(control, &args.model),
    ))?;
    let (repaired, fit) = match direction {
        Some(d) if variants.contains(&Variant::CompressedAird) => {
            let prompts = builtin_fit_prompts(&loaded.text, args.aird_prompts)?;
            let settings = AirdSettings {
                layer: d.meta.layer,
                alpha: args.aird_alpha,
                lambda: None,
                batch_size: args.batch_size,
            };
            let mut bar = StageBar::new(true, control.clone());
            let repaired = block_on(repair(
                &loaded.llama,
                c.llama.clone(),
                &d.vector,
                settings,
                &prompts,
                &mut |p| bar.update(p),
            ))
            .context("repairing with AIRD")?;
            bar.finish();
            (Some(repaired.model), Some(repaired.fit))
        }
        _ => (None, None),
    };
    Ok(Some(CompressedColumns {
        compressed: c.llama,
        repaired,
        used: CompressedUse {
            spec: spec.to_owned(),
            aird: fit,
        },
    }))
}
