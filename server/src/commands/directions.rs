//! `refusal-lens directions`: candidate directions for every layer and post-instruction
//! position, the selection table of METHOD §6, the selected direction and figures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use futures_lite::future::block_on;
use refusal_core::export::f32_safetensors;
use refusal_core::model::HostTensor;
use refusal_core::refusal::directions::extract;
use refusal_core::refusal::plots::selection_figures;
pub use refusal_core::refusal::prompts::PromptUse;
use refusal_core::refusal::prompts::{
    Prompt, builtin_harmful, builtin_harmless, hold_out, shuffled,
};
use refusal_core::refusal::select::{CandidateScore, select};
use refusal_core::refusal::{
    CandidateDirections, EncodedPrompts, RefusalTokens, Selection, SelectionSettings,
};
use serde::Serialize;

use super::{describe_tokens, read_prompts, read_prompts_or, refusal_tokens};
use crate::direction_file::{ChosenBy, DirectionFile, DirectionMeta, read_f32_tensor};
use crate::model_args::ModelArgs;
use crate::open::Fingerprint;
use crate::outputs::StagedDir;
use crate::progress::{RunControl, StageBar};

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
    #[arg(long, default_value_t = 128)]
    pub n_train: usize,
    #[arg(long, default_value_t = 32)]
    pub n_val: usize,
    /// Seed of the prompt sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The four prompt sets of a directions run and where they came from.
pub struct Splits {
    pub harmful: Vec<Prompt>,
    pub harmless: Vec<Prompt>,
    pub val_harmful: Vec<Prompt>,
    pub val_harmless: Vec<Prompt>,
    pub harmful_use: PromptUse,
    pub harmless_use: PromptUse,
}

impl SplitArgs {
    /// Reads and splits both sets.
    ///
    /// # Errors
    ///
    /// Unreadable files and sets too small to split.
    pub fn load(&self) -> Result<Splits> {
        let set = |name, file: &Option<PathBuf>, val: &Option<PathBuf>, builtin| {
            split(
                name,
                file.as_ref(),
                val.as_ref(),
                builtin,
                self.n_train,
                self.n_val,
                self.seed,
            )
        };
        let (harmful, val_harmful, harmful_use) =
            set("harmful", &self.harmful, &self.harmful_val, builtin_harmful)?;
        let (harmless, val_harmless, harmless_use) = set(
            "harmless",
            &self.harmless,
            &self.harmless_val,
            builtin_harmless,
        )?;
        Ok(Splits {
            harmful,
            harmless,
            val_harmful,
            val_harmless,
            harmful_use,
            harmless_use,
        })
    }
}

/// METHOD §6's filters.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectionArgs {
    /// Drop candidates whose ablation moves harmless predictions more than this KL.
    #[arg(long, default_value_t = 0.1)]
    pub kl_max: f64,
    /// Drop candidates at layers >= floor(this * n_layers).
    #[arg(long, default_value_t = 0.8)]
    pub max_layer_fraction: f64,
    /// Drop candidates whose addition leaves the harmless refusal score below this.
    #[arg(long, default_value_t = 0.0)]
    pub induce_min: f64,
}

impl SelectionArgs {
    pub fn settings(&self, batch_size: usize, score_deep_layers: bool) -> SelectionSettings {
        SelectionSettings {
            kl_max: self.kl_max,
            max_layer_fraction: self.max_layer_fraction,
            induce_min: self.induce_min,
            batch_size,
            score_deep_layers,
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
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Refusal tokens, comma-separated (default: the model family's, else derived from data).
    #[arg(long, value_delimiter = ',')]
    pub refusal_tokens: Vec<String>,
    #[command(flatten)]
    pub filters: SelectionArgs,
    /// Choose the direction yourself, as LAYER:POSITION (e.g. 12:-1), instead of METHOD §6.
    #[arg(long, value_parser = parse_choice)]
    pub select: Option<(usize, isize)>,
}

fn parse_choice(s: &str) -> Result<(usize, isize), String> {
    let (l, p) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not LAYER:POSITION, e.g. 12:-1"))?;
    let layer = l.trim().parse().map_err(|_| format!("bad layer `{l}`"))?;
    let position: isize = p
        .trim()
        .parse()
        .map_err(|_| format!("bad position `{p}`"))?;
    if position >= 0 {
        return Err(format!(
            "position {position} must be negative (counted from the end)"
        ));
    }
    Ok((layer, position))
}

/// `selection.json`.
#[derive(Debug, Serialize)]
struct SelectionReport<'a> {
    model: &'a Fingerprint,
    seed: u64,
    harmful: PromptUse,
    harmless: PromptUse,
    post_instruction_positions: &'a [isize],
    refusal_tokens: &'a RefusalTokens,
    selection: &'a Selection,
    chosen: Option<&'a CandidateScore>,
    chosen_by: Option<ChosenBy>,
    seconds: Timings,
}

#[derive(Debug, Serialize)]
struct Timings {
    refusal_tokens: f64,
    extract: f64,
    select: f64,
}

/// Train and validation prompts: a separate validation file, or held out from the same file.
fn split(
    name: &str,
    file: Option<&PathBuf>,
    val_file: Option<&PathBuf>,
    builtin: fn() -> Vec<Prompt>,
    n_train: usize,
    n_val: usize,
    seed: u64,
) -> Result<(Vec<Prompt>, Vec<Prompt>, PromptUse)> {
    let source = |f: Option<&PathBuf>| {
        f.map_or_else(
            || format!("built-in {name} set"),
            |p| p.display().to_string(),
        )
    };
    let all = read_prompts_or(file.map(PathBuf::as_path), builtin)?;
    let (train, val) = match val_file {
        Some(p) => {
            let val = shuffled(read_prompts(p)?, seed.wrapping_add(1));
            (
                shuffled(all, seed).into_iter().take(n_train).collect(),
                val.into_iter().take(n_val).collect(),
            )
        }
        None => hold_out(all, n_train, n_val, seed),
    };
    if train.len() < 2 || val.is_empty() {
        bail!(
            "the {name} prompts give {} training and {} validation prompts; at least 2 and 1 are needed",
            train.len(),
            val.len()
        );
    }
    if train.len() < n_train || val.len() < n_val {
        eprintln!(
            "note: {name}: using {} training and {} validation prompts (asked for {n_train} and {n_val})",
            train.len(),
            val.len()
        );
    }
    let used = PromptUse {
        train_source: source(file),
        val_source: source(val_file.or(file)),
        n_train: train.len(),
        n_val: val.len(),
    };
    Ok((train, val, used))
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
    let (loaded, fingerprint) = args.model.load_with_fingerprint()?;
    let Splits {
        harmful: harmful_train,
        harmless: harmless_train,
        val_harmful: harmful_val,
        val_harmless: harmless_val,
        harmful_use,
        harmless_use,
    } = args.splits.load()?;
    let encode = |p: &[Prompt]| EncodedPrompts::new(&loaded.text, p, None);
    let (harmful, harmless) = (encode(&harmful_train)?, encode(&harmless_train)?);
    let (val_harmful, val_harmless) = (encode(&harmful_val)?, encode(&harmless_val)?);

    let mut bar = StageBar::new(true, control.clone());
    let started = Instant::now();
    let tokens = refusal_tokens(
        &loaded,
        &args.refusal_tokens,
        &harmful,
        args.batch_size,
        &mut bar,
    )?;
    let t_tokens = started.elapsed().as_secs_f64();
    bar.finish();
    eprintln!("refusal tokens: {}", describe_tokens(&tokens));

    let started = Instant::now();
    let candidates = block_on(extract(
        &loaded.llama,
        &harmful,
        &harmless,
        args.batch_size,
        &mut |p| bar.update(p),
    ))
    .context("extracting candidate directions")?;
    let t_extract = started.elapsed().as_secs_f64();

    let settings = args.filters.settings(args.batch_size, true);
    let started = Instant::now();
    let selection = block_on(select(
        &loaded.llama,
        &candidates,
        &val_harmful,
        &val_harmless,
        &tokens,
        settings,
        &mut |p| bar.update(p),
    ))
    .context("scoring candidate directions")?;
    let t_select = started.elapsed().as_secs_f64();
    bar.finish();

    let (chosen, chosen_by) = selection.choose(args.select).context("--select")?.unzip();
    let chosen_score = chosen.map(|i| &selection.candidates[i]);

    let mut staged = StagedDir::new(&args.out)?;
    staged.write(
        "directions.safetensors",
        candidates_file(&candidates, &fingerprint)?,
    )?;
    let report = SelectionReport {
        model: &fingerprint,
        seed: args.splits.seed,
        harmful: harmful_use,
        harmless: harmless_use,
        post_instruction_positions: &candidates.positions,
        refusal_tokens: &tokens,
        selection: &selection,
        chosen: chosen_score,
        chosen_by,
        seconds: Timings {
            refusal_tokens: t_tokens,
            extract: t_extract,
            select: t_select,
        },
    };
    staged.write("selection.json", serde_json::to_string_pretty(&report)?)?;
    if let (Some(score), Some(by)) = (chosen_score, chosen_by) {
        let p = candidates.position_index(score.position)?;
        let file = DirectionFile {
            vector: candidates.direction(score.layer, p),
            meta: DirectionMeta {
                layer: score.layer,
                position: score.position,
                norm: score.norm,
                model: fingerprint.clone(),
                refusal_tokens: tokens.clone(),
                scores: score.clone(),
                chosen_by: by,
            },
        };
        let (st, json) = file.to_bytes()?;
        staged.write("direction.safetensors", st)?;
        staged.write("direction.json", json)?;
    }
    for (name, svg) in selection_figures(&selection) {
        staged.write(name, svg)?;
    }
    let written = staged.commit()?;

    println!(
        "{}",
        summary(&selection, chosen_score, &tokens, t_extract, t_select)
    );
    println!("wrote {} files to {}", written.len(), args.out.display());
    if chosen_score.is_none() {
        bail!(
            "no candidate passed the filters (see selection.json); choose one with --select LAYER:POSITION"
        );
    }
    Ok(())
}

fn summary(
    selection: &Selection,
    chosen: Option<&CandidateScore>,
    tokens: &RefusalTokens,
    t_extract: f64,
    t_select: f64,
) -> String {
    let mut s = format!(
        "refusal tokens {:?}; baseline refusal score: harmful {:.3}, harmless {:.3}\n\
         extraction {t_extract:.1} s, selection {t_select:.1} s ({} candidates)\n",
        tokens.tokens,
        selection.baseline_harmful_score,
        selection.baseline_harmless_score,
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
    #[arg(long, value_parser = parse_choice)]
    pub select: (usize, isize),
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
    let (layer, position) = args.select;
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
