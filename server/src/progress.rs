//! Progress of long pipeline steps (a terminal bar, or events for a server job) and cancel
//! requests (Ctrl-C, or a job's cancel).
//!
//! The first Ctrl-C asks the running step to stop at its next progress report (so outputs
//! are discarded cleanly, never half-written); a second one exits at once.

use std::io::IsTerminal;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use refusal_core::pipeline::{Progress, Stage};

/// What a running command reports besides its progress bar: the server turns these into
/// job events.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Progress(Progress),
    /// A piece of generated text, for the completion named `variant`.
    Token {
        variant: String,
        text: String,
    },
}

type Observer = Arc<dyn Fn(RunEvent) + Send + Sync>;

/// How a command is stopped and watched: Ctrl-C in the terminal, or a job's cancel request and
/// event stream in the server.
#[derive(Clone, Default)]
pub struct RunControl {
    cancel: Arc<AtomicBool>,
    observer: Option<Observer>,
}

impl std::fmt::Debug for RunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunControl")
            .field("cancelled", &self.cancelled())
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

impl RunControl {
    /// Cancelled by Ctrl-C (the handler is installed once per process).
    pub fn ctrl_c() -> Result<RunControl> {
        let control = RunControl::default();
        let inner = control.cancel.clone();
        ctrlc::set_handler(move || {
            if inner.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping (press Ctrl-C again to quit at once)");
        })
        .context("installing the Ctrl-C handler")?;
        Ok(control)
    }

    /// Cancelled by [`RunControl::cancel`]; every event goes to `observer` and no progress
    /// bar is drawn.
    pub fn observed(observer: impl Fn(RunEvent) + Send + Sync + 'static) -> RunControl {
        RunControl {
            cancel: Arc::default(),
            observer: Some(Arc::new(observer)),
        }
    }

    /// Asks the command to stop at its next progress report.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Whether someone other than the terminal watches the run.
    pub fn is_observed(&self) -> bool {
        self.observer.is_some()
    }

    pub fn emit(&self, event: RunEvent) {
        if let Some(observer) = &self.observer {
            observer(event);
        }
    }
}

fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Extract => "extracting directions (prompts)",
        Stage::RefusalTokens => "finding refusal tokens (prompts)",
        Stage::Baseline => "baseline on validation prompts",
        Stage::Select => "scoring candidates",
        Stage::Generate => "generating (prompts)",
        Stage::CrossEntropy => "cross-entropy (tokens)",
        Stage::Compress => "compressing (blocks)",
        Stage::Aird => "recording AIRD activations (prompts)",
        Stage::Judge => "judge model reading completions (prompts)",
    }
}

/// One progress bar that follows the stages of a run. When stderr is not a terminal (a log
/// file, `nohup`), it prints a line every [`LOG_EVERY`] instead.
pub struct StageBar {
    bar: ProgressBar,
    stage: Option<Stage>,
    control: RunControl,
    log: Option<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(30);

impl StageBar {
    /// A bar on stderr, unless the run is observed (a server job) or `show` is false.
    pub fn new(show: bool, control: RunControl) -> StageBar {
        let show = show && !control.is_observed();
        let bar = if show {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{msg:34} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let log = (show && !std::io::stderr().is_terminal()).then(Instant::now);
        StageBar {
            bar,
            stage: None,
            control,
            log,
        }
    }

    /// The pipeline's progress callback: updates the bar, tells the observer, and cancels
    /// when asked to.
    pub fn update(&mut self, p: Progress) -> ControlFlow<()> {
        self.control.emit(RunEvent::Progress(p));
        if self.stage != Some(p.stage) {
            self.stage = Some(p.stage);
            self.bar.reset();
            self.bar.set_message(stage_label(p.stage));
        }
        self.bar.set_length(p.total as u64);
        self.bar.set_position(p.done as u64);
        if let Some(last) = &mut self.log
            && (last.elapsed() >= LOG_EVERY || p.done == p.total)
        {
            *last = Instant::now();
            let elapsed = self.bar.elapsed().as_secs();
            eprintln!(
                "{}: {}/{} after {elapsed} s (about {} s left)",
                stage_label(p.stage),
                p.done,
                p.total,
                self.bar.eta().as_secs()
            );
        }
        if self.control.cancelled() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Runs `f` (which prints) with the bar hidden, so the line is not drawn over.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }
}
