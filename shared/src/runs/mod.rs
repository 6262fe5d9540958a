//! The pipelines, each defined once: a request with its defaults and bounds, an `async fn run`
//! and the report it returns. The command line, the server's jobs and the browser build the
//! same request and lend the run what it cannot do itself through [`RunIo`]: showing progress
//! and taking a cancel, reading a prompt set named by the user, telling the user something.

pub mod aird;
pub mod bounds;
pub mod compare;
pub mod compress;
pub mod defaults;
pub mod directions;
pub mod eval;
pub mod generate;
pub mod prompts;
pub mod study;

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;

use crate::compress::{Method, Summary};
use crate::load::TextAssets;
use crate::model::Llama;
use crate::pipeline::{PipelineError, Progress};
use crate::refusal::Prompt;
use crate::refusal::aird::{AirdFit, AirdSettings, repair_on_builtin};

pub use bounds::Bounds;
pub use prompts::{PromptSource, SplitRequest};

/// A future a host's [`RunIo`] returns (the browser's are not `Send`).
pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// What a run needs from where it runs. Only progress, notes and prompt sets are asked of
/// every host; the rest answer "not here" unless the host can (the command line reads files
/// and opens models, a tab keeps what it compressed).
pub trait RunIo {
    /// Called as work advances; `Break` cancels the run.
    fn progress(&mut self, progress: Progress) -> ControlFlow<()>;

    /// Something the user should know that does not stop the run.
    fn note(&mut self, message: &str);

    /// The prompts of a set the user named that is not built in (on the command line, a
    /// file's path).
    ///
    /// # Errors
    ///
    /// [`RunError::Input`] naming the set when it cannot be read.
    fn read_prompts(&mut self, name: &str) -> Result<Vec<Prompt>, RunError>;

    /// A text the user named (calibration or perplexity text).
    ///
    /// # Errors
    ///
    /// [`RunError::Input`] naming it when it cannot be read.
    fn read_text(&mut self, name: &str) -> Result<String, RunError> {
        Err(RunError::Input(format!(
            "`{name}`: texts are not read here; give a recipe's built-in calibration instead"
        )))
    }

    /// A stored direction the user named (on the command line, a `direction.json` path).
    ///
    /// # Errors
    ///
    /// [`RunError::Input`] naming it when it cannot be read.
    fn read_direction(&mut self, name: &str) -> Result<aird::GivenDirection, RunError> {
        Err(RunError::Input(format!(
            "`{name}`: stored directions are not read here; give the direction itself"
        )))
    }

    /// Whether `spec` names a model the host opens (then a recipe of the same spelling does
    /// not shadow it).
    fn names_model(&mut self, _spec: &str) -> bool {
        false
    }

    /// Opens the model `spec` names.
    ///
    /// # Errors
    ///
    /// [`RunError::Input`] naming it when it cannot be opened.
    fn open_model(&mut self, spec: &str) -> Result<Llama, RunError> {
        Err(RunError::Input(format!(
            "`{spec}` is not a compression recipe (such as rtn:4:128 or wanda:0.5), and models \
             are not opened here"
        )))
    }

    /// Opens the judge model `spec` names (`--judge model:SPEC`), with its own tokenizer and
    /// chat template.
    ///
    /// # Errors
    ///
    /// [`RunError::Input`] naming it when it cannot be opened.
    fn open_judge(&mut self, spec: &str) -> Result<study::JudgeModel, RunError> {
        Err(RunError::Input(format!(
            "the judge model `{spec}` cannot be opened here; judge with substring or refusal-score"
        )))
    }

    /// `base` compressed by `method`, and what compression did; a host may keep it for its
    /// next run.
    fn compress<'a>(
        &'a mut self,
        base: &'a Llama,
        method: Method,
        calibration: &'a compress::Calibration,
        batch_size: usize,
    ) -> LocalFuture<'a, Result<(Llama, Summary), RunError>> {
        Box::pin(async move {
            compress::compress_base(base, method, calibration, batch_size, &mut |p| {
                self.progress(p)
            })
            .await
        })
    }

    /// A completion as it is decoded (`generate`); `Break` cancels the run.
    fn streamed<'a>(
        &'a mut self,
        _completion: generate::Streamed<'a>,
    ) -> LocalFuture<'a, ControlFlow<()>> {
        Box::pin(async { ControlFlow::Continue(()) })
    }

    /// `compressed` repaired by AIRD toward `direction`, fitted on `fit_prompts` training
    /// prompts of each built-in set; a host may keep it for its next run.
    fn repair<'a>(
        &'a mut self,
        base: &'a Llama,
        compressed: &'a Llama,
        text: &'a TextAssets,
        direction: &'a aird::GivenDirection,
        settings: AirdSettings,
        fit_prompts: usize,
    ) -> LocalFuture<'a, Result<(Llama, AirdFit), RunError>> {
        Box::pin(async move {
            let repaired = repair_on_builtin(
                base,
                compressed.clone(),
                &direction.vector,
                settings,
                text,
                fit_prompts,
                &mut |p| self.progress(p),
            )
            .await?;
            Ok((repaired.model, repaired.fit))
        })
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A request field out of its bounds.
    #[error("`{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// A request field over what the host lends a run ([`Bounds`]).
    #[error("`{field}` {value}{unit}: at most {limit}")]
    TooLarge {
        field: &'static str,
        value: u64,
        unit: &'static str,
        limit: u64,
    },
    /// A run whose estimated work is over the host's budget ([`Bounds::work_tokens`]).
    #[error("about {tokens} tokens to generate and read ({made_of}); at most {limit} per run")]
    TooMuchWork {
        tokens: u64,
        limit: u64,
        made_of: &'static str,
    },
    /// An input named by the user (a prompt set, a text, a model, a recipe) that could not
    /// be read or used, named.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl RunError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> RunError {
        RunError::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// A request read from JSON over `defaults`: the fields it names replace theirs. Field names
/// are the command line's flags (`n-train`); the snake-case spelling of earlier browser
/// requests (`n_train`, kept in shared links) reads the same.
///
/// # Errors
///
/// JSON that is not an object, and what [`request_from_fields`] refuses.
pub fn request_from_json<R>(defaults: &R, json: &str) -> Result<R, RunError>
where
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    let invalid = |e: serde_json::Error| RunError::invalid("request", e.to_string());
    let serde_json::Value::Object(given) = serde_json::from_str(json).map_err(invalid)? else {
        return Err(RunError::invalid("request", "not a JSON object"));
    };
    request_from_fields(defaults, given)
}

/// A request from the fields given over `defaults`, checked one field at a time so that an
/// error names the field. `null` keeps the default. A string where the field takes a number,
/// a switch or a list reads as the command line reads it (`"32"`, `"true"`, `"I,As"`), so a
/// request may carry the values a form or a command line would.
///
/// # Errors
///
/// Unknown fields (listing the known ones) and values of the wrong type, named.
pub fn request_from_fields<R>(
    defaults: &R,
    given: serde_json::Map<String, serde_json::Value>,
) -> Result<R, RunError>
where
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    use serde_json::Value;
    let invalid = |e: serde_json::Error| RunError::invalid("request", e.to_string());
    let Value::Object(mut merged) = serde_json::to_value(defaults).map_err(invalid)? else {
        unreachable!("a request serialises as an object")
    };
    let reads = |fields: &serde_json::Map<String, Value>| {
        serde_json::from_value::<R>(Value::Object(fields.clone()))
    };
    for (key, value) in given {
        let key = key.replace('_', "-");
        let Some(default) = merged.get(&key).cloned() else {
            let known: Vec<&str> = merged.keys().map(String::as_str).collect();
            return Err(RunError::Input(format!(
                "unknown field `{key}` (known: {})",
                known.join(", ")
            )));
        };
        if value.is_null() {
            continue;
        }
        let shown = match &value {
            Value::String(s) => format!("'{s}'"),
            other => other.to_string(),
        };
        let mut error = None;
        for candidate in spellings(value) {
            merged.insert(key.clone(), candidate);
            match reads(&merged) {
                Ok(_) => {
                    error = None;
                    break;
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = error {
            merged.insert(key.clone(), default);
            let message = e.to_string();
            // serde_json's position is of the merged object, not of anything the user wrote.
            let message = message.split(" at line ").next().unwrap_or(&message);
            return Err(RunError::Input(format!(
                "invalid value {shown} for `{key}`: {message}"
            )));
        }
    }
    reads(&merged).map_err(invalid)
}

/// A value as given, then (for a string) as the command line would read it: a number or a
/// switch, then a comma-separated list of such.
fn spellings(value: serde_json::Value) -> Vec<serde_json::Value> {
    use serde_json::Value;
    let Value::String(s) = &value else {
        return vec![value];
    };
    let literal = |t: &str| {
        serde_json::from_str::<Value>(t.trim())
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| Value::String(t.trim().to_owned()))
    };
    let list = Value::Array(s.split(',').map(literal).collect());
    let strings = Value::Array(
        s.split(',')
            .map(|t| Value::String(t.trim().to_owned()))
            .collect(),
    );
    vec![value.clone(), literal(s), list, strings]
}

/// A candidate named by the user, `LAYER:POSITION` (e.g. `12:-1`); JSON takes the string or
/// a `[layer, position]` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub layer: usize,
    /// Counted from the end: -1 is the last token.
    pub position: isize,
}

impl std::str::FromStr for Choice {
    type Err = String;

    fn from_str(s: &str) -> Result<Choice, String> {
        let (l, p) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not LAYER:POSITION, e.g. 12:-1"))?;
        let layer = l.trim().parse().map_err(|_| format!("bad layer `{l}`"))?;
        let position: isize = p
            .trim()
            .parse()
            .map_err(|_| format!("bad position `{p}`"))?;
        Choice::new(layer, position)
    }
}

impl Choice {
    /// # Errors
    ///
    /// A position that is not negative.
    pub fn new(layer: usize, position: isize) -> Result<Choice, String> {
        if position >= 0 {
            return Err(format!(
                "position {position} must be negative (counted from the end)"
            ));
        }
        Ok(Choice { layer, position })
    }
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.layer, self.position)
    }
}

impl serde::Serialize for Choice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Choice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Choice, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Given {
            Text(String),
            Pair(usize, isize),
        }
        match Given::deserialize(d)? {
            Given::Text(s) => s.parse(),
            Given::Pair(layer, position) => Choice::new(layer, position),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_takes_its_defaults_for_the_fields_it_leaves_out() {
        let base = directions::DirectionsRequest {
            batch_size: 8,
            ..Default::default()
        };
        let r = request_from_json(
            &base,
            r#"{"n_train": 16, "kl-max": 0.2, "select": [3, -1]}"#,
        )
        .unwrap();
        assert_eq!(r.split.n_train, 16);
        assert_eq!(r.split.n_val, SplitRequest::N_VAL);
        assert_eq!(r.batch_size, 8);
        assert_eq!(r.filters.kl_max, 0.2);
        assert_eq!(r.select, Some(Choice::new(3, -1).unwrap()));
        let err = request_from_json(&base, r#"{"n-train": "many"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        assert!(request_from_json(&base, "[1]").is_err());
        let err = request_from_json(&base, r#"{"n-trian": 16}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `n-trian`"), "{err}");
    }

    #[test]
    fn a_field_given_as_the_command_line_spells_it_reads_and_a_wrong_one_is_named() {
        let base = directions::DirectionsRequest::default();
        let r = request_from_json(
            &base,
            r#"{"n-train": "16", "refusal-tokens": "I,As", "positions": "-1",
                "kl-max": null, "select": "12:-1"}"#,
        )
        .unwrap();
        assert_eq!(r.split.n_train, 16);
        assert_eq!(r.refusal_tokens, ["I", "As"]);
        assert_eq!(r.positions, Some(vec![-1]));
        assert_eq!(r.filters.kl_max, base.filters.kl_max);
        let err = request_from_json(&base, r#"{"seed": 1, "n-val": [1, 2]}"#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid value [1,2] for `n-val`: invalid type"),
            "{err}"
        );
        let prompt =
            request_from_json(&generate::GenerateRequest::default(), r#"{"prompt": "42"}"#)
                .unwrap();
        assert_eq!(prompt.prompt, "42");
    }

    #[test]
    fn a_choice_reads_as_text_or_as_a_pair_and_needs_a_negative_position() {
        let text: Choice = serde_json::from_str("\"12:-1\"").unwrap();
        let pair: Choice = serde_json::from_str("[12, -1]").unwrap();
        assert_eq!(text, pair);
        assert_eq!(serde_json::to_string(&text).unwrap(), "\"12:-1\"");
        assert!("12:1".parse::<Choice>().unwrap_err().contains("negative"));
        assert!(
            "12".parse::<Choice>()
                .unwrap_err()
                .contains("LAYER:POSITION")
        );
        assert!(serde_json::from_str::<Choice>("[3, 0]").is_err());
    }
}
