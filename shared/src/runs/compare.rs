//! `compare` (METHOD §9): the base model's refusal direction and each compressed model's own,
//! found on the same prompts and positions and measured against each other, optionally with
//! the AIRD repair of each (METHOD §10). The report is `compare.json`.

use serde::{Deserialize, Serialize};

use super::compress::{check_spec, compressed_model};
use super::defaults;
use super::directions::SelectionFilters;
use super::study::{AlphaRequest, JudgeModel, StudyRequest};
use super::{RunError, RunIo};
use crate::load::TextAssets;
use crate::model::Llama;
use crate::refusal::compare::{
    BaseReport, Chosen, CompareReport, Comparison, CompressedReport, NoiseFloor, RepairSettings,
    cosine_figure,
};
use crate::refusal::evaluate::Judged;
use crate::refusal::find::{FindSettings, find_direction};
use crate::refusal::intervals::{Difference, percent};
use crate::refusal::model_judge::ModelJudge;
use crate::refusal::plots::layer_curves;
use crate::refusal::seeds::CompareSeeds;

/// One comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CompareRequest {
    /// Compressed models: recipes (`rtn:4:128`, `wanda:0.5`) compressed in turn, or models
    /// the host opens.
    pub compressed: Vec<String>,
    #[serde(flatten)]
    pub study: StudyRequest,
    /// Score only these post-instruction positions in selection (all of them when absent).
    /// Cosines are reported for every position either way.
    pub positions: Option<Vec<isize>>,
    /// Also score candidates past the layer limit (slower; they fill the heatmaps).
    pub score_deep_layers: bool,
    #[serde(flatten)]
    pub filters: SelectionFilters,
    /// When no candidate passes METHOD §6: the lowest bypass score among candidates with KL
    /// at most this (and below the layer limit).
    pub fallback_kl_max: f64,
    /// Activation-addition coefficient for sufficiency and transfer.
    pub coeff: f32,
    /// Also repair every compressed model with AIRD and evaluate the repair.
    pub aird: bool,
    #[serde(flatten)]
    pub alpha: AlphaRequest,
}

impl Default for CompareRequest {
    fn default() -> CompareRequest {
        CompareRequest {
            compressed: Vec::new(),
            study: StudyRequest::default(),
            positions: None,
            score_deep_layers: false,
            filters: SelectionFilters::default(),
            fallback_kl_max: defaults::FALLBACK_KL_MAX,
            coeff: defaults::ACTADD_COEFF,
            aird: false,
            alpha: AlphaRequest::default(),
        }
    }
}

impl CompareRequest {
    /// # Errors
    ///
    /// [`RunError::Invalid`] naming the first field out of bounds.
    pub fn validate(&self) -> Result<(), RunError> {
        if self.compressed.is_empty() {
            return Err(RunError::invalid(
                "compressed",
                "give at least one compressed model or recipe",
            ));
        }
        self.study.validate()?;
        super::directions::check_positions(self.positions.as_deref())?;
        self.filters.validate()?;
        if self.fallback_kl_max.is_nan() {
            return Err(RunError::invalid("fallback-kl-max", "is not a number"));
        }
        if !self.coeff.is_finite() {
            return Err(RunError::invalid("coeff", "must be a finite number"));
        }
        self.alpha.validate()
    }
}

/// Runs METHOD §9 on `base` (described in the report by `model`) and every compressed model
/// of the request, under each of its seeds.
///
/// # Errors
///
/// [`RunError::Invalid`] for a request out of bounds, inputs the host cannot read or open,
/// cancellation and the pipeline's errors.
pub async fn run<M: Clone>(
    request: &CompareRequest,
    base: &Llama,
    text: &TextAssets,
    model: M,
    io: &mut dyn RunIo,
) -> Result<CompareReport<M>, RunError> {
    request.validate()?;
    for spec in &request.compressed {
        check_spec(spec, io)?;
    }
    // Opened once: every seed's study is judged by the same model.
    let judge_model = request.study.judge.open_judge(io)?;
    let model_judge = judge_model.as_ref().map(JudgeModel::judge).transpose()?;
    let seeds = request.study.seeds();
    let mut reports = Vec::with_capacity(seeds.len());
    for &seed in &seeds {
        if seeds.len() > 1 {
            io.note(&format!("seed {seed}"));
        }
        let one = CompareRequest {
            study: request.study.with_seed(seed),
            ..request.clone()
        };
        reports.push(run_seed(&one, base, text, model.clone(), model_judge.as_ref(), io).await?);
    }
    let spread = (seeds.len() > 1).then(|| CompareSeeds::of(&seeds, &reports));
    let mut report = reports.swap_remove(0);
    report.seeds = spread;
    Ok(report)
}

/// [`run`] under the request's one seed, judged with `model_judge` when the request's judge
/// is a model.
async fn run_seed<M>(
    request: &CompareRequest,
    base: &Llama,
    text: &TextAssets,
    model: M,
    model_judge: Option<&ModelJudge<'_>>,
    io: &mut dyn RunIo,
) -> Result<CompareReport<M>, RunError> {
    let study = &request.study;
    let sets = study.prompts(io)?;
    let split = sets.encoded_split(text)?;
    let batch_size = study.judge.batch_size;
    let tokens = study.refusal_tokens(base, text, &split.harmful, io).await?;
    let find = FindSettings {
        selection: request
            .filters
            .settings(batch_size, request.score_deep_layers),
        positions: request.positions.clone(),
        fallback_kl_max: request.fallback_kl_max,
    };
    let judging = study.judge.judging(&tokens, model_judge)?;
    let judge = sets.judge(text, judging, study.judge.settings())?;
    let validation = sets.validation_judge(text, judging, study.judge.settings())?;

    io.note("the base model: finding its refusal direction");
    let base_found = find_direction(base, &split, &tokens, &find, &mut |p| io.progress(p)).await?;
    let baseline = judge.baseline(base, &mut |p| io.progress(p)).await?;
    io.note(&format!(
        "base: layer {} position {} ({:?}); ASR {}, harmless refusal {}",
        base_found.chosen.layer,
        base_found.chosen.position,
        base_found.chosen_by,
        percent(baseline.asr.rate, baseline.asr.interval),
        percent(
            baseline.harmless_refusal.rate,
            baseline.harmless_refusal.interval
        ),
    ));
    io.note("the base model: its directions from two halves of the training prompts");
    let noise_floor = NoiseFloor::of(base, &split, &base_found, batch_size, &mut |p| {
        io.progress(p)
    })
    .await?;
    let comparison = Comparison {
        base,
        base_found: &base_found,
        base_baseline: &baseline,
        split: &split,
        judge: &judge,
        validation: &validation,
        find: &find,
        coeff: request.coeff,
        repair: request.aird.then(|| RepairSettings {
            alpha: request.alpha.alpha,
            lambda: request.alpha.lambda,
            alpha_grid: request.alpha.grid(),
        }),
    };
    let mut compressed = Vec::with_capacity(request.compressed.len());
    for spec in &request.compressed {
        let c =
            compressed_model(spec, base, text, &study.calibration, batch_size, true, io).await?;
        io.note(&format!(
            "{spec}: finding its refusal direction and measuring it"
        ));
        let measured = comparison
            .measure(spec, &c.llama, c.compression, &mut |p| io.progress(p))
            .await?;
        io.note(&row(
            &measured,
            noise_floor.as_ref().map(|f| f.at_base_selected),
        ));
        compressed.push(measured);
    }
    Ok(CompareReport {
        base: BaseReport {
            model,
            direction: Chosen::of(&base_found),
            baseline,
            noise_floor,
        },
        prompts: sets.uses,
        positions: base_found.candidates.positions.clone(),
        n_layers: base_found.candidates.n_layers,
        refusal_tokens: tokens,
        coeff: request.coeff,
        max_new_tokens: study.judge.max_new_tokens,
        compressed,
        seeds: None,
    })
}

/// The figures of a comparison, by file name: the cosine to the base direction by layer at
/// the base's selected position (with the base's split-half cosines, the noise floor), and
/// each compressed model's cosine heatmap.
pub fn figures<M>(report: &CompareReport<M>) -> Vec<(String, String)> {
    let (n_layers, positions) = (report.n_layers, &report.positions);
    let chosen = &report.base.direction;
    let p_index = positions
        .iter()
        .position(|&q| q == chosen.position)
        .unwrap_or(0);
    let by_layer = |cosines: &[f64]| -> Vec<f64> {
        (0..n_layers)
            .map(|l| cosines[l * positions.len() + p_index])
            .collect()
    };
    let mut series: Vec<(String, Vec<f64>)> = report
        .compressed
        .iter()
        .map(|r| (r.spec.clone(), by_layer(&r.cosines)))
        .collect();
    if let Some(floor) = &report.base.noise_floor {
        series.push((NOISE_FLOOR_SERIES.to_owned(), by_layer(&floor.cosines)));
    }
    let mut figures = vec![(
        "cosine-by-layer.svg".to_owned(),
        layer_curves(
            &format!("cos(base, compressed) at position {}", chosen.position),
            "cosine",
            &series,
            Some(chosen.layer),
        ),
    )];
    let base_cell = chosen.layer * positions.len() + p_index;
    for (i, r) in report.compressed.iter().enumerate() {
        figures.push((
            format!("cosine-{}.svg", i + 1),
            cosine_figure(n_layers, positions, &r.cosines, Some(base_cell)),
        ));
    }
    figures
}

/// The base's split-half curve among the compressed models' in the cosine figure.
const NOISE_FLOOR_SERIES: &str = "base split-half";

/// The summary table's column heads, which [`row`] fills.
pub fn row_heads() -> String {
    let mut s = format!(
        "{:<16} {:>6} {:>6} {:>8}",
        "model", "cos@B", "floor", "l:pos"
    );
    for head in [
        "ASR", "ref", "ASR-ab", "ref+add", "ASR-abB", "ref+addB", "AIRD-ASR", "AIRD-ref",
    ] {
        s.push_str(&format!(" {head:>8}"));
    }
    s.push_str(&format!(" {:>7}", "AIRD-KL"));
    s
}

/// One compressed model's lines of the summary table: its rates, then under each its Wilson
/// interval in whole points; `floor` is the base's split-half cosine at its selected cell.
pub fn row(r: &CompressedReport, floor: Option<f64>) -> String {
    let rates: [Option<&Judged>; 8] = [
        Some(&r.baseline.asr),
        Some(&r.baseline.harmless_refusal),
        Some(&r.asr_ablate_own),
        Some(&r.harmless_refusal_add_own),
        Some(&r.asr_ablate_base),
        Some(&r.harmless_refusal_add_base),
        r.aird.as_ref().map(|a| &a.asr),
        r.aird.as_ref().map(|a| &a.harmless_refusal),
    ];
    let mut line = format!(
        "{:<16} {:>6.3} {:>6} {:>4}:{:<3}",
        r.spec,
        r.cosine_at_base_selected,
        floor.map_or("-".into(), |f| format!("{f:.3}")),
        r.direction.layer,
        r.direction.position,
    );
    let mut under = format!("{:<39}", "");
    for j in rates {
        line.push_str(&format!(
            " {:>8}",
            j.map_or("-".into(), |j| format!("{:.1}", 100.0 * j.rate))
        ));
        under.push_str(&format!(
            " {:>8}",
            j.map_or(String::new(), |j| j.interval.whole_points())
        ));
    }
    line.push_str(&format!(
        " {:>7}",
        r.aird
            .as_ref()
            .map_or("-".into(), |a| format!("{:.3}", a.kl_to_compressed))
    ));
    format!("{line}\n{}", under.trim_end())
}

/// One compressed model's paired differences: its rates against the base's, and after AIRD
/// against before.
pub fn differences_row(r: &CompressedReport) -> String {
    let cell = |d: Option<Difference>| d.map_or("-".into(), |d| d.points());
    let (aird_asr, aird_refusal) = r.aird.as_ref().map_or((None, None), |a| {
        (a.vs_compressed.asr, a.vs_compressed.harmless_refusal)
    });
    format!(
        "{:<16} {:>22} {:>22} {:>22} {:>22}",
        r.spec,
        cell(r.vs_base.asr),
        cell(r.vs_base.harmless_refusal),
        cell(aird_asr),
        cell(aird_refusal),
    )
}

/// The column heads of [`differences_row`].
pub fn difference_heads() -> String {
    format!(
        "{:<16} {:>22} {:>22} {:>22} {:>22}",
        "model", "ASR vs base", "ref vs base", "AIRD: ASR vs C", "AIRD: ref vs C"
    )
}

/// The headline numbers over the seeds, as mean ± sd [min, max].
pub fn seeds_table(seeds: &CompareSeeds) -> String {
    let list: Vec<String> = seeds.seeds.iter().map(u64::to_string).collect();
    let mut s = format!(
        "\nover seeds {} (mean ± sd [min, max]): base ASR {}%, harmless refusal {}%, noise floor {}\n",
        list.join(","),
        seeds.base_asr.describe(100.0, 1),
        seeds.base_harmless_refusal.describe(100.0, 1),
        seeds.noise_floor.describe(1.0, 3),
    );
    for c in &seeds.compressed {
        s.push_str(&format!(
            "{:<16} cos@B {}  ASR {}  ref {}  ASR-abB {}  ref+addB {}",
            c.spec,
            c.cosine_at_base_selected.describe(1.0, 3),
            c.asr.describe(100.0, 1),
            c.harmless_refusal.describe(100.0, 1),
            c.asr_ablate_base.describe(100.0, 1),
            c.harmless_refusal_add_base.describe(100.0, 1),
        ));
        if let Some(a) = &c.aird_asr {
            s.push_str(&format!("  AIRD-ASR {}", a.describe(100.0, 1)));
        }
        s.push('\n');
    }
    s
}
