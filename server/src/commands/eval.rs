//! `refusal-lens eval`: greedy completions under an intervention, judged by substring, with
//! refusal rate / ASR, refusal score, KL to the unmodified model and optional cross-entropy.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use futures_lite::future::block_on;
use refusal_core::refusal::RefusalTokens;
use refusal_core::refusal::intervals::Interval;
use refusal_core::refusal::intervention::InterventionKind;
use refusal_core::runs::eval::{self, EvalDirection, EvalRequest, InterventionRun};
use refusal_core::runs::{PromptSource, RunIo};
use serde::Serialize;

use super::{JudgeArgs, Written, in_terminal};
use crate::direction_file::{DirectionFile, DirectionMeta};
use crate::model::open::Fingerprint;
use crate::model_args::ModelArgs;
use crate::outputs::StagedDir;
use crate::progress::RunControl;

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
    #[arg(long, default_value = "none", value_parser = intervention_parser())]
    pub intervention: InterventionKind,
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
    #[arg(long, default_value_t = EvalRequest::WINDOW)]
    pub window: usize,
    /// Output directory (eval.json).
    #[arg(long)]
    pub out: PathBuf,
}

impl EvalArgs {
    pub fn request(&self) -> EvalRequest {
        let name = |p: &PathBuf| p.display().to_string();
        EvalRequest {
            prompts: Some(PromptSource::Named(self.prompts.clone())),
            exclude: self.exclude.as_ref().map(|p| PromptSource::Named(name(p))),
            limit: self.limit,
            intervention: self.intervention,
            direction: self.direction.as_ref().map(name),
            layer: self.layer,
            coeff: self.coeff.clone(),
            judge: self.judge.request(),
            cross_entropy: self.cross_entropy.as_ref().map(name),
            window: self.window,
        }
    }
}

/// `--intervention` values: the core's names (clap lists them in --help and the job API).
fn intervention_parser() -> impl TypedValueParser<Value = InterventionKind> {
    PossibleValuesParser::new(InterventionKind::ALL.map(InterventionKind::name))
        .try_map(|name| name.parse::<InterventionKind>())
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
    runs: Vec<InterventionRun>,
}

pub fn run(args: &EvalArgs, control: &RunControl) -> Result<()> {
    let direction = args
        .direction
        .as_deref()
        .map(DirectionFile::read)
        .transpose()?;
    in_terminal(control, &args.model, |io| {
        write(
            &args.request(),
            direction.as_ref(),
            &args.model,
            &args.out,
            io,
        )
    })
}

/// Runs `request` on the model `models` names, with the direction the request names (read
/// by the host), and writes eval.json into `out`.
///
/// # Errors
///
/// The request's, the model's and the run's errors.
pub fn write(
    request: &EvalRequest,
    direction: Option<&DirectionFile>,
    models: &ModelArgs,
    out: &Path,
    io: &mut dyn RunIo,
) -> Result<Written> {
    request.validate()?;
    let (loaded, fingerprint) = models.load_with_fingerprint()?;
    let given = direction.map(|d| {
        if d.meta.model.sha256 != fingerprint.sha256 {
            io.note(&format!(
                "note: the direction was extracted from {} ({}), not from this model",
                d.meta.model.model,
                &d.meta.model.sha256[..12.min(d.meta.model.sha256.len())]
            ));
        }
        EvalDirection {
            vector: d.vector.clone(),
            layer: d.meta.layer,
            refusal_tokens: (d.meta.model.architecture == fingerprint.architecture)
                .then(|| d.meta.refusal_tokens.clone()),
        }
    });
    let found = block_on(eval::run(
        request,
        &loaded.llama,
        &loaded.text,
        given.as_ref(),
        io,
    ))
    .with_context(|| format!("evaluating {}", models.model))?;
    let table = table(&found.runs);
    let file = EvalFile {
        model: &fingerprint,
        prompts: found.prompts,
        excluded: found.excluded,
        n_prompts: found.n_prompts,
        max_new_tokens: request.judge.max_new_tokens,
        refusal_tokens: &found.refusal_tokens,
        direction: direction.map(|d| &d.meta),
        runs: found.runs,
    };
    let mut staged = StagedDir::new(out)?;
    staged.write("eval.json", serde_json::to_string_pretty(&file)?)?;
    let written = staged.commit()?;
    Ok(Written::done(format!(
        "{table}\nwrote {}",
        written[0].display()
    )))
}

fn table(runs: &[InterventionRun]) -> String {
    let mut s = String::from(
        "intervention  layer  coeff  prompts  refused  refusal_rate         [95%]    ASR         [95%]  mean_score  mean_KL  CE(nats)\n",
    );
    for r in runs {
        let m = &r.report.summary;
        let opt = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
        s.push_str(&format!(
            "{:<12}  {:>5}  {:>5}  {:>7}  {:>7}  {:>12.3}  {:>12}  {:>5.3}  {:>12}  {:>10.3}  {:>7}  {:>8}\n",
            format!("{:?}", r.intervention).to_lowercase(),
            r.layer.map_or("-".into(), |l| l.to_string()),
            r.coeff.map_or("-".into(), |c| c.to_string()),
            m.n_prompts,
            m.n_refused,
            m.refusal_rate,
            unit_interval(m.refusal_rate_interval),
            m.asr,
            unit_interval(m.asr_interval),
            m.mean_refusal_score,
            opt(m.mean_kl, 4),
            opt(r.cross_entropy.map(|c| c.nats_per_token), 3),
        ));
    }
    if let Some(first) = runs.first() {
        s.push_str(&format!(
            "judged by {}; rates and intervals (Wilson 95%) are its.\n",
            first.report.summary.judged_by
        ));
    }
    for r in runs {
        s.push_str(&judges_line(r));
    }
    s
}

/// Every judge's refusals in one run, and how each two agree.
fn judges_line(r: &InterventionRun) -> String {
    let judges = &r.report.summary.judges;
    let rates: Vec<String> = judges
        .rates
        .iter()
        .map(|j| format!("{} {}/{}", j.judge, j.n_refused, r.report.summary.n_prompts))
        .collect();
    let agreement: Vec<String> = judges
        .agreement
        .iter()
        .map(|a| {
            format!(
                "{} ~ {}: {:.0}% agree, kappa {}",
                a.judges[0],
                a.judges[1],
                100.0 * a.observed,
                a.kappa.map_or("-".into(), |k| format!("{k:.2}"))
            )
        })
        .collect();
    format!(
        "  {}: refused by {}; {}\n",
        format!("{:?}", r.intervention).to_lowercase(),
        rates.join(", "),
        agreement.join("; ")
    )
}

/// An interval of a rate as the table writes rates, to three decimals: `[0.043,0.310]`.
fn unit_interval(i: Interval) -> String {
    format!("[{:.3},{:.3}]", i.low, i.high)
}
