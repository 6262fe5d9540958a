//! The pipeline subcommands: `generate`, `directions`, `eval`, `orthogonalize`,
//! `control-vector`, `compress`, `compare`, `aird`.

pub mod aird;
pub mod compare;
pub mod compress;
pub mod control_vector;
pub mod directions;
pub mod eval;
pub mod generate;
pub mod orthogonalize;
pub mod pipeline;

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{Context, Result};
use refusal_core::model::Llama;
use refusal_core::pipeline::Progress;
use refusal_core::refusal::evaluate::EvalSettings;
use refusal_core::refusal::judge::JudgeKind;
use refusal_core::refusal::prompts::{self, Prompt, PromptFormat};
use refusal_core::runs::aird::GivenDirection;
use refusal_core::runs::defaults;
use refusal_core::runs::generate::Streamed;
use refusal_core::runs::study::{JudgeModel, JudgeRequest};
use refusal_core::runs::{LocalFuture, RunError, RunIo};

use crate::direction_file::DirectionFile;
use crate::model_args::ModelArgs;
use crate::progress::{RunControl, RunEvent, StageBar};

/// How completions are generated and judged (`eval`, `compare`, `aird`).
#[derive(Debug, Clone, clap::Args)]
pub struct JudgeArgs {
    /// Greedy tokens per completion.
    #[arg(long, default_value_t = defaults::JUDGED_TOKENS)]
    pub max_new_tokens: usize,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = JudgeRequest::BATCH_SIZE)]
    pub batch_size: usize,
    /// Refusal tokens, comma-separated (default: a direction's, else the model family's, else
    /// derived from data).
    #[arg(long, value_delimiter = ',')]
    pub refusal_tokens: Vec<String>,
    /// Whose verdict counts: substring (METHOD §7's phrases), refusal-score (the refusal
    /// tokens more likely than not) or model:ID (a model id or GGUF/HF path, asked whether
    /// each reply refuses); every judge's rate and their agreement (Cohen's κ) are reported.
    #[arg(long, default_value = "substring")]
    pub judge: JudgeKind,
}

impl JudgeArgs {
    pub fn request(&self) -> JudgeRequest {
        JudgeRequest {
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
            refusal_tokens: self.refusal_tokens.clone(),
            judge: self.judge.clone(),
        }
    }

    pub fn settings(&self) -> EvalSettings {
        self.request().settings()
    }
}

/// What a command wrote, as the terminal summarises it, and the error it ends with when it
/// wrote its outputs without reaching its goal (a directions run where no candidate passed).
pub struct Written {
    summary: String,
    failure: Option<String>,
}

impl Written {
    pub fn done(summary: String) -> Written {
        Written {
            summary,
            failure: None,
        }
    }

    pub fn failed(summary: String, failure: String) -> Written {
        Written {
            summary,
            failure: Some(failure),
        }
    }

    /// Prints the summary, then ends with the failure, if any.
    ///
    /// # Errors
    ///
    /// The failure.
    pub fn finish(self) -> Result<()> {
        println!("{}", self.summary);
        match self.failure {
            Some(failure) => Err(anyhow::anyhow!(failure)),
            None => Ok(()),
        }
    }
}

/// Runs `write` with the command line's I/O for `models`, then prints what it wrote once the
/// bar is cleared.
///
/// # Errors
///
/// What `write` fails with, and the failure it wrote.
pub fn in_terminal(
    control: &RunControl,
    models: &ModelArgs,
    write: impl FnOnce(&mut dyn RunIo) -> Result<Written>,
) -> Result<()> {
    let mut io = Terminal::new(control, models);
    let written = write(&mut io)?;
    drop(io);
    written.finish()
}

/// Reads a prompt file, its format chosen by extension (`.json`, `.csv`, else one per line).
pub fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.display().to_string();
    Ok(prompts::parse(
        &name,
        &bytes,
        PromptFormat::from_file_name(&name),
    )?)
}

/// The prompts of `file`, or the built-in set when there is none.
pub fn read_prompts_or(file: Option<&Path>, builtin: fn() -> Vec<Prompt>) -> Result<Vec<Prompt>> {
    match file {
        Some(p) => read_prompts(p),
        None => Ok(builtin()),
    }
}

/// A core run's I/O on the command line for a step with no progress to show: prompt sets and
/// texts named by file, notes on stderr.
pub struct PromptFiles;

impl RunIo for PromptFiles {
    fn progress(&mut self, _: Progress) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    fn read_prompts(&mut self, name: &str) -> Result<Vec<Prompt>, RunError> {
        read_prompts(Path::new(name)).map_err(|e| RunError::Input(format!("{e:#}")))
    }

    fn note(&mut self, message: &str) {
        eprintln!("{message}");
    }

    fn read_text(&mut self, name: &str) -> Result<String, RunError> {
        std::fs::read_to_string(name)
            .with_context(|| format!("reading {name}"))
            .map_err(input_error)
    }
}

/// A core run's I/O on the command line: the bar (a job's events in the server) and its
/// cancel, prompt sets, texts and directions named by path, models opened on the base's
/// backend, completions streamed as the job's token events (and to stdout when asked),
/// notes on stderr.
pub struct Terminal {
    pub bar: StageBar,
    /// How the models a run names are opened (`--backend`, `--weights` of the base).
    pub models: ModelArgs,
    /// Whether completions are printed as they are decoded.
    pub print_completions: bool,
    control: RunControl,
}

impl Terminal {
    pub fn new(control: &RunControl, models: &ModelArgs) -> Terminal {
        Terminal {
            bar: StageBar::new(true, control.clone()),
            models: models.clone(),
            print_completions: false,
            control: control.clone(),
        }
    }

    /// Prints a piece of a completion; a closed stdout (e.g. piped into `head`) stops the
    /// printing, not the run, whose report is still written.
    fn print(&mut self, text: &str) {
        let mut stdout = std::io::stdout();
        if write!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            self.print_completions = false;
        }
    }
}

/// The bar is cleared however the run ends, the error path included.
impl Drop for Terminal {
    fn drop(&mut self) {
        self.bar.finish();
    }
}

fn input_error(e: anyhow::Error) -> RunError {
    RunError::Input(format!("{e:#}"))
}

impl RunIo for Terminal {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        self.bar.update(progress)
    }

    fn note(&mut self, message: &str) {
        self.bar.suspend(|| PromptFiles.note(message));
    }

    fn read_prompts(&mut self, name: &str) -> Result<Vec<Prompt>, RunError> {
        PromptFiles.read_prompts(name)
    }

    fn read_text(&mut self, name: &str) -> Result<String, RunError> {
        PromptFiles.read_text(name)
    }

    fn read_direction(&mut self, name: &str) -> Result<GivenDirection, RunError> {
        Ok(DirectionFile::read(Path::new(name))
            .map_err(input_error)?
            .given())
    }

    fn names_model(&mut self, spec: &str) -> bool {
        Path::new(spec).exists()
    }

    fn streamed<'a>(&'a mut self, completion: Streamed<'a>) -> LocalFuture<'a, ControlFlow<()>> {
        if self.control.cancelled() {
            return Box::pin(async { ControlFlow::Break(()) });
        }
        match completion {
            Streamed::Begin { variant, of } => {
                // Completions have no bar of their own; the stages before them are done.
                self.bar.finish();
                if self.print_completions && of > 1 {
                    self.print(&format!("--- {}\n", variant.name()));
                }
            }
            Streamed::Token { variant, text } if !text.is_empty() => {
                self.control.emit(RunEvent::Token {
                    variant: variant.name().to_owned(),
                    text: text.to_owned(),
                });
                if self.print_completions {
                    self.print(text);
                }
            }
            Streamed::End { .. } if self.print_completions => self.print("\n"),
            _ => {}
        }
        Box::pin(async { ControlFlow::Continue(()) })
    }

    fn open_model(&mut self, spec: &str) -> Result<Llama, RunError> {
        let args = ModelArgs {
            model: spec.to_owned(),
            ..self.models.clone()
        };
        let loaded = self.bar.suspend(|| args.load()).with_context(|| {
            format!("`{spec}` is neither a model nor a recipe such as wanda:0.5 or rtn:4:128")
        });
        Ok(loaded.map_err(input_error)?.llama)
    }

    fn open_judge(&mut self, spec: &str) -> Result<JudgeModel, RunError> {
        let args = ModelArgs {
            model: spec.to_owned(),
            ..self.models.clone()
        };
        let loaded = self
            .bar
            .suspend(|| args.load())
            .with_context(|| format!("opening the judge model `{spec}`"))
            .map_err(input_error)?;
        Ok(JudgeModel {
            model: loaded.llama,
            text: loaded.text,
        })
    }
}
