//! Terminal progress for long pipeline steps, and Ctrl-C as a cancel request.
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
use refusal_core::refusal::{Progress, Stage};

/// Set when the user pressed Ctrl-C.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Installs the Ctrl-C handler (once per process).
    pub fn install() -> Result<Interrupt> {
        let flag = Interrupt::default();
        let inner = flag.0.clone();
        ctrlc::set_handler(move || {
            if inner.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping (press Ctrl-C again to quit at once)");
        })
        .context("installing the Ctrl-C handler")?;
        Ok(flag)
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
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
    }
}

/// One progress bar that follows the stages of a run. When stderr is not a terminal (a log
/// file, `nohup`), it prints a line every [`LOG_EVERY`] instead.
pub struct StageBar {
    bar: ProgressBar,
    stage: Option<Stage>,
    interrupt: Interrupt,
    log: Option<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(30);

impl StageBar {
    pub fn new(show: bool, interrupt: Interrupt) -> StageBar {
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
            interrupt,
            log,
        }
    }

    /// The pipeline's progress callback: updates the bar, and cancels after Ctrl-C.
    pub fn update(&mut self, p: Progress) -> ControlFlow<()> {
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
        if self.interrupt.requested() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
