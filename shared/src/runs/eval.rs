//! `eval` (METHOD §7): greedy completions of a prompt set under an intervention, judged by
//! substring, with refusal rate / ASR, refusal score, KL to the unmodified model and, given a
//! text, cross-entropy; several activation-addition coefficients give a dose-response table.

use serde::{Deserialize, Serialize};
use web_time::Instant;

use super::study::{JudgeModel, JudgeRequest};
use super::{PromptSource, RunError, RunIo};
use crate::load::TextAssets;
use crate::model::Llama;
use crate::refusal::evaluate::{CrossEntropy, EvalReport, cross_entropy, evaluate};
use crate::refusal::intervention::InterventionKind;
use crate::refusal::prompts::without;
use crate::refusal::{EncodedPrompts, Intervention, RefusalTokens};

/// One eval run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct EvalRequest {
    /// The prompts evaluated (required): `builtin:harmful`, `builtin:harmless`, a set the
    /// host reads, or the instructions themselves.
    pub prompts: Option<PromptSource>,
    /// Leave out these instructions (e.g. AdvBench minus the training split).
    pub exclude: Option<PromptSource>,
    /// Evaluate only the first N prompts (after `exclude`).
    pub limit: Option<usize>,
    pub intervention: InterventionKind,
    /// The direction of `ablate` and `actadd`, a name the host reads before the run.
    pub direction: Option<String>,
    /// Layer of the activation addition (default: the direction's layer).
    pub layer: Option<usize>,
    /// Activation-addition coefficients; several give a dose-response table.
    pub coeff: Vec<f32>,
    #[serde(flatten)]
    pub judge: JudgeRequest,
    /// Also measure cross-entropy on this text (a name the host reads).
    pub cross_entropy: Option<String>,
    /// Tokens per cross-entropy window.
    pub window: usize,
}

impl EvalRequest {
    pub const WINDOW: usize = 256;

    /// # Errors
    ///
    /// [`RunError::Invalid`] naming the first field that is missing or out of bounds.
    pub fn validate(&self) -> Result<(), RunError> {
        if self.prompts.is_none() {
            return Err(RunError::invalid("prompts", "required"));
        }
        if self.limit == Some(0) {
            return Err(RunError::invalid("limit", "must be at least 1"));
        }
        if self.intervention != InterventionKind::None && self.direction.is_none() {
            return Err(RunError::invalid(
                "direction",
                format!(
                    "intervention {} needs a direction",
                    self.intervention.name()
                ),
            ));
        }
        if self.intervention == InterventionKind::Actadd && self.coeff.is_empty() {
            return Err(RunError::invalid("coeff", "give at least one coefficient"));
        }
        if self.window < 2 {
            return Err(RunError::invalid("window", "must be at least 2 tokens"));
        }
        self.judge.validate()
    }
}

impl Default for EvalRequest {
    fn default() -> EvalRequest {
        EvalRequest {
            prompts: None,
            exclude: None,
            limit: None,
            intervention: InterventionKind::None,
            direction: None,
            layer: None,
            coeff: vec![1.0],
            judge: JudgeRequest::default(),
            cross_entropy: None,
            window: EvalRequest::WINDOW,
        }
    }
}

/// The direction an eval ablates or adds, read by the host.
#[derive(Debug, Clone)]
pub struct EvalDirection {
    pub vector: Vec<f32>,
    pub layer: usize,
    /// The refusal tokens it was extracted with, when they apply to this model (the same
    /// architecture) and the request names none.
    pub refusal_tokens: Option<RefusalTokens>,
}

/// One intervention's judged completions.
#[derive(Debug, Clone, Serialize)]
pub struct InterventionRun {
    pub intervention: InterventionKind,
    pub layer: Option<usize>,
    pub coeff: Option<f32>,
    pub seconds: f64,
    pub cross_entropy: Option<CrossEntropy>,
    #[serde(flatten)]
    pub report: EvalReport,
}

/// What an eval found.
#[derive(Debug, Clone)]
pub struct EvalRun {
    /// Where the prompts came from, and the excluded ones.
    pub prompts: String,
    pub excluded: Option<String>,
    pub n_prompts: usize,
    pub refusal_tokens: RefusalTokens,
    pub runs: Vec<InterventionRun>,
}

/// Evaluates `model` under each intervention the request asks for.
///
/// # Errors
///
/// [`RunError::Invalid`] for a request out of bounds, a direction of another width,
/// unreadable prompt sets or texts, no prompts left, cancellation and the pipeline's errors.
pub async fn run(
    request: &EvalRequest,
    model: &Llama,
    text: &TextAssets,
    direction: Option<&EvalDirection>,
    io: &mut dyn RunIo,
) -> Result<EvalRun, RunError> {
    request.validate()?;
    let d_model = model.config().d_model;
    if let Some(d) = direction
        && d.vector.len() != d_model
    {
        return Err(RunError::Input(format!(
            "the direction has {} dimensions but this model has width {d_model}",
            d.vector.len()
        )));
    }
    let Some(source) = &request.prompts else {
        unreachable!("validated: prompts are required")
    };
    let (mut prompts, name) = source.read(io)?;
    let excluded = match &request.exclude {
        Some(set) => {
            let (exclude, excluded) = set.read(io)?;
            let before = prompts.len();
            prompts = without(prompts, &exclude);
            io.note(&format!(
                "{} of {before} prompts remain after excluding {excluded}",
                prompts.len()
            ));
            Some(excluded)
        }
        None => None,
    };
    if let Some(n) = request.limit {
        prompts.truncate(n);
    }
    if prompts.is_empty() {
        return Err(RunError::Input("no prompts left to evaluate".into()));
    }
    let ce_text = request
        .cross_entropy
        .as_ref()
        .map(|name| io.read_text(name))
        .transpose()?;

    let given = (request.judge.refusal_tokens.is_empty())
        .then(|| direction.and_then(|d| d.refusal_tokens.clone()))
        .flatten();
    let refusal_tokens = match given {
        Some(tokens) => {
            io.note(&format!(
                "refusal tokens: {} (the direction's)",
                tokens.describe()
            ));
            tokens
        }
        None => {
            let encoded = EncodedPrompts::new(text, &prompts, None)?;
            super::directions::refusal_tokens(
                model,
                text,
                &request.judge.refusal_tokens,
                &encoded,
                request.judge.batch_size,
                io,
            )
            .await?
        }
    };

    let judge_model = request.judge.open_judge(io)?;
    let model_judge = judge_model.as_ref().map(JudgeModel::judge).transpose()?;
    let judging = request
        .judge
        .judging(&refusal_tokens, model_judge.as_ref())?;
    let interventions = interventions(request, direction);
    let settings = request.judge.settings();
    let mut runs = Vec::with_capacity(interventions.len());
    for (intervention, layer, coeff) in interventions {
        let started = Instant::now();
        let report = evaluate(
            model,
            text,
            &prompts,
            &intervention,
            judging,
            settings,
            &mut |p| io.progress(p),
        )
        .await?;
        let cross_entropy = match &ce_text {
            Some(t) => Some(
                cross_entropy(
                    model,
                    &text.tokenizer,
                    t,
                    &intervention,
                    request.window,
                    &mut |p| io.progress(p),
                )
                .await?,
            ),
            None => None,
        };
        runs.push(InterventionRun {
            intervention: intervention.kind(),
            layer,
            coeff,
            seconds: started.elapsed().as_secs_f64(),
            cross_entropy,
            report,
        });
    }
    Ok(EvalRun {
        prompts: name,
        excluded,
        n_prompts: prompts.len(),
        refusal_tokens,
        runs,
    })
}

/// The interventions asked for, each with the layer and coefficient a report shows.
fn interventions(
    request: &EvalRequest,
    direction: Option<&EvalDirection>,
) -> Vec<(Intervention, Option<usize>, Option<f32>)> {
    match (request.intervention, direction) {
        (InterventionKind::Ablate, Some(d)) => vec![(
            Intervention::Ablate {
                direction: d.vector.clone(),
            },
            None,
            None,
        )],
        (InterventionKind::Actadd, Some(d)) => {
            let layer = request.layer.unwrap_or(d.layer);
            request
                .coeff
                .iter()
                .map(|&coeff| {
                    let vector = d.vector.clone();
                    let add = Intervention::ActAdd {
                        layer,
                        vector,
                        coeff,
                    };
                    (add, Some(layer), Some(coeff))
                })
                .collect()
        }
        _ => vec![(Intervention::None, None, None)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::request_from_json;

    #[test]
    fn an_eval_request_needs_prompts_and_a_direction_for_its_intervention() {
        let defaults = EvalRequest::default();
        let r: EvalRequest = request_from_json(
            &defaults,
            r#"{"prompts": "builtin:harmful", "coeff": [0.5, 1], "limit": 4}"#,
        )
        .unwrap();
        r.validate().unwrap();
        assert_eq!(r.coeff, vec![0.5, 1.0]);
        assert_eq!(r.window, EvalRequest::WINDOW);
        let err = defaults.validate().unwrap_err();
        assert!(err.to_string().starts_with("`prompts`"), "{err}");
        let ablate: EvalRequest =
            request_from_json(&defaults, r#"{"prompts": ["a"], "intervention": "ablate"}"#)
                .unwrap();
        let err = ablate.validate().unwrap_err();
        assert!(err.to_string().contains("needs a direction"), "{err}");
    }
}
