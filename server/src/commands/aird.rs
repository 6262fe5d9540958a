//! `refusal-lens aird`: repair a compressed model by re-inducing the base model's refusal
//! direction (METHOD §10, our reconstruction), compare it with the two simple baselines, and
//! export the repaired model.
//!
//! Variants reported: the base, the compressed model, compressed + AIRD, compressed + the base
//! direction added at `l*` (unconditional activation addition), and the compressed model
//! orthogonalized against the part of its own direction that drifted away from the base's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures_lite::future::block_on;
use refusal_core::compress::model::LINEARS;
use refusal_core::model::WeightName;
use refusal_core::refusal::aird::AirdSettings;
use refusal_core::refusal::repair_study::{
    AirdReport, AlphaSearch, BaseDirection, PerplexityText, RepairStudy, repair_study,
};

use super::compress::CalibrationArgs;
use super::pipeline::{AlphaArgs, PromptArgs, compressed_model, lazy_calibration};
use super::{JudgeArgs, describe_tokens, refusal_tokens};
use crate::direction_file::DirectionFile;
use crate::model_args::BaseArgs;
use crate::outputs::write_atomic;
use crate::progress::{RunControl, StageBar};
use crate::saved_model::{DerivedModel, OutFormat, save};

#[derive(Debug, Clone, clap::Args)]
pub struct AirdArgs {
    #[command(flatten)]
    pub base: BaseArgs,
    /// The compressed model (file, directory, alias) or a recipe compressed on the fly
    /// (e.g. wanda:0.5).
    #[arg(long)]
    pub compressed: String,
    /// The base model's direction, written by `directions`; without it the base direction is
    /// the difference in means at --layer and --position.
    #[arg(long)]
    pub direction: Option<PathBuf>,
    /// `l*`, the layer whose input is corrected (default: the direction's layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Position of the base direction (and of C's own direction for the orthogonalization
    /// baseline), counted from the end.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub position: isize,
    #[command(flatten)]
    pub alpha: AlphaArgs,
    /// Ridge penalty (default: chosen on the validation prompts).
    #[arg(long)]
    pub lambda: Option<f64>,
    #[command(flatten)]
    pub prompts: PromptArgs,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    /// Perplexity of every variant on this text file.
    #[arg(long)]
    pub cross_entropy: Option<PathBuf>,
    /// Tokens per cross-entropy window.
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// The repaired model: FILE.gguf (GGUF base) or DIR/model.safetensors; the report is
    /// written beside it as FILE.aird.json.
    #[arg(long)]
    pub out: PathBuf,
}

fn report_path(out: &Path) -> PathBuf {
    let mut name = out.file_stem().unwrap_or_default().to_os_string();
    name.push(".aird.json");
    out.with_file_name(name)
}

pub fn run(args: &AirdArgs, control: &RunControl) -> Result<()> {
    let started = Instant::now();
    let base_args = args.base.model_args();
    let resolved = base_args.resolve()?;
    OutFormat::of(&args.out, &resolved)?;
    let (loaded, fingerprint) = base_args.load_with_fingerprint()?;
    let base = &loaded.llama;
    let sets = args.prompts.load()?;
    let split = sets.encoded_split(&loaded.text)?;
    let mut bar = StageBar::new(true, control.clone());

    let (vector, base_direction) = match &args.direction {
        Some(path) => {
            let d = DirectionFile::read(path)?;
            let source = path.display().to_string();
            let layer = args.layer.unwrap_or(d.meta.layer);
            let described = BaseDirection {
                source,
                layer,
                position: d.meta.position,
                norm: d.meta.norm,
            };
            (d.vector, described)
        }
        None => {
            let Some(layer) = args.layer else {
                bail!("give the base direction (--direction, from `directions`) or --layer");
            };
            block_on(BaseDirection::difference_in_means(
                base,
                &split,
                layer,
                args.position,
                args.judge.batch_size,
                &mut |p| bar.update(p),
            ))
            .with_context(|| format!("--layer {layer} --position {}", args.position))?
        }
    };
    if vector.len() != base.config().d_model {
        bail!("the direction does not fit the base model's width");
    }
    let layer = base_direction.layer;
    let tokens = refusal_tokens(
        &loaded,
        &args.judge.refusal_tokens,
        &split.harmful,
        args.judge.batch_size,
        &mut bar,
    )?;
    eprintln!("refusal tokens: {}", describe_tokens(&tokens));

    let calibration = lazy_calibration(&args.calibration, &loaded.text);
    let c = compressed_model(
        &args.compressed,
        &base_args,
        base,
        &calibration,
        args.judge.batch_size,
        control,
    )?;
    let settings = AirdSettings {
        layer,
        alpha: args.alpha.alpha,
        lambda: args.lambda,
        batch_size: args.judge.batch_size,
    };
    let text = args
        .cross_entropy
        .as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .transpose()?;
    let judge = sets.judge(&loaded.text, &tokens, args.judge.settings())?;
    let validation = sets.validation_judge(&loaded.text, &tokens, args.judge.settings())?;
    let grid = args.alpha.grid();
    eprintln!("repairing with AIRD at layer {layer} and judging five variants");
    let RepairStudy {
        repaired,
        fit,
        alpha_selection,
        densification,
        drift,
        variants,
    } = block_on(repair_study(
        base,
        &c.llama,
        &vector,
        args.position,
        settings,
        &split,
        &judge,
        text.as_deref().map(|text| PerplexityText {
            text,
            window: args.window,
        }),
        grid.as_ref().map(|grid| AlphaSearch {
            grid,
            validation: &validation,
        }),
        &mut |p| bar.update(p),
    ))?;
    bar.finish();
    eprintln!(
        "AIRD at layer {layer}: lambda {:.3e}, train MSE {:.4} -> {:.4}, |u| {:.4}; C's direction has cosine {:.3} with the base's",
        fit.lambda, fit.train.mse_before, fit.train.mse_after, fit.u_norm, drift.cosine
    );
    if let Some(sel) = &alpha_selection {
        eprintln!(
            "alpha chosen on the validation prompts: {} (compressed model's harmless refusal {:.1}%, bound +{:.1} points)",
            sel.alpha,
            100.0 * sel.compressed_harmless_refusal,
            100.0 * sel.grid.max_harmless_increase
        );
        for a in &sel.scores {
            eprintln!(
                "  alpha {:<5} ASR {:>5.1}%  harmless refusal {:>5.1}%{}",
                a.alpha,
                100.0 * a.asr,
                100.0 * a.harmless_refusal,
                if a.allowed { "" } else { "  (over the bound)" }
            );
        }
    }

    // Every linear layer differs from the base (compressed, and one repaired).
    let changed: Vec<WeightName> = (0..repaired.config().n_layers)
        .flat_map(|l| LINEARS.map(|w| WeightName::Block(l, w)))
        .collect();
    let note = format!(
        "{} repaired by AIRD at layer {layer} (alpha {}, lambda {:.3e})",
        args.compressed, fit.settings.alpha, fit.lambda
    );
    save(
        &DerivedModel {
            source: &resolved,
            model: &repaired,
            text: &loaded.text,
            changed: &changed,
            packed: &[],
            note: ("repair", note),
        },
        &args.out,
    )?;
    let report = AirdReport {
        base: fingerprint,
        compressed: args.compressed.clone(),
        compression: c.compression,
        prompts: sets.uses,
        base_direction,
        fit,
        alpha_selection,
        densification,
        drift,
        variants,
        output: Some(args.out.display().to_string()),
        seconds: started.elapsed().as_secs_f64(),
    };
    let path = report_path(&args.out);
    write_atomic(&path, |f| {
        serde_json::to_writer_pretty(f, &report)?;
        Ok(())
    })?;
    println!(
        "{:<32} {:>7} {:>9} {:>8} {:>8}",
        "variant", "ASR %", "refusal %", "KL(C||.)", "ppl"
    );
    for v in &report.variants {
        println!(
            "{:<32} {:>7.1} {:>9.1} {:>8.4} {:>8}",
            v.name,
            100.0 * v.asr.rate,
            100.0 * v.harmless_refusal.rate,
            v.kl_to_compressed,
            v.cross_entropy
                .map_or("-".into(), |c| format!("{:.2}", c.perplexity)),
        );
    }
    println!(
        "density of block {}'s down projection: {:.3} -> {:.3}",
        layer - 1,
        densification.density_before,
        densification.density_after
    );
    println!("wrote {} and {}", args.out.display(), path.display());
    Ok(())
}
