//! `refusal-lens directions`: candidate directions for every layer and post-instruction
//! position, the selection table of METHOD §6, the selected direction and figures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use futures_lite::future::block_on;
use refusal_core::export::f32_safetensors;
use refusal_core::model::HostTensor;
use refusal_core::refusal::plots::selection_figures;
pub use refusal_core::refusal::prompts::PromptUse;
use refusal_core::refusal::select::CandidateScore;
use refusal_core::refusal::{CandidateDirections, RefusalTokens, Selection, SelectionSettings};
use refusal_core::runs::directions::{self, DirectionsRequest, SelectionFilters, Timings};
use refusal_core::runs::{Choice, PromptSource, RunIo, SplitRequest};

use super::{Written, in_terminal};
use crate::direction_file::{ChosenBy, DirectionFile, DirectionMeta, read_f32_tensor};
use crate::model::open::Fingerprint;
use crate::model_args::ModelArgs;
use crate::outputs::StagedDir;
use crate::progress::RunControl;

/// Training and validation prompts for the directions and their selection.
#[derive(Debug, Clone, clap::Args)]
pub struct SplitArgs {
    /// Harmful prompts (.json instruction list, AdvBench .csv, or one per line); the built-in
    /// set when absent.
    #[arg(long)]
    pub harmful: Option<PathBuf>,
    /// Harmless prompts; the built-in set when absent.
    #[arg(long)]
    pub harmless: Option<PathBuf>,
    /// Harmful validation prompts; by default held out from --harmful.
    #[arg(long)]
    pub harmful_val: Option<PathBuf>,
    /// Harmless validation prompts; by default held out from --harmless.
    #[arg(long)]
    pub harmless_val: Option<PathBuf>,
    #[arg(long, default_value_t = SplitRequest::N_TRAIN)]
    pub n_train: usize,
    #[arg(long, default_value_t = SplitRequest::N_VAL)]
    pub n_val: usize,
    /// Seed of the prompt sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SplitArgs {
    pub fn request(&self) -> SplitRequest {
        let file = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| PromptSource::Named(p.display().to_string()))
        };
        SplitRequest {
            harmful: file(&self.harmful),
            harmless: file(&self.harmless),
            harmful_val: file(&self.harmful_val),
            harmless_val: file(&self.harmless_val),
            n_train: self.n_train,
            n_val: self.n_val,
            seed: self.seed,
        }
    }
}

/// METHOD §6's filters.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectionArgs {
    /// Drop candidates whose ablation moves harmless predictions more than this KL.
    #[arg(long, default_value_t = SelectionSettings::DEFAULT.kl_max)]
    pub kl_max: f64,
    /// Drop candidates at layers >= floor(this * n_layers).
    #[arg(long, default_value_t = SelectionSettings::DEFAULT.max_layer_fraction)]
    pub max_layer_fraction: f64,
    /// Drop candidates whose addition leaves the harmless refusal score below this.
    #[arg(long, default_value_t = SelectionSettings::DEFAULT.induce_min)]
    pub induce_min: f64,
}

impl SelectionArgs {
    pub fn filters(&self) -> SelectionFilters {
        SelectionFilters {
            kl_max: self.kl_max,
            max_layer_fraction: self.max_layer_fraction,
            induce_min: self.induce_min,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DirectionsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub splits: SplitArgs,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = DirectionsRequest::BATCH_SIZE)]
    pub batch_size: usize,
    /// Refusal tokens, comma-separated (default: the model family's, else derived from data).
    #[arg(long, value_delimiter = ',')]
    pub refusal_tokens: Vec<String>,
    #[command(flatten)]
    pub filters: SelectionArgs,
    /// Choose the direction yourself, as LAYER:POSITION (e.g. 12:-1), instead of METHOD §6.
    #[arg(long)]
    pub select: Option<Choice>,
    /// Score only these post-instruction positions, comma-separated and counted from the end
    /// (-1 is the last token): fewer candidates, a proportionally shorter run (default: all).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub positions: Option<Vec<isize>>,
    /// When no candidate passes METHOD §6: take the lowest bypass score among candidates with
    /// KL at most this (and below the layer limit) instead of failing, as `compare` does.
    #[arg(long)]
    pub fallback_kl_max: Option<f64>,
}

impl DirectionsArgs {
    pub fn request(&self) -> DirectionsRequest {
        DirectionsRequest {
            split: self.splits.request(),
            batch_size: self.batch_size,
            refusal_tokens: self.refusal_tokens.clone(),
            filters: self.filters.filters(),
            select: self.select,
            positions: self.positions.clone(),
            fallback_kl_max: self.fallback_kl_max,
        }
    }
}

/// `directions.safetensors`: every candidate and both means, `[layer, position, d_model]`.
fn candidates_file(c: &CandidateDirections, model: &Fingerprint) -> Result<Vec<u8>> {
    let shape = vec![c.n_layers, c.positions.len(), c.d_model];
    let tensor = |name: &str, data: Vec<f32>| {
        (
            name.to_owned(),
            HostTensor {
                shape: shape.clone(),
                data,
            },
        )
    };
    let narrow = |v: &[f64]| v.iter().map(|&x| x as f32).collect();
    let tensors = vec![
        tensor("directions", c.all_directions()),
        tensor("harmful_mean", narrow(&c.harmful_mean)),
        tensor("harmless_mean", narrow(&c.harmless_mean)),
    ];
    let metadata = BTreeMap::from([
        ("positions".to_owned(), serde_json::to_string(&c.positions)?),
        ("n_harmful".to_owned(), c.n_harmful.to_string()),
        ("n_harmless".to_owned(), c.n_harmless.to_string()),
        ("model_sha256".to_owned(), model.sha256.clone()),
    ]);
    Ok(f32_safetensors(tensors, metadata)?)
}

pub fn run(args: &DirectionsArgs, control: &RunControl) -> Result<()> {
    in_terminal(control, &args.model, |io| {
        write(&args.request(), &args.model, &args.out, io)
    })
}

/// Runs `request` on the model `models` names and writes the candidates, the selection
/// table, the chosen direction and the figures into `out`.
///
/// # Errors
///
/// The request's, the model's and the run's errors; a run where no candidate passes is
/// written, then fails.
pub fn write(
    request: &DirectionsRequest,
    models: &ModelArgs,
    out: &Path,
    io: &mut dyn RunIo,
) -> Result<Written> {
    let (loaded, fingerprint) = models.load_with_fingerprint()?;
    let found = block_on(directions::run(request, &loaded.llama, &loaded.text, io))
        .context("finding the refusal direction")?;

    let mut staged = StagedDir::new(out)?;
    staged.write(
        "directions.safetensors",
        candidates_file(&found.candidates, &fingerprint)?,
    )?;
    let report = found.report(&fingerprint);
    staged.write("selection.json", serde_json::to_string_pretty(&report)?)?;
    if let Some((meta, vector)) = found.direction(fingerprint.clone()) {
        let (st, json) = DirectionFile { vector, meta }.to_bytes()?;
        staged.write("direction.safetensors", st)?;
        staged.write("direction.json", json)?;
    }
    for (name, svg) in selection_figures(&found.selection) {
        staged.write(name, svg)?;
    }
    let written = staged.commit()?;

    let text = format!(
        "{}\nwrote {} files to {}",
        summary(
            &found.selection,
            report.chosen.as_ref(),
            &found.refusal_tokens,
            report.seconds
        ),
        written.len(),
        out.display()
    );
    Ok(if report.chosen.is_none() {
        Written::failed(
            text,
            "no candidate passed the filters (see selection.json); choose one with --select \
             LAYER:POSITION"
                .into(),
        )
    } else {
        Written::done(text)
    })
}

fn summary(
    selection: &Selection,
    chosen: Option<&CandidateScore>,
    tokens: &RefusalTokens,
    seconds: Timings,
) -> String {
    let mut s = format!(
        "refusal tokens {:?}; baseline refusal score: harmful {:.3}, harmless {:.3}\n\
         extraction {:.1} s, selection {:.1} s ({} candidates)\n",
        tokens.tokens,
        selection.baseline_harmful_score,
        selection.baseline_harmless_score,
        seconds.extract,
        seconds.select,
        selection.candidates.len()
    );
    let mut eligible: Vec<&CandidateScore> = selection
        .candidates
        .iter()
        .filter(|c| c.dropped.is_empty())
        .collect();
    eligible.sort_by(|a, b| a.bypass.total_cmp(&b.bypass));
    s.push_str(&format!(
        "{} eligible; best by bypass score:\n  layer  pos   bypass   induce       kl   |r|\n",
        eligible.len()
    ));
    for c in eligible.iter().take(5) {
        s.push_str(&format!(
            "  {:>5} {:>4} {:>8.3} {:>8.3} {:>8.4} {:>5.2}\n",
            c.layer, c.position, c.bypass, c.induce, c.kl, c.norm
        ));
    }
    match chosen {
        Some(c) => s.push_str(&format!(
            "chosen: layer {} position {} (bypass {:.3}, induce {:.3}, KL {:.4})",
            c.layer, c.position, c.bypass, c.induce, c.kl
        )),
        None => s.push_str("chosen: none"),
    }
    s
}

/// `refusal-lens choose`: picks a direction from a finished `directions` run (its
/// `directions.safetensors` and `selection.json`) without recomputing anything, e.g. when no
/// candidate passed the filters or another layer is wanted.
#[derive(Debug, Clone, clap::Args)]
pub struct ChooseArgs {
    /// The output directory of `directions`; direction.safetensors/json are written there.
    #[arg(long)]
    pub run: PathBuf,
    /// The candidate, as LAYER:POSITION (e.g. 16:-1).
    #[arg(long)]
    pub select: Choice,
}

#[derive(serde::Deserialize)]
struct SavedRun {
    model: Fingerprint,
    refusal_tokens: RefusalTokens,
    selection: Selection,
}

pub fn choose(args: &ChooseArgs) -> Result<()> {
    let json_path = args.run.join("selection.json");
    let saved: SavedRun = serde_json::from_slice(
        &std::fs::read(&json_path).with_context(|| format!("reading {}", json_path.display()))?,
    )
    .with_context(|| format!("parsing {}", json_path.display()))?;
    let Choice { layer, position } = args.select;
    let positions = &saved.selection.positions;
    let p = positions
        .iter()
        .position(|&x| x == position)
        .with_context(|| format!("position {position} is not one of {positions:?}"))?;
    let n_layers = saved.selection.n_layers;
    if layer >= n_layers {
        bail!("layer {layer}: the model has {n_layers} layers");
    }
    let st_path = args.run.join("directions.safetensors");
    let all = read_f32_tensor(&st_path, "directions")?;
    let d = saved.model.d_model;
    if all.shape != [n_layers, positions.len(), d] {
        bail!(
            "{}: `directions` is {:?}, not [{n_layers}, {}, {d}]",
            st_path.display(),
            all.shape,
            positions.len()
        );
    }
    let start = (layer * positions.len() + p) * d;
    let vector = all.data[start..start + d].to_vec();
    let score = saved
        .selection
        .candidates
        .iter()
        .find(|c| c.layer == layer && c.position == position)
        .cloned()
        .with_context(|| {
            format!(
                "{} has no candidate {layer}:{position}",
                json_path.display()
            )
        })?;
    let file = DirectionFile {
        vector,
        meta: DirectionMeta {
            layer,
            position,
            norm: score.norm,
            model: saved.model,
            refusal_tokens: saved.refusal_tokens,
            scores: score.clone(),
            chosen_by: ChosenBy::User,
        },
    };
    let (st, json) = file.to_bytes()?;
    let mut staged = StagedDir::new(&args.run)?;
    staged.write("direction.safetensors", st)?;
    staged.write("direction.json", json)?;
    staged.commit()?;
    println!(
        "chose layer {layer} position {position}: bypass {:.3}, induce {:.3}, KL {:.4}, |r| {:.2}{}",
        score.bypass,
        score.induce,
        score.kl,
        score.norm,
        if score.dropped.is_empty() {
            String::new()
        } else {
            format!(" (the filters dropped it: {:?})", score.dropped)
        }
    );
    Ok(())
}
