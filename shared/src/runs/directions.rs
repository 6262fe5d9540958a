//! `directions` (METHOD §3-6): the refusal tokens, candidate directions at every layer and
//! post-instruction position, their scores on the validation prompts (METHOD §6's table) and
//! the chosen one.

use serde::{Deserialize, Serialize};
use web_time::Instant;

use super::{Choice, RunError, RunIo, SplitRequest};
use crate::load::TextAssets;
use crate::model::Llama;
use crate::refusal::directions::extract;
use crate::refusal::find::choose_or_fall_back;
use crate::refusal::prompts::PromptUse;
use crate::refusal::refusal_tokens::TokenOrigin;
use crate::refusal::select::{CandidateScore, ChosenBy, select};
use crate::refusal::{
    CandidateDirections, EncodedPrompts, Prompt, RefusalTokens, Selection, SelectionSettings,
};

/// One directions run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct DirectionsRequest {
    #[serde(flatten)]
    pub split: SplitRequest,
    /// Prompts per forward pass.
    pub batch_size: usize,
    /// Refusal tokens (default: the model family's, else derived from greedy completions of
    /// the harmful training prompts).
    pub refusal_tokens: Vec<String>,
    #[serde(flatten)]
    pub filters: SelectionFilters,
    /// The candidate chosen by the user instead of METHOD §6.
    pub select: Option<Choice>,
    /// Score only these post-instruction positions (all of them when absent): fewer
    /// candidates, a proportionally shorter run.
    pub positions: Option<Vec<isize>>,
    /// When no candidate passes METHOD §6 and none is chosen with `select`: the lowest bypass
    /// score among candidates below the layer limit with KL at most this, as the comparison
    /// falls back (no direction when absent: the run reports the table and fails).
    pub fallback_kl_max: Option<f64>,
}

impl DirectionsRequest {
    pub const BATCH_SIZE: usize = 32;

    /// Checks every field against its bounds.
    ///
    /// # Errors
    ///
    /// [`RunError::Invalid`] naming the first field out of bounds.
    pub fn validate(&self) -> Result<(), RunError> {
        self.split.validate()?;
        if self.batch_size == 0 {
            return Err(RunError::invalid("batch-size", "must be at least 1"));
        }
        self.filters.validate()?;
        if self.fallback_kl_max.is_some_and(f64::is_nan) {
            return Err(RunError::invalid("fallback-kl-max", "is not a number"));
        }
        check_positions(self.positions.as_deref())
    }
}

/// # Errors
///
/// [`RunError::Invalid`] for positions asked for that are none, or not counted from the end.
pub(crate) fn check_positions(positions: Option<&[isize]>) -> Result<(), RunError> {
    match positions {
        Some(positions) if positions.is_empty() || positions.iter().any(|&p| p >= 0) => {
            Err(RunError::invalid(
                "positions",
                format!(
                    "{positions:?}: give one or more negative positions (-1 is the last token)"
                ),
            ))
        }
        _ => Ok(()),
    }
}

impl Default for DirectionsRequest {
    fn default() -> DirectionsRequest {
        DirectionsRequest {
            split: SplitRequest::default(),
            batch_size: DirectionsRequest::BATCH_SIZE,
            refusal_tokens: Vec::new(),
            filters: SelectionFilters::default(),
            select: None,
            positions: None,
            fallback_kl_max: None,
        }
    }
}

/// METHOD §6's filters in a request.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct SelectionFilters {
    /// Drop candidates whose ablation moves harmless predictions more than this KL.
    pub kl_max: f64,
    /// Drop candidates at layers >= floor(this * n_layers).
    pub max_layer_fraction: f64,
    /// Drop candidates whose addition leaves the harmless refusal score below this.
    pub induce_min: f64,
}

impl Default for SelectionFilters {
    fn default() -> SelectionFilters {
        let d = SelectionSettings::DEFAULT;
        SelectionFilters {
            kl_max: d.kl_max,
            max_layer_fraction: d.max_layer_fraction,
            induce_min: d.induce_min,
        }
    }
}

impl SelectionFilters {
    pub fn settings(&self, batch_size: usize, score_deep_layers: bool) -> SelectionSettings {
        SelectionSettings {
            kl_max: self.kl_max,
            max_layer_fraction: self.max_layer_fraction,
            induce_min: self.induce_min,
            batch_size,
            score_deep_layers,
        }
    }

    /// # Errors
    ///
    /// [`RunError::Invalid`] for a bound that is not a number (NaN would drop every
    /// candidate without saying why). Bounds that drop every candidate are allowed: the table
    /// is still reported.
    pub fn validate(&self) -> Result<(), RunError> {
        for (field, value) in [
            ("kl-max", self.kl_max),
            ("max-layer-fraction", self.max_layer_fraction),
            ("induce-min", self.induce_min),
        ] {
            if value.is_nan() {
                return Err(RunError::invalid(field, "is not a number"));
            }
        }
        Ok(())
    }
}

/// What `direction.json` records of a chosen direction (the vector is stored beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectionMeta<M> {
    pub layer: usize,
    /// Post-instruction position, counted from the end (-1 is the last token).
    pub position: isize,
    /// `|r|`: activation addition uses the raw vector, ablation its unit direction.
    pub norm: f64,
    pub model: M,
    pub refusal_tokens: RefusalTokens,
    /// The candidate's validation scores.
    pub scores: CandidateScore,
    /// Whether METHOD §6 chose it or the user did.
    pub chosen_by: ChosenBy,
}

/// `selection.json`: the selection table and the choice, for the model described by `M`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectionReport<M> {
    pub model: M,
    pub seed: u64,
    pub harmful: PromptUse,
    pub harmless: PromptUse,
    pub post_instruction_positions: Vec<isize>,
    pub refusal_tokens: RefusalTokens,
    pub selection: Selection,
    pub chosen: Option<CandidateScore>,
    pub chosen_by: Option<ChosenBy>,
    pub seconds: Timings,
}

/// Seconds each stage took.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Timings {
    pub refusal_tokens: f64,
    pub extract: f64,
    pub select: f64,
}

/// A finished run.
pub struct DirectionsRun {
    pub seed: u64,
    pub harmful: PromptUse,
    pub harmless: PromptUse,
    /// Every layer and position, whichever were scored.
    pub candidates: CandidateDirections,
    pub refusal_tokens: RefusalTokens,
    pub selection: Selection,
    /// The chosen candidate, who chose it, and its vector; `None` when no candidate passed
    /// METHOD §6 and the user chose none.
    pub chosen: Option<(CandidateScore, ChosenBy, Vec<f32>)>,
    pub seconds: Timings,
}

impl DirectionsRun {
    /// `selection.json` for the model described by `model`.
    pub fn report<M>(&self, model: M) -> SelectionReport<M> {
        SelectionReport {
            model,
            seed: self.seed,
            harmful: self.harmful.clone(),
            harmless: self.harmless.clone(),
            post_instruction_positions: self.candidates.positions.clone(),
            refusal_tokens: self.refusal_tokens.clone(),
            selection: self.selection.clone(),
            chosen: self.chosen.as_ref().map(|(score, _, _)| score.clone()),
            chosen_by: self.chosen.as_ref().map(|&(_, by, _)| by),
            seconds: self.seconds,
        }
    }

    /// The chosen direction's `direction.json` and its vector.
    pub fn direction<M>(&self, model: M) -> Option<(DirectionMeta<M>, Vec<f32>)> {
        let (score, by, vector) = self.chosen.as_ref()?;
        Some((
            DirectionMeta {
                layer: score.layer,
                position: score.position,
                norm: score.norm,
                model,
                refusal_tokens: self.refusal_tokens.clone(),
                scores: score.clone(),
                chosen_by: *by,
            },
            vector.clone(),
        ))
    }
}

/// The refusal tokens: the request's, else the model family's, else derived from greedy
/// completions of `harmful` prompts.
///
/// # Errors
///
/// A word that is not one token, and the pipeline's errors.
pub async fn refusal_tokens(
    model: &Llama,
    text: &TextAssets,
    given: &[String],
    harmful: &EncodedPrompts,
    batch_size: usize,
    io: &mut dyn RunIo,
) -> Result<RefusalTokens, RunError> {
    let tokens = if given.is_empty() {
        RefusalTokens::for_model(model, text, harmful, 32, batch_size, &mut |p| {
            io.progress(p)
        })
        .await?
    } else {
        let words: Vec<&str> = given.iter().map(String::as_str).collect();
        RefusalTokens::from_words(text, &words, TokenOrigin::User)?
    };
    io.note(&format!("refusal tokens: {}", tokens.describe()));
    Ok(tokens)
}

/// Runs METHOD §3-6 on `model`.
///
/// # Errors
///
/// [`RunError::Invalid`] for a request out of bounds, unreadable prompt sets, a `select` the
/// table does not have, cancellation and the pipeline's errors.
pub async fn run(
    request: &DirectionsRequest,
    model: &Llama,
    text: &TextAssets,
    io: &mut dyn RunIo,
) -> Result<DirectionsRun, RunError> {
    request.validate()?;
    let splits = request.split.load(io)?;
    let encode = |p: &[Prompt]| EncodedPrompts::new(text, p, None);
    let (harmful, harmless) = (encode(&splits.harmful)?, encode(&splits.harmless)?);
    let (val_harmful, val_harmless) = (encode(&splits.val_harmful)?, encode(&splits.val_harmless)?);
    let bs = request.batch_size;

    let started = Instant::now();
    let tokens = refusal_tokens(model, text, &request.refusal_tokens, &harmful, bs, io).await?;
    let t_tokens = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let candidates = extract(model, &harmful, &harmless, bs, &mut |p| io.progress(p)).await?;
    let t_extract = started.elapsed().as_secs_f64();

    let subset = match &request.positions {
        Some(positions) => Some(candidates.with_positions(positions)?),
        None => None,
    };
    let scored = subset.as_ref().unwrap_or(&candidates);
    let started = Instant::now();
    let selection = select(
        model,
        scored,
        &val_harmful,
        &val_harmless,
        &tokens,
        request.filters.settings(bs, true),
        &mut |p| io.progress(p),
    )
    .await?;
    let t_select = started.elapsed().as_secs_f64();

    let user = request.select.map(|c| (c.layer, c.position));
    let choice = match (selection.choose(user)?, request.fallback_kl_max) {
        (None, Some(kl_max)) => Some(choose_or_fall_back(&selection, kl_max)?),
        (choice, _) => choice,
    };
    let chosen = match choice {
        Some((i, by)) => {
            let score = selection.candidates[i].clone();
            let p = candidates.position_index(score.position)?;
            let vector = candidates.direction(score.layer, p);
            Some((score, by, vector))
        }
        None => None,
    };
    Ok(DirectionsRun {
        seed: request.split.seed,
        harmful: splits.harmful_use,
        harmless: splits.harmless_use,
        candidates,
        refusal_tokens: tokens,
        selection,
        chosen,
        seconds: Timings {
            refusal_tokens: t_tokens,
            extract: t_extract,
            select: t_select,
        },
    })
}
