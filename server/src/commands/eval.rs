//! `refusal-lens eval`: greedy completions under an intervention, judged by substring, with
//! refusal rate / ASR, refusal score, KL to the unmodified model and optional cross-entropy.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures_lite::future::block_on;
use refusal_core::refusal::evaluate::{CrossEntropy, EvalReport, cross_entropy, evaluate};
use refusal_core::refusal::intervention::InterventionKind;
use refusal_core::refusal::prompts::without;
use refusal_core::refusal::{EncodedPrompts, Intervention, RefusalTokens};
use serde::Serialize;

use super::{JudgeArgs, Terminal, load_prompts, read_prompts, refusal_tokens};
use crate::direction_file::{DirectionFile, DirectionMeta};
use crate::model::open::Fingerprint;
use crate::model_args::ModelArgs;
use crate::outputs::StagedDir;
use crate::progress::RunControl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InterventionArg {
    None,
    Ablate,
    Actadd,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompts (.json instruction list, AdvBench .csv, or one per line), or `builtin:harmful`
    /// / `builtin:harmless`.
    #[arg(long)]
    pub prompts: String,
    /// Leave out the instructions of this file (e.g. AdvBench minus the training split).
    #[arg(long)]
    pub exclude: Option<PathBuf>,
    /// Evaluate only the first N prompts (after --exclude).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, value_enum, default_value_t = InterventionArg::None)]
    pub intervention: InterventionArg,
    /// A direction written by `directions` (its directory, .safetensors or .json).
    #[arg(long)]
    pub direction: Option<PathBuf>,
    /// Layer of the activation addition (default: the direction's layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Activation-addition coefficients; several (comma-separated) give a dose-response table.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub coeff: Vec<f32>,
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Also measure cross-entropy on this text file.
    #[arg(long)]
    pub cross_entropy: Option<PathBuf>,
    /// Tokens per cross-entropy window.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Output directory (eval.json).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Run {
    intervention: InterventionKind,
    layer: Option<usize>,
    coeff: Option<f32>,
    seconds: f64,
    cross_entropy: Option<CrossEntropy>,
    #[serde(flatten)]
    report: EvalReport,
}

#[derive(Debug, Serialize)]
struct EvalFile<'a> {
    model: &'a Fingerprint,
    prompts: String,
    excluded: Option<String>,
    n_prompts: usize,
    max_new_tokens: usize,
    refusal_tokens: &'a RefusalTokens,
    direction: Option<&'a DirectionMeta>,
    runs: Vec<Run>,
}

pub fn run(args: &EvalArgs, control: &RunControl) -> Result<()> {
    let mut prompts = load_prompts(&args.prompts)?;
    if let Some(ex) = &args.exclude {
        let before = prompts.len();
        prompts = without(prompts, &read_prompts(ex)?);
        eprintln!(
            "{} of {before} prompts remain after --exclude {}",
            prompts.len(),
            ex.display()
        );
    }
    if let Some(n) = args.limit {
        prompts.truncate(n);
    }
    if prompts.is_empty() {
        bail!("no prompts left to evaluate");
    }
    let direction = match (&args.direction, args.intervention) {
        (Some(p), _) => Some(DirectionFile::read(p)?),
        (None, InterventionArg::None) => None,
        (None, _) => bail!("--intervention {:?} needs --direction", args.intervention),
    };
    let (loaded, fingerprint) = args.model.load_with_fingerprint()?;
    if let Some(d) = &direction {
        if d.vector.len() != loaded.llama.config().d_model {
            bail!(
                "the direction has {} dimensions but {} has width {}",
                d.vector.len(),
                args.model.model,
                loaded.llama.config().d_model
            );
        }
        if d.meta.model.sha256 != fingerprint.sha256 {
            eprintln!(
                "note: the direction was extracted from {} ({}), not from this model",
                d.meta.model.model,
                &d.meta.model.sha256[..12.min(d.meta.model.sha256.len())]
            );
        }
    }

    let mut io = Terminal::new(control, &args.model);
    let tokens = match &direction {
        Some(d)
            if args.judge.refusal_tokens.is_empty()
                && d.meta.model.architecture == fingerprint.architecture =>
        {
            let tokens = d.meta.refusal_tokens.clone();
            eprintln!("refusal tokens: {} (the direction's)", tokens.describe());
            tokens
        }
        _ => {
            let encoded = EncodedPrompts::new(&loaded.text, &prompts, None)?;
            refusal_tokens(
                &loaded,
                &args.judge.refusal_tokens,
                &encoded,
                args.judge.batch_size,
                &mut io,
            )?
        }
    };

    let interventions: Vec<(Intervention, Option<usize>, Option<f32>)> =
        match (args.intervention, &direction) {
            (InterventionArg::None, _) => vec![(Intervention::None, None, None)],
            (InterventionArg::Ablate, Some(d)) => vec![(
                Intervention::Ablate {
                    direction: d.vector.clone(),
                },
                None,
                None,
            )],
            (InterventionArg::Actadd, Some(d)) => {
                let layer = args.layer.unwrap_or(d.meta.layer);
                args.coeff
                    .iter()
                    .map(|&coeff| {
                        (
                            Intervention::ActAdd {
                                layer,
                                vector: d.vector.clone(),
                                coeff,
                            },
                            Some(layer),
                            Some(coeff),
                        )
                    })
                    .collect()
            }
            (_, None) => {
                unreachable!("checked above: interventions other than none need a direction")
            }
        };
    let text = args
        .cross_entropy
        .as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;

    let settings = args.judge.settings();
    let mut runs = Vec::with_capacity(interventions.len());
    for (intervention, layer, coeff) in interventions {
        let started = Instant::now();
        let report = block_on(evaluate(
            &loaded.llama,
            &loaded.text,
            &prompts,
            &intervention,
            &tokens,
            settings,
            &mut |p| io.bar.update(p),
        ))?;
        let ce = match &text {
            Some(t) => Some(block_on(cross_entropy(
                &loaded.llama,
                &loaded.text.tokenizer,
                t,
                &intervention,
                args.window,
                &mut |p| io.bar.update(p),
            ))?),
            None => None,
        };
        runs.push(Run {
            intervention: intervention.kind(),
            layer,
            coeff,
            seconds: started.elapsed().as_secs_f64(),
            cross_entropy: ce,
            report,
        });
    }
    drop(io); // clears the bar before the table is printed

    println!("{}", table(&runs));
    let file = EvalFile {
        model: &fingerprint,
        prompts: args.prompts.clone(),
        excluded: args.exclude.as_ref().map(|p| p.display().to_string()),
        n_prompts: prompts.len(),
        max_new_tokens: args.judge.max_new_tokens,
        refusal_tokens: &tokens,
        direction: direction.as_ref().map(|d| &d.meta),
        runs,
    };
    let mut staged = StagedDir::new(&args.out)?;
    staged.write("eval.json", serde_json::to_string_pretty(&file)?)?;
    let written = staged.commit()?;
    println!("wrote {}", written[0].display());
    Ok(())
}

fn table(runs: &[Run]) -> String {
    let mut s = String::from(
        "intervention  layer  coeff  prompts  refused  refusal_rate    ASR  mean_score  mean_KL  CE(nats)\n",
    );
    for r in runs {
        let m = &r.report.summary;
        let opt = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
        s.push_str(&format!(
            "{:<12}  {:>5}  {:>5}  {:>7}  {:>7}  {:>12.3}  {:>5.3}  {:>10.3}  {:>7}  {:>8}\n",
            format!("{:?}", r.intervention).to_lowercase(),
            r.layer.map_or("-".into(), |l| l.to_string()),
            r.coeff.map_or("-".into(), |c| c.to_string()),
            m.n_prompts,
            m.n_refused,
            m.refusal_rate,
            m.asr,
            m.mean_refusal_score,
            opt(m.mean_kl, 4),
            opt(r.cross_entropy.map(|c| c.nats_per_token), 3),
        ));
    }
    s
}
