//! `refusal-lens compare`: the interpretability pipeline of METHOD §9 on a base model and one
//! or more compressed versions of it, with the same prompts and positions, and optionally the
//! AIRD repair of each (METHOD §10). One report (compare.json), figures, and a table in the
//! terminal.

use std::path::PathBuf;

use anyhow::Result;
use futures_lite::future::block_on;
use refusal_core::defaults;
use refusal_core::refusal::compare::{
    BaseReport, Chosen, CompareReport, Comparison, CompressedReport, RepairSettings, cosine_figure,
};
use refusal_core::refusal::find::FindSettings;
use refusal_core::refusal::plots::layer_curves;

use super::compress::CalibrationArgs;
use super::directions::SelectionArgs;
use super::pipeline::{AlphaArgs, PromptArgs, compressed_model, find_direction, lazy_calibration};
use super::{JudgeArgs, describe_tokens, refusal_tokens};
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

pub fn run(args: &CompareArgs, control: &RunControl) -> Result<()> {
    let (loaded, fingerprint) = args.base.model_args().load_with_fingerprint()?;
    let sets = args.prompts.load()?;
    let split = sets.encoded_split(&loaded.text)?;
    let mut bar = StageBar::new(true, control.clone());
    let tokens = refusal_tokens(
        &loaded,
        &args.judge.refusal_tokens,
        &split.harmful,
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
    let judge = sets.judge(&loaded.text, &tokens, args.judge.settings())?;
    let validation = sets.validation_judge(&loaded.text, &tokens, args.judge.settings())?;

    eprintln!(
        "base model {}: finding its refusal direction",
        args.base.base
    );
    let base = &loaded.llama;
    let base_found = find_direction(base, &split, &tokens, &find, &mut bar)?;
    let base_baseline = block_on(judge.baseline(base, &mut |p| bar.update(p)))?;
    bar.finish();
    eprintln!(
        "base: layer {} position {} ({:?}); ASR {:.3}, harmless refusal {:.3}",
        base_found.chosen.layer,
        base_found.chosen.position,
        base_found.chosen_by,
        base_baseline.asr,
        base_baseline.harmless_refusal
    );
    let comparison = Comparison {
        base,
        base_found: &base_found,
        split: &split,
        judge: &judge,
        validation: &validation,
        find: &find,
        coeff: args.coeff,
        repair: args.aird.then(|| RepairSettings {
            alpha: args.alpha.alpha,
            lambda: args.lambda,
            alpha_grid: args.alpha.grid(),
        }),
    };

    let calibration = lazy_calibration(&args.calibration, &loaded.text);
    let mut reports = Vec::with_capacity(args.compressed.len());
    for spec in &args.compressed {
        let c = compressed_model(
            spec,
            &args.base.model_args(),
            base,
            &calibration,
            args.judge.batch_size,
            control,
        )?;
        eprintln!("{spec}: finding its refusal direction and measuring it");
        let report =
            block_on(comparison.measure(spec, &c.llama, c.compression, &mut |p| bar.update(p)))?;
        bar.finish();
        eprintln!("{}", row(&report));
        reports.push(report);
    }

    let positions = base_found.candidates.positions.clone();
    let n_layers = base_found.candidates.n_layers;
    let base_cell = base_found.cell();
    let report: CompareReport<Fingerprint> = CompareReport {
        base: BaseReport {
            model: fingerprint,
            direction: Chosen::of(&base_found),
            baseline: base_baseline,
        },
        prompts: sets.uses,
        positions,
        n_layers,
        refusal_tokens: tokens.clone(),
        coeff: args.coeff,
        max_new_tokens: args.judge.max_new_tokens,
        compressed: reports,
    };
    let positions = &report.positions;
    let reports = &report.compressed;
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
fn table(report: &CompareReport<Fingerprint>) -> String {
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
    for r in &report.compressed {
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
