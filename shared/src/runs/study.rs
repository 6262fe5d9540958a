//! What the two studies of a compressed model (`compare`, `aird`) ask alike: training,
//! validation and evaluation prompts, calibration, how completions are judged, and AIRD's
//! scale.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::compress::CalibrationRequest;
use super::defaults;
use super::directions::refusal_tokens;
use super::{PromptSource, RunError, RunIo, SplitRequest};
use crate::load::TextAssets;
use crate::model::Llama;
use crate::refusal::evaluate::EvalSettings;
use crate::refusal::judge::{By, JudgeKind, Judging};
use crate::refusal::model_judge::ModelJudge;
use crate::refusal::prompts::{PromptUses, StudyPrompts, without};
use crate::refusal::repair_study::AlphaGrid;
use crate::refusal::{EncodedPrompts, RefusalTokens};

/// The prompt sets and judging of a study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct StudyRequest {
    #[serde(flatten)]
    pub split: SplitRequest,
    /// Harmful prompts for ASR; the harmful validation set when absent.
    pub eval_harmful: Option<PromptSource>,
    /// Instructions left out of `eval-harmful` (e.g. AdvBench minus the training split).
    pub exclude: Option<PromptSource>,
    /// Harmless prompts for refusal under addition; the harmless validation set when absent.
    pub eval_harmless: Option<PromptSource>,
    /// At most this many prompts of each evaluation set.
    pub n_eval: usize,
    /// Seeds of the prompt sampling to run the whole study under, instead of `seed` alone:
    /// the report is the first seed's, with every seed's headline numbers and their spread.
    pub seeds: Vec<u64>,
    #[serde(flatten)]
    pub calibration: CalibrationRequest,
    #[serde(flatten)]
    pub judge: JudgeRequest,
}

impl StudyRequest {
    pub const N_EVAL: usize = 64;

    /// # Errors
    ///
    /// [`RunError::Invalid`] naming the first field out of bounds.
    pub fn validate(&self) -> Result<(), RunError> {
        self.split.validate()?;
        if self.n_eval == 0 {
            return Err(RunError::invalid(
                "n-eval",
                "at least 1 evaluation prompt is needed",
            ));
        }
        self.calibration.validate()?;
        self.judge.validate()
    }

    /// Reads and splits every set.
    ///
    /// # Errors
    ///
    /// Sets the host cannot read, sets too small to split, and an evaluation set left empty.
    pub fn prompts(&self, io: &mut dyn RunIo) -> Result<StudyPrompts, RunError> {
        let splits = self.split.load(io)?;
        let (mut eval_harmful, eval_harmful_source) = match &self.eval_harmful {
            Some(set) => set.read(io)?,
            None => (splits.val_harmful.clone(), "harmful validation set".into()),
        };
        if let Some(set) = &self.exclude {
            eval_harmful = without(eval_harmful, &set.read(io)?.0);
        }
        eval_harmful.truncate(self.n_eval);
        let (mut eval_harmless, eval_harmless_source) = match &self.eval_harmless {
            Some(set) => set.read(io)?,
            None => (
                splits.val_harmless.clone(),
                "harmless validation set".into(),
            ),
        };
        eval_harmless.truncate(self.n_eval);
        if eval_harmful.is_empty() || eval_harmless.is_empty() {
            return Err(RunError::Input(
                "an evaluation set is empty (check eval-harmful, exclude, n-eval)".into(),
            ));
        }
        Ok(StudyPrompts {
            uses: PromptUses {
                eval_harmful: eval_harmful_source,
                eval_harmless: eval_harmless_source,
                n_eval_harmful: eval_harmful.len(),
                n_eval_harmless: eval_harmless.len(),
                harmful: splits.harmful_use,
                harmless: splits.harmless_use,
            },
            harmful: splits.harmful,
            harmless: splits.harmless,
            val_harmful: splits.val_harmful,
            val_harmless: splits.val_harmless,
            eval_harmful,
            eval_harmless,
        })
    }
}

impl StudyRequest {
    /// The seeds the study runs under, in order, each once: `seeds`, else `seed`.
    pub fn seeds(&self) -> Vec<u64> {
        if self.seeds.is_empty() {
            return vec![self.split.seed];
        }
        let mut seeds = Vec::with_capacity(self.seeds.len());
        for &s in &self.seeds {
            if !seeds.contains(&s) {
                seeds.push(s);
            }
        }
        seeds
    }

    /// This study under `seed` alone.
    pub fn with_seed(&self, seed: u64) -> StudyRequest {
        StudyRequest {
            split: SplitRequest {
                seed,
                ..self.split.clone()
            },
            seeds: Vec::new(),
            ..self.clone()
        }
    }

    /// The refusal tokens the study judges by: the request's, else `model`'s (its family's,
    /// or derived from greedy completions of `harmful`).
    ///
    /// # Errors
    ///
    /// A word that is not one token, and the pipeline's errors.
    pub async fn refusal_tokens(
        &self,
        model: &Llama,
        text: &TextAssets,
        harmful: &EncodedPrompts,
        io: &mut dyn RunIo,
    ) -> Result<RefusalTokens, RunError> {
        let judge = &self.judge;
        refusal_tokens(
            model,
            text,
            &judge.refusal_tokens,
            harmful,
            judge.batch_size,
            io,
        )
        .await
    }
}

impl Default for StudyRequest {
    fn default() -> StudyRequest {
        StudyRequest {
            split: SplitRequest::default(),
            eval_harmful: None,
            exclude: None,
            eval_harmless: None,
            n_eval: StudyRequest::N_EVAL,
            seeds: Vec::new(),
            calibration: CalibrationRequest::default(),
            judge: JudgeRequest::default(),
        }
    }
}

/// How completions are made and judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct JudgeRequest {
    /// Greedy tokens per completion.
    pub max_new_tokens: usize,
    /// Prompts per forward pass.
    pub batch_size: usize,
    /// Refusal tokens (default: the model family's, else derived from greedy completions of
    /// the harmful training prompts).
    pub refusal_tokens: Vec<String>,
    /// Whose verdict counts: `substring` (METHOD §7), `refusal-score` (above 0) or
    /// `model:ID`, a model the host opens asked whether each reply refuses; every judge's
    /// rate and their agreement are reported either way.
    pub judge: JudgeKind,
}

impl JudgeRequest {
    pub const BATCH_SIZE: usize = 16;

    pub fn settings(&self) -> EvalSettings {
        EvalSettings {
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
        }
    }

    /// # Errors
    ///
    /// [`RunError::Invalid`] for batches of no prompts.
    pub fn validate(&self) -> Result<(), RunError> {
        if self.batch_size == 0 {
            return Err(RunError::invalid("batch-size", "must be at least 1"));
        }
        Ok(())
    }

    /// The judge model `judge` names, opened by the host; none for the other judges.
    ///
    /// # Errors
    ///
    /// [`RunError::Input`] when the host cannot open it.
    pub fn open_judge(&self, io: &mut dyn RunIo) -> Result<Option<JudgeModel>, RunError> {
        match &self.judge {
            JudgeKind::Model(id) => Ok(Some(io.open_judge(id)?)),
            JudgeKind::Substring | JudgeKind::RefusalScore => Ok(None),
        }
    }

    /// How completions are judged: by `refusal`'s score and whose verdict counts, given the
    /// judge model [`open_judge`](Self::open_judge) opened.
    ///
    /// # Errors
    ///
    /// [`RunError::Input`] for a `model:` judge without its model.
    pub fn judging<'a>(
        &'a self,
        refusal: &'a RefusalTokens,
        model: Option<&'a ModelJudge<'a>>,
    ) -> Result<Judging<'a>, RunError> {
        let by = match (&self.judge, model) {
            (JudgeKind::Substring, _) => By::Substring,
            (JudgeKind::RefusalScore, _) => By::RefusalScore,
            (JudgeKind::Model(id), Some(judge)) => By::Model { id, judge },
            (JudgeKind::Model(id), None) => {
                return Err(RunError::Input(format!(
                    "the judge model `{id}` was not opened"
                )));
            }
        };
        Ok(Judging { refusal, by })
    }
}

/// A judge model and its tokenizer and chat template (shared with the host that loaded it).
pub struct JudgeModel {
    pub model: Llama,
    pub text: Arc<TextAssets>,
}

impl JudgeModel {
    /// # Errors
    ///
    /// Those of [`ModelJudge::new`].
    pub fn judge(&self) -> Result<ModelJudge<'_>, RunError> {
        Ok(ModelJudge::new(&self.model, &self.text)?)
    }
}

impl Default for JudgeRequest {
    fn default() -> JudgeRequest {
        JudgeRequest {
            max_new_tokens: defaults::JUDGED_TOKENS,
            batch_size: JudgeRequest::BATCH_SIZE,
            refusal_tokens: Vec::new(),
            judge: JudgeKind::Substring,
        }
    }
}

/// AIRD's scale α and ridge penalty λ: given, or chosen on the validation prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct AlphaRequest {
    /// The update scale (1 matches the base projection on the training prompts).
    pub alpha: f32,
    /// Choose α on the validation prompts among these instead: the lowest validation ASR
    /// whose harmless refusal stays within `max-harmless-increase` of the compressed model's.
    pub alpha_grid: Vec<f32>,
    /// The bound of `alpha-grid`: the largest rise in harmless refusal rate allowed (0.05 is
    /// five points).
    pub max_harmless_increase: f64,
    /// The ridge penalty (chosen on the validation prompts when absent).
    pub lambda: Option<f64>,
}

impl AlphaRequest {
    /// The grid to search, when one was given.
    pub fn grid(&self) -> Option<AlphaGrid> {
        (!self.alpha_grid.is_empty()).then(|| AlphaGrid {
            candidates: self.alpha_grid.clone(),
            max_harmless_increase: self.max_harmless_increase,
        })
    }

    /// # Errors
    ///
    /// [`RunError::Invalid`] for a scale or penalty that is not a finite number.
    pub fn validate(&self) -> Result<(), RunError> {
        if !self.alpha.is_finite() || self.alpha_grid.iter().any(|a| !a.is_finite()) {
            return Err(RunError::invalid("alpha", "must be a finite number"));
        }
        if self.lambda.is_some_and(|l| !l.is_finite() || l < 0.0) {
            return Err(RunError::invalid(
                "lambda",
                "must be a finite number, at least 0",
            ));
        }
        Ok(())
    }
}

impl Default for AlphaRequest {
    fn default() -> AlphaRequest {
        AlphaRequest {
            alpha: defaults::AIRD_ALPHA,
            alpha_grid: Vec::new(),
            max_harmless_increase: defaults::MAX_HARMLESS_INCREASE,
            lambda: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refusal::prompts::{Prompt, builtin_harmful, hold_out};

    struct NoFiles;

    impl RunIo for NoFiles {
        fn progress(&mut self, _: crate::pipeline::Progress) -> std::ops::ControlFlow<()> {
            std::ops::ControlFlow::Continue(())
        }

        fn note(&mut self, _: &str) {}

        fn read_prompts(&mut self, name: &str) -> Result<Vec<Prompt>, RunError> {
            Err(RunError::Input(format!("no file {name}")))
        }
    }

    fn request(n_train: usize, n_val: usize, n_eval: usize) -> StudyRequest {
        StudyRequest {
            split: SplitRequest {
                n_train,
                n_val,
                seed: 3,
                ..SplitRequest::default()
            },
            n_eval,
            ..StudyRequest::default()
        }
    }

    #[test]
    fn a_builtin_study_evaluates_on_the_first_validation_prompts() {
        let sets = request(10, 6, 4).prompts(&mut NoFiles).unwrap();
        let (train, val) = hold_out(builtin_harmful(), 10, 6, 3);
        assert_eq!((sets.harmful, sets.val_harmful.clone()), (train, val));
        assert_eq!(sets.eval_harmful, sets.val_harmful[..4]);
        assert_eq!(sets.eval_harmless, sets.val_harmless[..4]);
        assert_eq!(sets.uses.n_eval_harmless, 4);
        assert_eq!(sets.uses.eval_harmful, "harmful validation set");
        assert!(request(1, 6, 4).validate().is_err());
        let err = request(10, 6, 0).validate().unwrap_err().to_string();
        assert!(err.contains("n-eval"), "{err}");
    }

    #[test]
    fn excluded_instructions_leave_the_evaluation_set() {
        let mut r = request(10, 6, 64);
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        r.eval_harmful = Some(PromptSource::Inline(all));
        r.exclude = Some(PromptSource::Inline(vec![" b ".into()]));
        let sets = r.prompts(&mut NoFiles).unwrap();
        let kept: Vec<&str> = sets
            .eval_harmful
            .iter()
            .map(|p| p.instruction.as_str())
            .collect();
        assert_eq!(kept, ["a", "c"]);
        assert_eq!(sets.uses.eval_harmful, "3 inline prompts");
        r.exclude = Some(PromptSource::Inline(
            ["a", "b", "c"].map(String::from).to_vec(),
        ));
        let err = r.prompts(&mut NoFiles).unwrap_err().to_string();
        assert!(err.contains("evaluation set is empty"), "{err}");
        r.exclude = Some(PromptSource::Named("advbench.csv".into()));
        let err = r.prompts(&mut NoFiles).unwrap_err().to_string();
        assert!(err.contains("no file advbench.csv"), "{err}");
    }
}
