//! Jobs: a bounded queue, worker threads that run the CLI's commands, an event log per job
//! (progress, streamed tokens, the outcome) that any number of SSE clients replay and follow,
//! and the result stored in SQLite before anyone is told its id.

use std::collections::HashMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context, Result};
use refusal_core::refusal::Stage;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::models::{Format, ModelEntry, Registry};
use super::new_id;
use super::request::{JobKind, JobRequest, Prepared};
use super::store::{NewResult, Store};
use crate::cli::Command;
use crate::commands::{aird, compare, compress, directions, eval, generate};
use crate::open::fingerprint;
use crate::progress::{RunControl, RunEvent};
use crate::source::{ModelSource, ResolvedModel, size_and_mtime};

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventLog {
    fn new() -> EventLog {
        EventLog {
            events: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
            stage: Mutex::new(None),
        }
    }

    fn push(&self, event: JobEvent) {
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

    fn push_run_event(&self, event: RunEvent) {
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

/// A job the server knows in memory (since it started).
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub request: JobRequest,
    pub events: Arc<EventLog>,
    control: RunControl,
    prepared: Mutex<Option<Prepared>>,
    dir: PathBuf,
    created: Instant,
}

impl Job {
    /// queued, running, succeeded, failed or cancelled.
    pub fn state(&self) -> &'static str {
        match self.events.last() {
            None | Some(JobEvent::Queued { .. }) => "queued",
            Some(JobEvent::Succeeded { .. }) => "succeeded",
            Some(JobEvent::Failed { .. }) => "failed",
            Some(JobEvent::Cancelled) => "cancelled",
            Some(_) => "running",
        }
    }

    /// Whether it succeeded, failed or was cancelled.
    pub fn is_finished(&self) -> bool {
        self.events.last().is_some_and(|e| e.is_final())
    }
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the job queue is full ({0} jobs waiting); try again later")]
    QueueFull(usize),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Finished jobs whose full event logs stay in memory.
const KEEP_FINISHED: usize = 256;

pub struct Jobs {
    store: Arc<Store>,
    registry: Arc<Registry>,
    jobs_dir: PathBuf,
    queue: SyncSender<Arc<Job>>,
    capacity: usize,
    live: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    /// Starts `workers` threads taking jobs from a queue of `capacity`.
    ///
    /// # Errors
    ///
    /// An unwritable jobs directory.
    pub fn start(
        store: Arc<Store>,
        registry: Arc<Registry>,
        jobs_dir: PathBuf,
        workers: usize,
        capacity: usize,
    ) -> Result<Arc<Jobs>> {
        // Work directories of jobs a previous process did not finish.
        if jobs_dir.exists() {
            fs::remove_dir_all(&jobs_dir)
                .with_context(|| format!("clearing {}", jobs_dir.display()))?;
        }
        fs::create_dir_all(&jobs_dir)
            .with_context(|| format!("creating {}", jobs_dir.display()))?;
        let (queue, rx) = sync_channel(capacity);
        let jobs = Arc::new(Jobs {
            store,
            registry,
            jobs_dir,
            queue,
            capacity,
            live: Mutex::new(HashMap::new()),
        });
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..workers.max(1) {
            let jobs = Arc::downgrade(&jobs);
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("job-worker-{n}"))
                .spawn(move || work(&jobs, &rx))
                .context("starting a job worker")?;
        }
        Ok(jobs)
    }

    /// A fresh work directory for a job about to be prepared.
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn new_dir(&self) -> Result<(String, PathBuf)> {
        let id = new_id();
        let dir = self.jobs_dir.join(&id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok((id, dir))
    }

    /// Queues a prepared job.
    ///
    /// # Errors
    ///
    /// [`SubmitError::QueueFull`] when `capacity` jobs are already waiting.
    pub fn submit(
        &self,
        id: String,
        dir: PathBuf,
        request: JobRequest,
        prepared: Prepared,
    ) -> Result<Arc<Job>, SubmitError> {
        let events = Arc::new(EventLog::new());
        let log = events.clone();
        let job = Arc::new(Job {
            id: id.clone(),
            kind: request.kind,
            control: RunControl::observed(move |e| log.push_run_event(e)),
            events,
            request,
            prepared: Mutex::new(Some(prepared)),
            dir,
            created: Instant::now(),
        });
        let request_json = serde_json::to_value(&job.request).context("encoding a request")?;
        self.store
            .insert_job(&id, job.kind.command(), &request_json)?;
        let ahead = lock(&self.live)
            .values()
            .filter(|j| !j.is_finished())
            .count();
        job.events.push(JobEvent::Queued { ahead });
        lock(&self.live).insert(id.clone(), job.clone());
        match self.queue.try_send(job.clone()) {
            Ok(()) => Ok(job),
            Err(e) => {
                lock(&self.live).remove(&id);
                let _ = fs::remove_dir_all(&job.dir);
                let reason = "the queue was full";
                self.store.finish_job(&id, "failed", Some(reason), None)?;
                match e {
                    TrySendError::Full(_) => Err(SubmitError::QueueFull(self.capacity)),
                    TrySendError::Disconnected(_) => {
                        Err(anyhow::anyhow!("the job workers have stopped").into())
                    }
                }
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.live).get(id).cloned()
    }

    /// Asks a job to stop; a queued job never starts. Returns false when it had finished.
    pub fn cancel(&self, job: &Job) -> bool {
        if job.is_finished() {
            return false;
        }
        job.control.cancel();
        if job.state() == "queued" {
            self.finish(job, JobEvent::Cancelled);
        }
        true
    }

    /// Cancels every queued and running job (the server is stopping).
    pub fn cancel_all(&self) {
        let live: Vec<Arc<Job>> = lock(&self.live).values().cloned().collect();
        for job in live {
            self.cancel(&job);
        }
    }

    /// Records a job's final event (`succeeded`, `failed` or `cancelled`: its state's name).
    fn finish(&self, job: &Job, event: JobEvent) {
        let (error, result) = match &event {
            JobEvent::Succeeded { result_id, .. } => (None, Some(result_id.as_str())),
            JobEvent::Failed { error, result_id } => (Some(error.as_str()), result_id.as_deref()),
            _ => (None, None),
        };
        if let Err(e) = self.store.finish_job(&job.id, event.name(), error, result) {
            tracing::error!("recording the end of job {}: {e:#}", job.id);
        }
        job.events.push(event);
        let _ = fs::remove_dir_all(&job.dir);
        self.forget_old_jobs();
    }

    /// Keeps the event logs of the newest finished jobs only; older ones are answered from
    /// their records in the database (state, outcome), without their progress events.
    fn forget_old_jobs(&self) {
        let mut live = lock(&self.live);
        let mut finished: Vec<(Instant, String)> = live
            .values()
            .filter(|j| j.is_finished())
            .map(|j| (j.created, j.id.clone()))
            .collect();
        if finished.len() > KEEP_FINISHED {
            finished.sort();
            for (_, id) in &finished[..finished.len() - KEEP_FINISHED] {
                live.remove(id);
            }
        }
    }

    fn run(&self, job: &Job) {
        // Cancelled while queued: already recorded.
        if job.is_finished() {
            return;
        }
        if job.control.cancelled() {
            self.finish(job, JobEvent::Cancelled);
            return;
        }
        let Some(prepared) = lock(&job.prepared).take() else {
            return;
        };
        if let Err(e) = self.store.set_job_running(&job.id) {
            tracing::error!("recording the start of job {}: {e:#}", job.id);
        }
        job.events.push(JobEvent::Started);
        tracing::info!(job = %job.id, kind = job.kind.command(), "started");
        let ran = catch_unwind(AssertUnwindSafe(|| {
            execute(&prepared.command, &job.control)
        }));
        let failed = |error: String| JobEvent::Failed {
            error,
            result_id: None,
        };
        let event = match ran {
            Ok(Ok(())) => match self.store_result(job, &prepared, None) {
                Ok(result_id) => JobEvent::Succeeded {
                    share_url: format!("/r/{result_id}"),
                    result_id,
                },
                Err(e) => failed(format!("storing the result: {e:#}")),
            },
            _ if job.control.cancelled() => JobEvent::Cancelled,
            Ok(Err(e)) => {
                let error = format!("{e:#}");
                // A model written by a failed job is never offered; reports are kept.
                let result_id = (!job.kind.writes_model())
                    .then(|| self.store_result(job, &prepared, Some(&error)).ok())
                    .flatten();
                JobEvent::Failed { error, result_id }
            }
            Err(panic) => failed(format!(
                "internal error: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("the job panicked")
            )),
        };
        tracing::info!(job = %job.id, outcome = event.name(), "finished");
        self.finish(job, event);
    }

    /// Moves a written model among the server's models and stores everything else. With
    /// `error` (the command failed), stores what it wrote, if anything, with the error.
    fn store_result(&self, job: &Job, prepared: &Prepared, error: Option<&str>) -> Result<String> {
        let id = new_id();
        let out_dir = job.dir.join("out");
        let mut report = serde_json::Map::new();
        let mut files = Vec::new();
        collect_outputs(
            &out_dir,
            &out_dir,
            job.kind.writes_model(),
            &mut report,
            &mut files,
        )?;
        if let Some(error) = error {
            anyhow::ensure!(!report.is_empty(), "the job wrote no report");
            report.insert("error".into(), Value::String(error.to_owned()));
        }
        let mut derived = None;
        if job.kind.writes_model() {
            let (from, name) = match prepared.model.format {
                Format::Gguf => (prepared.out.clone(), format!("{id}.gguf")),
                Format::Safetensors => (out_dir.join("model"), id.clone()),
            };
            let to = self.registry.derived_dir().join(&name);
            fs::create_dir_all(self.registry.derived_dir())?;
            fs::rename(&from, &to)
                .with_context(|| format!("moving the job's model to {}", to.display()))?;
            report.insert("model_id".into(), Value::String(name.clone()));
            derived = Some(name);
        }
        let model = model_fingerprint(&self.store, &self.registry, &prepared.model)?;
        let stored = NewResult {
            id: id.clone(),
            kind: job.kind.command().to_owned(),
            model,
            request: serde_json::to_value(&job.request)?,
            argv: prepared.argv.clone(),
            report: Value::Object(report),
            files,
        };
        if let Err(e) = self.store.insert_result(&stored) {
            if let Some(name) = derived {
                let _ = fs::remove_file(self.registry.derived_dir().join(&name))
                    .or_else(|_| fs::remove_dir_all(self.registry.derived_dir().join(&name)));
            }
            return Err(e);
        }
        Ok(id)
    }
}

/// The model's fingerprint, from the index when its files have not changed since it was
/// hashed.
///
/// # Errors
///
/// Unreadable model files and database errors.
pub fn model_fingerprint(store: &Store, registry: &Registry, entry: &ModelEntry) -> Result<Value> {
    let value = Registry::cli_value(entry);
    let resolved = ModelSource::parse(&value)?.resolve(registry.cache(), false)?;
    let (ResolvedModel::Gguf(path) | ResolvedModel::HfDir(path)) = &resolved;
    let (size, mtime_ns) = size_and_mtime(path)?;
    let key = path.display().to_string();
    if let Some(fp) = store.fingerprint(&key, size, mtime_ns)? {
        return Ok(fp);
    }
    let fp = serde_json::to_value(fingerprint(&resolved, &entry.id)?)?;
    store.remember_fingerprint(&key, size, mtime_ns, &fp)?;
    Ok(fp)
}

/// The JSON reports (by file name) and other files a command wrote under `dir`, leaving a
/// model's own files (weights, config, tokenizer) where they are.
fn collect_outputs(
    root: &Path,
    dir: &Path,
    model_out: bool,
    report: &mut serde_json::Map<String, Value>,
    files: &mut Vec<(String, Vec<u8>)>,
) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_outputs(root, &path, model_out, report, files)?;
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_report = name.ends_with(".json")
            && !matches!(
                name.as_str(),
                "config.json" | "tokenizer.json" | "tokenizer_config.json"
            );
        if is_report {
            let bytes = fs::read(&path)?;
            let json: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            report.insert(name, json);
            if model_out {
                fs::remove_file(&path)?;
            }
        } else if !model_out {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            files.push((rel.display().to_string(), fs::read(&path)?));
        }
    }
    Ok(())
}

/// Runs a job's command with the job's control (cancel, events).
fn execute(command: &Command, control: &RunControl) -> Result<()> {
    match command {
        Command::Generate(a) => generate::run(a, control),
        Command::Directions(a) => directions::run(a, control),
        Command::Eval(a) => eval::run(a, control),
        Command::Compress(a) => compress::run(a, control),
        Command::Compare(a) => compare::run(a, control),
        Command::Aird(a) => aird::run(a, control),
        _ => anyhow::bail!("not a job command"),
    }
}

fn work(jobs: &std::sync::Weak<Jobs>, rx: &Mutex<Receiver<Arc<Job>>>) {
    loop {
        let next = lock(rx).recv();
        let (Ok(job), Some(jobs)) = (next, jobs.upgrade()) else {
            return;
        };
        jobs.run(&job);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use refusal_core::refusal::Progress;

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
