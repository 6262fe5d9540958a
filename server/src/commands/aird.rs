//! `refusal-lens aird`: repair a compressed model by re-inducing the base model's refusal
//! direction (METHOD §10, our reconstruction), compare it with the two simple baselines, and
//! export the repaired model.
//!
//! Variants reported: the base, the compressed model, compressed + AIRD, compressed + the base
//! direction added at `l*` (unconditional activation addition), and the compressed model
//! orthogonalized against the part of its own direction that drifted away from the base's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use futures_lite::future::block_on;
use refusal_core::compress::model::LINEARS;
use refusal_core::model::WeightName;
use refusal_core::refusal::intervals::Difference;
use refusal_core::runs::RunIo;
use refusal_core::runs::aird::{self, AirdRequest, AirdRun, DirectionSource};

use super::compress::CalibrationArgs;
use super::pipeline::{AlphaArgs, PromptArgs};
use super::{JudgeArgs, Written, in_terminal};
use crate::model::saved::{DerivedModel, OutFormat, save};
use crate::model_args::{BaseArgs, ModelArgs};
use crate::outputs::write_atomic;
use crate::progress::RunControl;

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

impl AirdArgs {
    pub fn request(&self) -> AirdRequest {
        AirdRequest {
            compressed: self.compressed.clone(),
            direction: self
                .direction
                .as_ref()
                .map(|p| DirectionSource::Named(p.display().to_string())),
            layer: self.layer,
            position: self.position,
            alpha: self.alpha.request(self.lambda),
            study: self.prompts.study(&self.calibration, &self.judge),
            cross_entropy: self.cross_entropy.as_ref().map(|p| p.display().to_string()),
            window: self.window,
        }
    }
}

pub fn run(args: &AirdArgs, control: &RunControl) -> Result<()> {
    let models = args.base.model_args();
    in_terminal(control, &models, |io| {
        write(&args.request(), &models, &args.out, io)
    })
}

/// Repairs the model `request` names as compressed from the base `models` names, writes the
/// repaired model to `out` and the report beside it.
///
/// # Errors
///
/// The request's, an output that does not suit the base's format, the models' and the run's
/// errors.
pub fn write(
    request: &AirdRequest,
    models: &ModelArgs,
    out: &Path,
    io: &mut dyn RunIo,
) -> Result<Written> {
    let started = Instant::now();
    let resolved = models.resolve()?;
    OutFormat::of(out, &resolved)?;
    let (loaded, fingerprint) = models.load_with_fingerprint()?;
    let AirdRun {
        repaired,
        mut report,
    } = block_on(aird::run(
        request,
        &loaded.llama,
        &loaded.text,
        fingerprint,
        io,
    ))?;
    let (layer, fit) = (report.base_direction.layer, &report.fit);

    // Every linear layer differs from the base (compressed, and one repaired).
    let changed: Vec<WeightName> = (0..repaired.config().n_layers)
        .flat_map(|l| LINEARS.map(|w| WeightName::Block(l, w)))
        .collect();
    let note = format!(
        "{} repaired by AIRD at layer {layer} (alpha {}, lambda {:.3e})",
        request.compressed, fit.settings.alpha, fit.lambda
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
        out,
    )?;
    report.output = Some(out.display().to_string());
    report.seconds = started.elapsed().as_secs_f64();
    let path = report_path(out);
    write_atomic(&path, |f| {
        serde_json::to_writer_pretty(f, &report)?;
        Ok(())
    })?;
    let mut text = format!(
        "{:<32} {:>7} {:>9} {:>9} {:>9} {:>8} {:>8}\n",
        "variant", "ASR %", "[95%]", "refusal %", "[95%]", "KL(C||.)", "ppl"
    );
    for v in &report.variants {
        text.push_str(&format!(
            "{:<32} {:>7.1} {:>9} {:>9.1} {:>9} {:>8.4} {:>8}\n",
            v.name,
            100.0 * v.asr.rate,
            v.asr.interval.whole_points(),
            100.0 * v.harmless_refusal.rate,
            v.harmless_refusal.interval.whole_points(),
            v.kl_to_compressed,
            v.cross_entropy
                .map_or("-".into(), |c| format!("{:.2}", c.perplexity)),
        ));
    }
    text.push_str(&format!(
        "\nfrom the compressed model, in points (95% paired bootstrap over prompts; *: leaves 0 out):\n{:<32} {:>22} {:>22}\n",
        "variant", "ASR", "harmless refusal"
    ));
    let cell = |d: Option<Difference>| d.map_or("-".into(), |d| d.points());
    for v in &report.variants {
        if let Some(change) = &v.vs_compressed {
            text.push_str(&format!(
                "{:<32} {:>22} {:>22}\n",
                v.name,
                cell(change.asr),
                cell(change.harmless_refusal)
            ));
        }
    }
    if let Some(seeds) = &report.seeds {
        let list: Vec<String> = seeds.seeds.iter().map(u64::to_string).collect();
        text.push_str(&format!(
            "over seeds {} (mean ± sd [min, max]): drift cosine {}\n",
            list.join(","),
            seeds.drift_cosine.describe(1.0, 3)
        ));
        for v in &seeds.variants {
            text.push_str(&format!(
                "{:<32} ASR {}%  refusal {}%\n",
                v.name,
                v.asr.describe(100.0, 1),
                v.harmless_refusal.describe(100.0, 1)
            ));
        }
    }
    if let Some(floor) = report.drift_noise_floor {
        text.push_str(&format!(
            "the compressed model's direction has cosine {:.3} with the base's; the base's own from two halves of its prompts: {floor:.3}\n",
            report.drift.cosine
        ));
    }
    text.push_str(&format!(
        "density of block {}'s down projection: {:.3} -> {:.3}\nwrote {} and {}",
        layer - 1,
        report.densification.density_before,
        report.densification.density_after,
        out.display(),
        path.display()
    ));
    Ok(Written::done(text))
}
