//! A job's events: what its stream carries, and the log that SSE clients replay and follow.

use std::sync::Mutex;
use std::time::Instant;

use refusal_core::pipeline::Stage;
use serde::Serialize;
use tokio::sync::watch;

use super::lock;
use crate::progress::RunEvent;

/// What a job's event stream carries, in order: `queued`, `started`, any number of `progress`
/// and `token`, then exactly one of `succeeded`, `failed`, `cancelled`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEvent {
    /// Waiting; `ahead` jobs were queued or running when it arrived.
    Queued {
        ahead: usize,
    },
    Started,
    Progress {
        /// extract, refusal_tokens, baseline, select, generate, cross_entropy, compress.
        #[schema(value_type = String)]
        stage: Stage,
        done: usize,
        total: usize,
        /// Seconds since this stage began.
        elapsed_s: f64,
        /// Estimated seconds left in this stage.
        eta_s: Option<f64>,
    },
    /// Generated text of one completion (`generate` jobs).
    Token {
        variant: String,
        text: String,
    },
    Succeeded {
        result_id: String,
        /// The share link of the result.
        share_url: String,
    },
    Failed {
        error: String,
        /// What the command wrote before failing, stored as a result (e.g. the selection
        /// table of a directions run in which no candidate passed the filters).
        #[serde(skip_serializing_if = "Option::is_none")]
        result_id: Option<String>,
    },
    Cancelled,
}

impl JobEvent {
    pub fn name(&self) -> &'static str {
        match self {
            JobEvent::Queued { .. } => "queued",
            JobEvent::Started => "started",
            JobEvent::Progress { .. } => "progress",
            JobEvent::Token { .. } => "token",
            JobEvent::Succeeded { .. } => "succeeded",
            JobEvent::Failed { .. } => "failed",
            JobEvent::Cancelled => "cancelled",
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(
            self,
            JobEvent::Succeeded { .. } | JobEvent::Failed { .. } | JobEvent::Cancelled
        )
    }
}

/// A job's events so far; `changed` carries their count so followers wake up.
pub struct EventLog {
    events: Mutex<Vec<JobEvent>>,
    changed: watch::Sender<usize>,
    /// The current stage, when it began, and when the last progress was reported.
    stage: Mutex<Option<StageClock>>,
}

struct StageClock {
    /// None between the job's start and its first progress report.
    stage: Option<Stage>,
    began: Instant,
    last: Instant,
}

impl EventLog {
    pub(super) fn new() -> EventLog {
        EventLog {
            events: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            stage: Mutex::new(None),
        }
    }

    pub(super) fn push(&self, event: JobEvent) {
        if matches!(event, JobEvent::Started) {
            let now = Instant::now();
            *lock(&self.stage) = Some(StageClock {
                stage: None,
                began: now,
                last: now,
            });
        }
        let mut events = lock(&self.events);
        if events.last().is_some_and(JobEvent::is_final) {
            return;
        }
        events.push(event);
        self.changed.send_replace(events.len());
    }

    pub(super) fn push_run_event(&self, event: RunEvent) {
        match event {
            RunEvent::Progress(p) => {
                let now = Instant::now();
                let elapsed = {
                    let mut clock = lock(&self.stage);
                    let began = match &*clock {
                        Some(c) if c.stage == Some(p.stage) => c.began,
                        // A stage's work begins when the previous one's last report was made
                        // (its own first report may come after some of it is done).
                        Some(c) => c.last,
                        None => now,
                    };
                    *clock = Some(StageClock {
                        stage: Some(p.stage),
                        began,
                        last: now,
                    });
                    now.duration_since(began).as_secs_f64()
                };
                let eta_s = (p.done > 0 && p.done <= p.total && elapsed > 0.0)
                    .then(|| elapsed * (p.total - p.done) as f64 / p.done as f64);
                self.push(JobEvent::Progress {
                    stage: p.stage,
                    done: p.done,
                    total: p.total,
                    elapsed_s: elapsed,
                    eta_s,
                });
            }
            RunEvent::Token { variant, text } => self.push(JobEvent::Token { variant, text }),
        }
    }

    /// The event at `index`, if it has happened.
    pub fn get(&self, index: usize) -> Option<JobEvent> {
        lock(&self.events).get(index).cloned()
    }

    pub fn last(&self) -> Option<JobEvent> {
        lock(&self.events).last().cloned()
    }

    /// Wakes up when events are added.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use refusal_core::pipeline::Progress;

    use super::*;

    fn progress(log: &EventLog, stage: Stage, done: usize, total: usize) -> (f64, Option<f64>) {
        log.push_run_event(RunEvent::Progress(Progress { stage, done, total }));
        match log.last() {
            Some(JobEvent::Progress {
                elapsed_s, eta_s, ..
            }) => (elapsed_s, eta_s),
            other => panic!("expected progress, got {other:?}"),
        }
    }

    /// A stage's first report can come after part of its work (candidates scored in
    /// batches): its clock starts when the previous stage last reported, so the ETA is not 0.
    #[test]
    fn a_stage_is_timed_from_the_previous_report() {
        let log = EventLog::new();
        log.push(JobEvent::Started);
        std::thread::sleep(Duration::from_millis(40));
        let (elapsed, eta) = progress(&log, Stage::Extract, 1, 2);
        assert!(elapsed >= 0.04, "{elapsed}");
        assert!(
            (eta.unwrap() - elapsed).abs() < 1e-9,
            "half done: as long again"
        );
        std::thread::sleep(Duration::from_millis(40));
        let (elapsed, eta) = progress(&log, Stage::Select, 5, 120);
        assert!((0.04..0.5).contains(&elapsed), "{elapsed}");
        assert!(eta.unwrap() > 20.0 * elapsed, "{eta:?}");
        let (again, _) = progress(&log, Stage::Select, 6, 120);
        assert!(again >= elapsed, "the same stage keeps its clock");
    }
}
