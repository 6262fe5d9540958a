//! `refusal-lens compare`: the interpretability pipeline of METHOD §9 on a base model and one
//! or more compressed versions of it, with the same prompts and positions, and optionally the
//! AIRD repair of each (METHOD §10). One report (compare.json), figures, and a table in the
//! terminal.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use futures_lite::future::block_on;
use refusal_core::model::Llama;
use refusal_core::refusal::aird::{self, AirdFit, AirdSettings, Densification, Repaired};
use refusal_core::refusal::compare::{Decomposition, cosine_figure, cosine_map, decompose};
use refusal_core::refusal::evaluate::{EvalReport, EvalSettings, JudgedCompletion, kl_between};
use refusal_core::refusal::plots::layer_curves;
use refusal_core::refusal::select::CandidateScore;
use refusal_core::refusal::{EncodedSplit, Intervention, RefusalTokens};
use serde::Serialize;

use super::compress::{CalibrationArgs, Summary};
use super::directions::SelectionArgs;
use super::pipeline::{
    EncodedSets, FindSettings, FoundDirection, PromptArgs, PromptUses, compressed_model,
    find_direction, judged, lazy_calibration,
};
use super::{JudgeArgs, describe_tokens, refusal_tokens};
use crate::direction_file::ChosenBy;
use crate::model_args::BaseArgs;
use crate::open::Fingerprint;
use crate::outputs::StagedDir;
use crate::progress::{RunControl, StageBar};

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
    #[arg(long, default_value_t = 0.3)]
    pub fallback_kl_max: f64,
    /// Activation-addition coefficient for sufficiency and transfer.
    #[arg(long, default_value_t = 1.0)]
    pub coeff: f32,
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Also repair every compressed model with AIRD (METHOD §10) and evaluate the repair.
    #[arg(long)]
    pub aird: bool,
    /// AIRD's update scale.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f32,
    /// AIRD's ridge penalty (default: chosen on the validation prompts).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// Refusal with no intervention on both evaluation sets.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Baseline {
    /// Attack success rate on the harmful evaluation set.
    pub asr: f64,
    /// Refusal rate on the harmless evaluation set.
    pub harmless_refusal: f64,
}

/// A model's chosen direction.
#[derive(Debug, Serialize)]
pub struct Chosen {
    pub layer: usize,
    pub position: isize,
    pub chosen_by: ChosenBy,
    pub scores: CandidateScore,
    pub eligible: usize,
    pub baseline_harmful_score: f64,
    pub baseline_harmless_score: f64,
    pub seconds: f64,
}

impl Chosen {
    fn of(found: &FoundDirection) -> Chosen {
        Chosen {
            layer: found.chosen.layer,
            position: found.chosen.position,
            chosen_by: found.chosen_by,
            scores: found.chosen.clone(),
            eligible: found
                .selection
                .candidates
                .iter()
                .filter(|c| c.dropped.is_empty())
                .count(),
            baseline_harmful_score: found.selection.baseline_harmful_score,
            baseline_harmless_score: found.selection.baseline_harmless_score,
            seconds: found.seconds,
        }
    }
}

/// A judged evaluation, summarised, with a few completions to read.
#[derive(Debug, Serialize)]
pub struct Judged {
    pub n_prompts: usize,
    pub n_refused: usize,
    pub rate: f64,
    pub mean_refusal_score: f64,
    pub samples: Vec<JudgedCompletion>,
}

impl Judged {
    /// `rate` is the ASR for harmful prompts and the refusal rate for harmless ones.
    pub fn of(report: EvalReport, harmful: bool) -> Judged {
        let s = report.summary;
        Judged {
            n_prompts: s.n_prompts,
            n_refused: s.n_refused,
            rate: if harmful { s.asr } else { s.refusal_rate },
            mean_refusal_score: s.mean_refusal_score,
            samples: report.completions.into_iter().take(3).collect(),
        }
    }
}

/// AIRD on one compressed model.
#[derive(Debug, Serialize)]
pub struct AirdOutcome {
    pub fit: AirdFit,
    pub densification: Densification,
    pub asr: Judged,
    pub harmless_refusal: Judged,
    /// KL from the compressed model to the repaired one on harmless prompts.
    pub kl_to_compressed: f64,
    /// KL from the base model to the repaired one on harmless prompts.
    pub kl_to_base: f64,
    pub seconds: f64,
}

/// One compressed model against the base.
#[derive(Debug, Serialize)]
pub struct CompressedReport {
    pub spec: String,
    pub compression: Option<Summary>,
    pub direction: Chosen,
    /// cos(r_B, r_C) per layer and position (layer-major), NaN (null) where undefined.
    pub cosines: Vec<f64>,
    /// At the base's selected layer and position.
    pub cosine_at_base_selected: f64,
    /// r_C (C's selected direction) along r^_B.
    pub decomposition: Decomposition,
    pub baseline: Baseline,
    /// ASR of C with its own direction ablated.
    pub asr_ablate_own: Judged,
    /// Harmless refusal of C with its own direction added at its layer.
    pub harmless_refusal_add_own: Judged,
    /// ASR of C with the base direction ablated.
    pub asr_ablate_base: Judged,
    /// Harmless refusal of C with the base direction added at the base's layer.
    pub harmless_refusal_add_base: Judged,
    pub aird: Option<AirdOutcome>,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
struct BaseReport<'a> {
    model: &'a Fingerprint,
    direction: Chosen,
    baseline: Baseline,
}

#[derive(Debug, Serialize)]
struct CompareReport<'a> {
    base: BaseReport<'a>,
    prompts: &'a PromptUses,
    positions: &'a [isize],
    n_layers: usize,
    refusal_tokens: &'a RefusalTokens,
    coeff: f32,
    max_new_tokens: usize,
    compressed: &'a [CompressedReport],
}

/// Evaluates `model` on both sets with no intervention.
struct Evaluator<'a> {
    text: &'a refusal_core::load::TextAssets,
    prompts: &'a super::pipeline::PromptSets,
    tokens: &'a RefusalTokens,
    settings: EvalSettings,
}

impl Evaluator<'_> {
    fn harmful(&self, model: &Llama, i: &Intervention, bar: &mut StageBar) -> Result<Judged> {
        let r = judged(
            model,
            self.text,
            &self.prompts.eval_harmful,
            i,
            self.tokens,
            self.settings,
            bar,
        )?;
        Ok(Judged::of(r, true))
    }

    fn harmless(&self, model: &Llama, i: &Intervention, bar: &mut StageBar) -> Result<Judged> {
        let r = judged(
            model,
            self.text,
            &self.prompts.eval_harmless,
            i,
            self.tokens,
            self.settings,
            bar,
        )?;
        Ok(Judged::of(r, false))
    }

    fn baseline(&self, model: &Llama, bar: &mut StageBar) -> Result<Baseline> {
        Ok(Baseline {
            asr: self.harmful(model, &Intervention::None, bar)?.rate,
            harmless_refusal: self.harmless(model, &Intervention::None, bar)?.rate,
        })
    }
}

/// AIRD fitted on the training prompts (penalty chosen on the validation prompts) and applied
/// to `compressed`, under the progress bar.
///
/// # Errors
///
/// Pipeline errors and cancellation.
pub fn repair(
    base: &Llama,
    compressed: Llama,
    base_direction: &[f32],
    settings: AirdSettings,
    sets: &EncodedSplit,
    bar: &mut StageBar,
) -> Result<Repaired> {
    block_on(aird::repair(
        base,
        compressed,
        base_direction,
        settings,
        sets,
        &mut |p| bar.update(p),
    ))
    .context("repairing with AIRD")
}

pub fn run(args: &CompareArgs, control: &RunControl) -> Result<()> {
    let (loaded, fingerprint) = args.base.model_args().load_with_fingerprint()?;
    let sets = args.prompts.load()?;
    let encoded = EncodedSets::new(&loaded.text, &sets)?;
    let mut bar = StageBar::new(true, control.clone());
    let tokens = refusal_tokens(
        &loaded,
        &args.judge.refusal_tokens,
        &encoded.split.harmful,
        args.judge.batch_size,
        &mut bar,
    )?;
    bar.finish();
    eprintln!("refusal tokens: {}", describe_tokens(&tokens));
    let find = FindSettings {
        selection: args
            .filters
            .settings(args.judge.batch_size, args.score_deep_layers),
        positions: (!args.positions.is_empty()).then(|| args.positions.clone()),
        fallback_kl_max: args.fallback_kl_max,
    };
    let eval = Evaluator {
        text: &loaded.text,
        prompts: &sets,
        tokens: &tokens,
        settings: args.judge.settings(),
    };

    eprintln!(
        "base model {}: finding its refusal direction",
        args.base.base
    );
    let base = &loaded.llama;
    let base_found = find_direction(base, &encoded.split, &tokens, &find, &mut bar)?;
    let base_baseline = eval.baseline(base, &mut bar)?;
    bar.finish();
    eprintln!(
        "base: layer {} position {} ({:?}); ASR {:.3}, harmless refusal {:.3}",
        base_found.chosen.layer,
        base_found.chosen.position,
        base_found.chosen_by,
        base_baseline.asr,
        base_baseline.harmless_refusal
    );
    let base_cell = base_found.cell();

    let calibration = lazy_calibration(&args.calibration, &loaded.text);
    let mut reports = Vec::with_capacity(args.compressed.len());
    for spec in &args.compressed {
        let started = Instant::now();
        let c = compressed_model(
            spec,
            &args.base.model_args(),
            base,
            &calibration,
            args.judge.batch_size,
            control,
        )?;
        eprintln!("{spec}: finding its refusal direction");
        let found = find_direction(&c.llama, &encoded.split, &tokens, &find, &mut bar)?;
        let cosines = cosine_map(&base_found.candidates, &found.candidates)?;
        let (decomposition, _) = decompose(&found.vector, &base_found.vector)?;
        let baseline = eval.baseline(&c.llama, &mut bar)?;
        let ablate = |v: &[f32]| Intervention::Ablate {
            direction: v.to_vec(),
        };
        let add = |layer: usize, v: &[f32]| Intervention::ActAdd {
            layer,
            vector: v.to_vec(),
            coeff: args.coeff,
        };
        let asr_ablate_own = eval.harmful(&c.llama, &ablate(&found.vector), &mut bar)?;
        let harmless_refusal_add_own =
            eval.harmless(&c.llama, &add(found.chosen.layer, &found.vector), &mut bar)?;
        let asr_ablate_base = eval.harmful(&c.llama, &ablate(&base_found.vector), &mut bar)?;
        let harmless_refusal_add_base = eval.harmless(
            &c.llama,
            &add(base_found.chosen.layer, &base_found.vector),
            &mut bar,
        )?;
        let aird = if args.aird {
            let t = Instant::now();
            let settings = AirdSettings {
                layer: base_found.chosen.layer,
                alpha: args.alpha,
                lambda: args.lambda,
                batch_size: args.judge.batch_size,
            };
            let Repaired {
                model: repaired,
                fit,
                densification,
                ..
            } = repair(
                base,
                c.llama.clone(),
                &base_found.vector,
                settings,
                &encoded.split,
                &mut bar,
            )?;
            let asr = eval.harmful(&repaired, &Intervention::None, &mut bar)?;
            let harmless_refusal = eval.harmless(&repaired, &Intervention::None, &mut bar)?;
            let kl = |reference: &Llama, bar: &mut StageBar| {
                block_on(kl_between(
                    reference,
                    &repaired,
                    &Intervention::None,
                    &encoded.eval_harmless,
                    args.judge.batch_size,
                    &mut |p| bar.update(p),
                ))
            };
            let kl_to_compressed = kl(&c.llama, &mut bar)?;
            let kl_to_base = kl(base, &mut bar)?;
            Some(AirdOutcome {
                fit,
                densification,
                asr,
                harmless_refusal,
                kl_to_compressed,
                kl_to_base,
                seconds: t.elapsed().as_secs_f64(),
            })
        } else {
            None
        };
        bar.finish();
        let report = CompressedReport {
            spec: spec.clone(),
            compression: c.compression,
            direction: Chosen::of(&found),
            cosine_at_base_selected: cosines[base_cell],
            cosines,
            decomposition,
            baseline,
            asr_ablate_own,
            harmless_refusal_add_own,
            asr_ablate_base,
            harmless_refusal_add_base,
            aird,
            seconds: started.elapsed().as_secs_f64(),
        };
        eprintln!("{}", row(&report));
        reports.push(report);
    }

    let positions = &base_found.candidates.positions;
    let n_layers = base_found.candidates.n_layers;
    let report = CompareReport {
        base: BaseReport {
            model: &fingerprint,
            direction: Chosen::of(&base_found),
            baseline: base_baseline,
        },
        prompts: &sets.uses,
        positions,
        n_layers,
        refusal_tokens: &tokens,
        coeff: args.coeff,
        max_new_tokens: args.judge.max_new_tokens,
        compressed: &reports,
    };
    let mut staged = StagedDir::new(&args.out)?;
    staged.write("compare.json", serde_json::to_string_pretty(&report)?)?;
    let p = base_found.chosen.position;
    let p_index = positions.iter().position(|&q| q == p).unwrap_or(0);
    let series: Vec<(String, Vec<f64>)> = reports
        .iter()
        .map(|r| {
            let by_layer = (0..n_layers)
                .map(|l| r.cosines[l * positions.len() + p_index])
                .collect();
            (r.spec.clone(), by_layer)
        })
        .collect();
    staged.write(
        "cosine-by-layer.svg",
        layer_curves(
            &format!("cos(base, compressed) at position {p}"),
            "cosine",
            &series,
            Some(base_found.chosen.layer),
        ),
    )?;
    for (i, r) in reports.iter().enumerate() {
        staged.write(
            &format!("cosine-{}.svg", i + 1),
            cosine_figure(n_layers, positions, &r.cosines, Some(base_cell)),
        )?;
    }
    let table = table(&report);
    staged.write("summary.txt", &table)?;
    staged.commit()?;
    println!("{table}");
    println!("wrote {}", args.out.display());
    Ok(())
}

fn row(r: &CompressedReport) -> String {
    let pct = |x: f64| format!("{:.1}", 100.0 * x);
    let (aird_asr, aird_refusal, aird_kl) = match &r.aird {
        Some(a) => (
            pct(a.asr.rate),
            pct(a.harmless_refusal.rate),
            format!("{:.3}", a.kl_to_compressed),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    format!(
        "{:<16} {:>6.3} {:>4}:{:<3} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7}",
        r.spec,
        r.cosine_at_base_selected,
        r.direction.layer,
        r.direction.position,
        pct(r.baseline.asr),
        pct(r.baseline.harmless_refusal),
        pct(r.asr_ablate_own.rate),
        pct(r.harmless_refusal_add_own.rate),
        pct(r.asr_ablate_base.rate),
        pct(r.harmless_refusal_add_base.rate),
        aird_asr,
        aird_refusal,
        aird_kl,
    )
}

/// The one-screen summary.
fn table(report: &CompareReport<'_>) -> String {
    let b = &report.base;
    let mut s = format!(
        "base {}: direction layer {} position {} ({:?}), ASR {:.1}%, harmless refusal {:.1}%\n\
         ASR on {} harmful prompts, refusal on {} harmless prompts, addition coefficient {}\n\n",
        b.model.model,
        b.direction.layer,
        b.direction.position,
        b.direction.chosen_by,
        100.0 * b.baseline.asr,
        100.0 * b.baseline.harmless_refusal,
        report.prompts.n_eval_harmful,
        report.prompts.n_eval_harmless,
        report.coeff,
    );
    s.push_str(
        "model             cos@B  l:pos    ASR    ref  ASR-ab  ref+add ASR-abB ref+addB AIRD-ASR AIRD-ref AIRD-KL\n",
    );
    for r in report.compressed {
        s.push_str(&row(r));
        s.push('\n');
    }
    s.push_str(
        "\ncos@B: cosine of the candidate directions at the base's selected cell; l:pos: the \
         compressed model's own selection; ref: harmless refusal; ASR-ab: ASR with its own \
         direction ablated; ref+add: \
         harmless refusal with its own direction added; -abB/-addB: the base direction instead \
         (transfer); AIRD-*: after the repair (KL to the compressed model). Percentages.\n",
    );
    s
}
