//! `refusal-lens compare`: the interpretability pipeline of METHOD §9 on a base model and one
//! or more compressed versions of it, with the same prompts and positions, and optionally the
//! AIRD repair of each (METHOD §10). One report (compare.json), figures, and a table in the
//! terminal.

use std::path::{Path, PathBuf};

use anyhow::Result;
use futures_lite::future::block_on;
use refusal_core::refusal::compare::CompareReport;
use refusal_core::refusal::intervals::percent;
use refusal_core::runs::RunIo;
use refusal_core::runs::compare::{self, CompareRequest};
use refusal_core::runs::defaults;

use super::compress::CalibrationArgs;
use super::directions::SelectionArgs;
use super::pipeline::{AlphaArgs, PromptArgs};
use super::{JudgeArgs, Written, in_terminal};
use crate::model::open::Fingerprint;
use crate::model_args::{BaseArgs, ModelArgs};
use crate::outputs::StagedDir;
use crate::progress::RunControl;

#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub base: BaseArgs,
    /// A compressed model (file, directory, alias) or a recipe compressed on the fly
    /// (rtn:8:128, rtn:4:128, gguf:q4_0, gptq:4:128, wanda:0.5, wanda:2:4, sparsegpt:0.5,
    /// magnitude:0.5). Repeat for several.
    #[arg(long, required = true)]
    pub compressed: Vec<String>,
    #[command(flatten)]
    pub prompts: PromptArgs,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    /// Score only these post-instruction positions in selection (comma-separated, e.g. -1);
    /// all by default. Cosines are reported for every position either way.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub positions: Vec<isize>,
    /// Also score candidates past the layer limit (slower; they fill the heatmaps).
    #[arg(long)]
    pub score_deep_layers: bool,
    #[command(flatten)]
    pub filters: SelectionArgs,
    /// When no candidate passes METHOD §6: the lowest bypass score among candidates with KL
    /// at most this (and below the layer limit).
    #[arg(long, default_value_t = defaults::FALLBACK_KL_MAX)]
    pub fallback_kl_max: f64,
    /// Activation-addition coefficient for sufficiency and transfer.
    #[arg(long, default_value_t = defaults::ACTADD_COEFF)]
    pub coeff: f32,
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Also repair every compressed model with AIRD (METHOD §10) and evaluate the repair.
    #[arg(long)]
    pub aird: bool,
    #[command(flatten)]
    pub alpha: AlphaArgs,
    /// AIRD's ridge penalty (default: chosen on the validation prompts).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

impl CompareArgs {
    pub fn request(&self) -> CompareRequest {
        CompareRequest {
            compressed: self.compressed.clone(),
            study: self.prompts.study(&self.calibration, &self.judge),
            positions: (!self.positions.is_empty()).then(|| self.positions.clone()),
            score_deep_layers: self.score_deep_layers,
            filters: self.filters.filters(),
            fallback_kl_max: self.fallback_kl_max,
            coeff: self.coeff,
            aird: self.aird,
            alpha: self.alpha.request(self.lambda),
        }
    }
}

pub fn run(args: &CompareArgs, control: &RunControl) -> Result<()> {
    let models = args.base.model_args();
    in_terminal(control, &models, |io| {
        write(&args.request(), &models, &args.out, io)
    })
}

/// Runs `request` with the base model `models` names and writes compare.json, its figures
/// and the summary table into `out`.
///
/// # Errors
///
/// The request's, the models' and the run's errors.
pub fn write(
    request: &CompareRequest,
    models: &ModelArgs,
    out: &Path,
    io: &mut dyn RunIo,
) -> Result<Written> {
    let (loaded, fingerprint) = models.load_with_fingerprint()?;
    let report = block_on(compare::run(
        request,
        &loaded.llama,
        &loaded.text,
        fingerprint,
        io,
    ))?;

    let mut staged = StagedDir::new(out)?;
    staged.write("compare.json", serde_json::to_string_pretty(&report)?)?;
    for (name, svg) in compare::figures(&report) {
        staged.write(&name, svg)?;
    }
    let table = table(&report);
    staged.write("summary.txt", &table)?;
    staged.commit()?;
    Ok(Written::done(format!("{table}\nwrote {}", out.display())))
}

/// The one-screen summary.
fn table(report: &CompareReport<Fingerprint>) -> String {
    let b = &report.base;
    let floor = b.noise_floor.as_ref();
    let mut s = format!(
        "base {}: direction layer {} position {} ({:?}), ASR {}, harmless refusal {}\n\
         ASR on {} harmful prompts, refusal on {} harmless prompts, addition coefficient {}\n",
        b.model.model,
        b.direction.layer,
        b.direction.position,
        b.direction.chosen_by,
        percent(b.baseline.asr.rate, b.baseline.asr.interval),
        percent(
            b.baseline.harmless_refusal.rate,
            b.baseline.harmless_refusal.interval
        ),
        report.prompts.n_eval_harmful,
        report.prompts.n_eval_harmless,
        report.coeff,
    );
    if let Some(f) = floor {
        s.push_str(&format!(
            "noise floor: the base's directions from two halves of its training prompts ({} + {} each) have cosine {:.3} at its cell\n",
            f.n_harmful_per_half, f.n_harmless_per_half, f.at_base_selected
        ));
    }
    s.push('\n');
    s.push_str(&compare::row_heads());
    s.push('\n');
    for r in &report.compressed {
        s.push_str(&compare::row(r, floor.map(|f| f.at_base_selected)));
        s.push('\n');
    }
    s.push_str(
        "\ncos@B: cosine of the candidate directions at the base's selected cell; floor: the \
         base's split-half cosine there (a cosine near it is as close as resampling the \
         prompts gets); l:pos: the compressed model's own selection; ref: harmless refusal; \
         ASR-ab: ASR with its own direction ablated; ref+add: harmless refusal with its own \
         direction added; -abB/-addB: the base direction instead (transfer); AIRD-*: after \
         the repair (KL to the compressed model). Percentages, with Wilson 95% intervals \
         underneath.\n\npaired differences in points (95% bootstrap over prompts; *: the \
         interval leaves 0 out):\n",
    );
    s.push_str(&compare::difference_heads());
    s.push('\n');
    for r in &report.compressed {
        s.push_str(&compare::differences_row(r));
        s.push('\n');
    }
    if let Some(seeds) = &report.seeds {
        s.push_str(&compare::seeds_table(seeds));
    }
    s
}
