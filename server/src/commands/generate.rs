//! `refusal-lens generate`: one prompt, chat-formatted, answered by the model as it is and,
//! given a direction, side by side with the model under each intervention of METHOD §5.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use refusal_core::generate::{FinishReason, GenerationSettings, Sampling, generate};
use refusal_core::model::Llama;
use refusal_core::refusal::Intervention;
use refusal_core::refusal::judge::is_refusal;
use refusal_core::refusal::orthogonalize::orthogonalize;
use serde::Serialize;

use crate::direction_file::DirectionFile;
use crate::model_args::ModelArgs;
use crate::open::Fingerprint;
use crate::outputs::StagedDir;
use crate::progress::{RunControl, RunEvent};

/// One completion of a side-by-side generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The model as it is.
    None,
    /// The direction ablated at every layer (hooks).
    Ablate,
    /// The direction added at one layer with --coeff.
    Actadd,
    /// The ablation baked into the weights (METHOD §5); should read like `ablate`.
    Orthogonalized,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Ablate => "ablate",
            Variant::Actadd => "actadd",
            Variant::Orthogonalized => "orthogonalized",
        }
    }
}

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
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A direction written by `directions` (its directory, .safetensors or .json), for the
    /// interventions.
    #[arg(long)]
    pub direction: Option<PathBuf>,
    /// Completions to produce, comma-separated: none, ablate, actadd, orthogonalized. Default:
    /// none, or all four when --direction is given.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub variants: Vec<Variant>,
    /// Activation-addition coefficient.
    #[arg(long, default_value_t = 1.0)]
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

/// One variant's completion.
#[derive(Debug, Serialize)]
pub struct Completion {
    pub variant: Variant,
    pub completion: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    /// The substring judge of METHOD §7.
    pub refusal: bool,
}

/// `generate.json`, and what `--json` prints.
#[derive(Debug, Serialize)]
pub struct GenerateReport {
    pub model: Fingerprint,
    pub prompt: String,
    pub formatted_prompt: String,
    pub prompt_tokens: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub seed: u64,
    /// The direction's layer and position, when one was given.
    pub direction: Option<DirectionUse>,
    pub completions: Vec<Completion>,
}

#[derive(Debug, Serialize)]
pub struct DirectionUse {
    pub layer: usize,
    pub position: isize,
    pub actadd_layer: usize,
    pub coeff: f32,
}

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
    let variants = match (&direction, args.variants.as_slice()) {
        (Some(_), []) => vec![
            Variant::None,
            Variant::Ablate,
            Variant::Actadd,
            Variant::Orthogonalized,
        ],
        (None, []) => vec![Variant::None],
        (_, given) => given.to_vec(),
    };
    if direction.is_none()
        && let Some(v) = variants.iter().find(|v| **v != Variant::None)
    {
        bail!("--variants {} needs --direction", v.name());
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
    let formatted = loaded
        .text
        .chat
        .user_prompt(&args.prompt, args.system.as_deref())?;
    let ids = loaded.text.tokenizer.encode(&formatted.text, false)?;
    let sampling = if args.temperature > 0.0 {
        Sampling::Random {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        }
    } else {
        Sampling::Greedy
    };
    let terminal = !args.json && !control.is_observed();
    let mut completions = Vec::with_capacity(variants.len());
    for &variant in &variants {
        let mut orthogonalized = None;
        let (model, intervention): (&Llama, Intervention) = match (variant, &direction) {
            (Variant::None, _) => (&loaded.llama, Intervention::None),
            (Variant::Ablate, Some(d)) => (
                &loaded.llama,
                Intervention::Ablate {
                    direction: d.vector.clone(),
                },
            ),
            (Variant::Actadd, Some(d)) => (
                &loaded.llama,
                Intervention::ActAdd {
                    layer: args.layer.unwrap_or(d.meta.layer),
                    vector: d.vector.clone(),
                    coeff: args.coeff,
                },
            ),
            (Variant::Orthogonalized, Some(d)) => (
                orthogonalized.insert(orthogonalize(loaded.llama.clone(), &d.vector)?),
                Intervention::None,
            ),
            (_, None) => unreachable!("checked above: interventions need a direction"),
        };
        let mut hook = intervention.hook(model)?;
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
        completions.push(Completion {
            variant,
            refusal: is_refusal(&completion),
            completion,
            tokens,
            finish: out.finish[0],
        });
    }
    let report = GenerateReport {
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
