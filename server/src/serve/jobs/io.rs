//! A job's I/O for the core run: the command line's (progress as the job's events, its
//! cancel, tokens streamed), with what the request names answered by the server instead of
//! the file system: models by id from the registry, the stored direction, inline texts.

use std::ops::ControlFlow;

use refusal_core::model::Llama;
use refusal_core::pipeline::Progress;
use refusal_core::refusal::prompts::Prompt;
use refusal_core::runs::aird::GivenDirection;
use refusal_core::runs::generate::Streamed;
use refusal_core::runs::study::JudgeModel;
use refusal_core::runs::{LocalFuture, RunError, RunIo};

use crate::commands::Terminal;
use crate::serve::models::Registry;
use crate::serve::request::JobInputs;

pub(super) struct JobIo<'a> {
    pub terminal: Terminal,
    pub registry: &'a Registry,
    pub inputs: &'a JobInputs,
}

impl RunIo for JobIo<'_> {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        self.terminal.progress(progress)
    }

    fn note(&mut self, message: &str) {
        self.terminal.note(message);
    }

    /// Checked when the job was submitted: a job's sets are inline or built in.
    fn read_prompts(&mut self, name: &str) -> Result<Vec<Prompt>, RunError> {
        Err(RunError::Input(format!(
            "`{name}`: a job's prompt sets are lists of prompts, or builtin:harmful / \
             builtin:harmless"
        )))
    }

    fn read_text(&mut self, name: &str) -> Result<String, RunError> {
        self.inputs
            .texts
            .get(name)
            .cloned()
            .ok_or_else(|| RunError::Input(format!("`{name}`: a job's texts are given inline")))
    }

    fn read_direction(&mut self, name: &str) -> Result<GivenDirection, RunError> {
        match &self.inputs.direction {
            Some((id, direction)) if id == name => Ok(direction.given()),
            _ => Err(RunError::Input(format!(
                "`{name}` is not the id of a stored directions result"
            ))),
        }
    }

    fn names_model(&mut self, spec: &str) -> bool {
        self.registry.find(spec).is_ok()
    }

    fn streamed<'a>(&'a mut self, completion: Streamed<'a>) -> LocalFuture<'a, ControlFlow<()>> {
        self.terminal.streamed(completion)
    }

    fn open_model(&mut self, spec: &str) -> Result<Llama, RunError> {
        let path = self.registered(spec)?;
        self.terminal.open_model(&path)
    }

    fn open_judge(&mut self, spec: &str) -> Result<JudgeModel, RunError> {
        let path = self.registered(spec)?;
        self.terminal.open_judge(&path)
    }
}

impl JobIo<'_> {
    /// Where the model with id `spec` lies: a job names models by id only.
    fn registered(&self, spec: &str) -> Result<String, RunError> {
        let entry = self
            .registry
            .find(spec)
            .map_err(|e| RunError::Input(e.to_string()))?;
        Ok(Registry::cli_value(&entry))
    }
}
