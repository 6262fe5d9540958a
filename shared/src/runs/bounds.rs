//! What one run may ask of the machine it runs on: the bounds a server lends each job (the
//! command line has none; its user owns the machine). Each request checks itself against them
//! before it runs, naming the field and the limit it is over, and estimates its total work so
//! a job of many small-looking fields cannot add up to hours or gigabytes.

use super::aird::AirdRequest;
use super::compare::CompareRequest;
use super::compress::{CalibrationRequest, CompressRequest};
use super::directions::DirectionsRequest;
use super::eval::EvalRequest;
use super::generate::GenerateRequest;
use super::study::{AlphaRequest, JudgeRequest, StudyRequest};
use super::{PromptSource, RunError, SplitRequest};
use crate::refusal::intervention::InterventionKind;
use crate::refusal::repair_study::VARIANTS;

/// The most a run may ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// Most prompts in a prompt count (`n-train`, `n-eval`, `n-calib`, `limit`, …).
    pub prompts: usize,
    /// Longest prompt (with its system prompt), in characters.
    pub prompt_chars: usize,
    /// Most tokens generated per completion.
    pub new_tokens: usize,
    /// Most values in a list field (`variants`, `coeff`, `compressed`, `positions`,
    /// `refusal-tokens`, `alpha-grid`).
    pub list_items: usize,
    /// Longest token window (`window`, `calib-seq`).
    pub window_tokens: usize,
    /// Largest batch (`batch-size`).
    pub batch_size: usize,
    /// Most tokens a whole run may generate and read for calibration (see each request's
    /// `work_tokens`).
    pub work_tokens: u64,
}

impl Bounds {
    /// What a server lends a job unless told otherwise: what a 2-core machine with a few GB
    /// of memory runs through (eval's window of 2048 holds about 1.2 GB of logits on a
    /// 152k vocabulary), and what the README's studies ask for.
    pub const DEFAULT: Bounds = Bounds {
        prompts: 1024,
        prompt_chars: 4000,
        new_tokens: 512,
        list_items: 32,
        window_tokens: 2048,
        batch_size: 64,
        work_tokens: 4_000_000,
    };

    /// `field`'s `value` (in `unit`: "" for a count) against `limit`.
    pub(crate) fn at_most(
        field: &'static str,
        value: usize,
        limit: usize,
        unit: &'static str,
    ) -> Result<(), RunError> {
        if value > limit {
            return Err(RunError::TooLarge {
                field,
                value: value as u64,
                unit,
                limit: limit as u64,
            });
        }
        Ok(())
    }

    pub(crate) fn batch(&self, batch_size: usize) -> Result<(), RunError> {
        Bounds::at_most("batch-size", batch_size, self.batch_size, "")
    }

    pub(crate) fn list(&self, field: &'static str, len: usize) -> Result<(), RunError> {
        Bounds::at_most(field, len, self.list_items, " values")
    }

    pub(crate) fn count(&self, field: &'static str, n: usize) -> Result<(), RunError> {
        Bounds::at_most(field, n, self.prompts, "")
    }

    pub(crate) fn window(&self, field: &'static str, tokens: usize) -> Result<(), RunError> {
        Bounds::at_most(field, tokens, self.window_tokens, " tokens")
    }

    pub(crate) fn new_tokens(&self, n: usize) -> Result<(), RunError> {
        Bounds::at_most("max-new-tokens", n, self.new_tokens, "")
    }

    /// A run's estimated `tokens`, `made_of` saying which fields they come from.
    pub(crate) fn work(&self, tokens: u64, made_of: &'static str) -> Result<(), RunError> {
        if tokens > self.work_tokens {
            return Err(RunError::TooMuchWork {
                tokens,
                limit: self.work_tokens,
                made_of,
            });
        }
        Ok(())
    }
}

/// `a × b × …` without wrapping: a product past `u64` is as over any budget as `u64::MAX`.
pub(crate) fn product(factors: &[usize]) -> u64 {
    factors
        .iter()
        .try_fold(1u64, |acc, &f| acc.checked_mul(f as u64))
        .unwrap_or(u64::MAX)
}

impl SplitRequest {
    fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        b.count("n-train", self.n_train)?;
        b.count("n-val", self.n_val)
    }
}

impl CalibrationRequest {
    fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        b.count("n-calib", self.n_calib)?;
        b.window("calib-seq", self.calib_seq)
    }

    /// The calibration tokens the model reads.
    fn work_tokens(&self) -> u64 {
        product(&[self.n_calib, self.calib_seq])
    }
}

impl JudgeRequest {
    fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        b.new_tokens(self.max_new_tokens)?;
        b.batch(self.batch_size)?;
        b.list("refusal-tokens", self.refusal_tokens.len())
    }
}

impl AlphaRequest {
    fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        b.list("alpha-grid", self.alpha_grid.len())
    }
}

impl StudyRequest {
    fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        self.split.check_bounds(b)?;
        b.count("n-eval", self.n_eval)?;
        b.list("seeds", self.seeds.len())?;
        self.calibration.check_bounds(b)?;
        self.judge.check_bounds(b)
    }

    /// Tokens generated for `sets` judged sets of `n-eval` prompts.
    fn judged_tokens(&self, sets: usize) -> u64 {
        product(&[sets, self.n_eval, self.judge.max_new_tokens])
    }

    /// Tokens generated choosing α on the validation prompts (both sets, every α).
    fn alpha_tokens(&self, alpha: &AlphaRequest) -> u64 {
        product(&[
            alpha.alpha_grid.len(),
            2,
            self.split.n_val,
            self.judge.max_new_tokens,
        ])
    }
}

impl GenerateRequest {
    /// The request against what the host lends a run.
    ///
    /// # Errors
    ///
    /// [`RunError::TooLarge`] naming the first field over its bound, [`RunError::TooMuchWork`].
    pub fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        let chars =
            self.prompt.chars().count() + self.system.as_deref().map_or(0, |s| s.chars().count());
        Bounds::at_most("prompt", chars, b.prompt_chars, " characters")?;
        b.new_tokens(self.max_new_tokens)?;
        b.list("variants", self.variants.len())?;
        b.batch(self.batch_size)?;
        let mut work = product(&[self.variants().len(), self.max_new_tokens]);
        // The compressed columns' calibration and fit run only when they are asked for.
        if self.compressed.is_some() {
            self.calibration.check_bounds(b)?;
            work = work.saturating_add(self.calibration.work_tokens());
            if self.direction.is_some() {
                b.count("aird-prompts", self.aird_prompts)?;
            }
        }
        b.work(work, "variants × max-new-tokens + n-calib × calib-seq")
    }
}

impl DirectionsRequest {
    /// The request against what the host lends a run (its prompt counts bound its work).
    ///
    /// # Errors
    ///
    /// [`RunError::TooLarge`] naming the first field over its bound.
    pub fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        self.split.check_bounds(b)?;
        b.batch(self.batch_size)?;
        b.list("refusal-tokens", self.refusal_tokens.len())?;
        b.list("positions", self.positions.as_ref().map_or(0, Vec::len))
    }
}

impl EvalRequest {
    /// The request against what the host lends a run.
    ///
    /// # Errors
    ///
    /// [`RunError::TooLarge`] naming the first field over its bound, [`RunError::TooMuchWork`].
    pub fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        if let Some(limit) = self.limit {
            b.count("limit", limit)?;
        }
        b.list("coeff", self.coeff.len())?;
        b.window("window", self.window)?;
        self.judge.check_bounds(b)?;
        // A named set's size is known only when it is read: count it as the most a set may hold.
        let inline = match &self.prompts {
            Some(PromptSource::Inline(p)) => p.len(),
            _ => b.prompts,
        };
        let prompts = self.limit.map_or(inline, |l| l.min(inline));
        let runs = if self.intervention == InterventionKind::Actadd {
            self.coeff.len()
        } else {
            1
        };
        b.work(
            product(&[prompts, runs, self.judge.max_new_tokens]),
            "prompts × coeff × max-new-tokens",
        )
    }
}

impl CompressRequest {
    /// The request against what the host lends a run.
    ///
    /// # Errors
    ///
    /// [`RunError::TooLarge`] naming the first field over its bound, [`RunError::TooMuchWork`].
    pub fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        self.calibration.check_bounds(b)?;
        b.batch(self.batch_size)?;
        b.work(self.calibration.work_tokens(), "n-calib × calib-seq")
    }
}

impl CompareRequest {
    /// The request against what the host lends a run.
    ///
    /// # Errors
    ///
    /// [`RunError::TooLarge`] naming the first field over its bound, [`RunError::TooMuchWork`].
    pub fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        b.list("compressed", self.compressed.len())?;
        b.list("positions", self.positions.as_ref().map_or(0, Vec::len))?;
        self.alpha.check_bounds(b)?;
        self.study.check_bounds(b)?;
        // Each compressed model: its baseline on both sets, ablation and addition with its own
        // direction and the base's (METHOD §9), and AIRD's repair on both sets when asked.
        let sets = 6 + if self.aird { 2 } else { 0 };
        let per_model = self
            .study
            .judged_tokens(sets)
            .saturating_add(self.study.calibration.work_tokens())
            .saturating_add(if self.aird {
                self.study.alpha_tokens(&self.alpha)
            } else {
                0
            });
        let work = per_model
            .saturating_mul(self.compressed.len() as u64)
            .saturating_add(self.study.judged_tokens(2))
            .saturating_mul(self.study.seeds().len() as u64);
        b.work(
            work,
            "seeds × compressed × (judged sets × n-eval × max-new-tokens + n-calib × calib-seq)",
        )
    }
}

impl AirdRequest {
    /// The request against what the host lends a run.
    ///
    /// # Errors
    ///
    /// [`RunError::TooLarge`] naming the first field over its bound, [`RunError::TooMuchWork`].
    pub fn check_bounds(&self, b: &Bounds) -> Result<(), RunError> {
        b.window("window", self.window)?;
        self.alpha.check_bounds(b)?;
        self.study.check_bounds(b)?;
        // Every variant of the report (base, compressed, AIRD, its baselines) on both sets.
        let work = self
            .study
            .judged_tokens(2 * VARIANTS.len())
            .saturating_add(self.study.alpha_tokens(&self.alpha))
            .saturating_add(self.study.calibration.work_tokens())
            .saturating_mul(self.study.seeds().len() as u64);
        b.work(
            work,
            "seeds × (models × 2 × n-eval × max-new-tokens + α grid on validation + n-calib × calib-seq)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_over_its_limit_names_the_field_and_the_limit() {
        let e = Bounds::at_most("window", 1_000_000_000, 4096, " tokens").unwrap_err();
        assert_eq!(e.to_string(), "`window` 1000000000 tokens: at most 4096");
        assert!(Bounds::at_most("window", 4096, 4096, " tokens").is_ok());
    }

    #[test]
    fn every_kind_with_its_defaults_is_within_the_default_bounds() {
        let b = &Bounds::DEFAULT;
        let generate = GenerateRequest {
            prompt: "x".into(),
            compressed: Some("rtn:4:128".into()),
            ..GenerateRequest::default()
        };
        generate.check_bounds(b).unwrap();
        DirectionsRequest::default().check_bounds(b).unwrap();
        let eval = EvalRequest {
            prompts: Some(PromptSource::Named("builtin:harmful".into())),
            ..EvalRequest::default()
        };
        eval.check_bounds(b).unwrap();
        CompressRequest::default().check_bounds(b).unwrap();
        let compare = CompareRequest {
            compressed: vec!["rtn:4:128".into(), "wanda:0.5".into()],
            aird: true,
            ..CompareRequest::default()
        };
        compare.check_bounds(b).unwrap();
        let aird = AirdRequest {
            compressed: "rtn:4:128".into(),
            ..AirdRequest::default()
        };
        aird.check_bounds(b).unwrap();
    }

    #[test]
    fn a_field_is_bounded_only_where_the_run_uses_it() {
        let b = Bounds {
            prompts: 8,
            ..Bounds::DEFAULT
        };
        // Without `compressed`, generate calibrates nothing.
        let mut generate = GenerateRequest {
            prompt: "x".into(),
            ..GenerateRequest::default()
        };
        generate.check_bounds(&b).unwrap();
        generate.compressed = Some("wanda:0.5".into());
        let e = generate.check_bounds(&b).unwrap_err();
        assert_eq!(e.to_string(), "`n-calib` 128: at most 8");
    }

    #[test]
    fn work_past_the_budget_is_refused_with_what_it_is_made_of() {
        let b = Bounds {
            work_tokens: 10_000,
            ..Bounds::DEFAULT
        };
        let eval = EvalRequest {
            prompts: Some(PromptSource::Inline(vec!["a".into(); 100])),
            intervention: InterventionKind::Actadd,
            coeff: vec![1.0, 2.0],
            ..EvalRequest::default()
        };
        // 100 prompts × 2 coefficients × 64 tokens.
        let Err(RunError::TooMuchWork { tokens, limit, .. }) = eval.check_bounds(&b) else {
            panic!("12800 tokens are over 10000");
        };
        assert_eq!((tokens, limit), (12_800, 10_000));
        let limited = EvalRequest {
            limit: Some(10),
            ..eval
        };
        limited.check_bounds(&b).unwrap();
    }

    #[test]
    fn a_product_that_overflows_is_over_every_budget() {
        assert_eq!(product(&[3, 4, 5]), 60);
        assert_eq!(product(&[usize::MAX, usize::MAX, usize::MAX]), u64::MAX);
        assert_eq!(product(&[]), 1);
    }
}
