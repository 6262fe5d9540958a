//! The queue: prepared jobs waiting for worker threads that run them with the job's control
//! (cancel, events), and the jobs the server knows in memory. It holds at most `capacity`
//! waiting jobs, counted from the jobs themselves, so a job cancelled while it waits frees its
//! place at once. A job that runs past the time limit is stopped as a cancel would stop it
//! and recorded as failed, naming the limit.

use std::collections::HashMap;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::io::JobIo;
use super::results::store_result;
use super::{EventLog, JobEvent, lock};
use crate::commands::{Terminal, aird, compare, compress, directions, eval, generate};
use crate::progress::RunControl;
use crate::serve::models::Registry;
use crate::serve::new_id;
use crate::serve::redact::Redactor;
use crate::serve::request::{JobKind, JobRequest, JobRun, Prepared};
use crate::serve::retention::{Retention, Swept};
use crate::serve::store::Store;

/// A job the server knows in memory (since it started).
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub request: JobRequest,
    pub events: Arc<EventLog>,
    /// SHA-256 (hex) of the token that may delete the job's result.
    pub delete_token_sha256: String,
    control: RunControl,
    prepared: Mutex<Option<Prepared>>,
    pub(super) dir: PathBuf,
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
    queue: Sender<Arc<Job>>,
    capacity: usize,
    time_limit: Duration,
    retention: Retention,
    /// Failed jobs' errors are shown to clients and stored: without server paths.
    redactor: Redactor,
    live: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    /// Starts `workers` threads taking jobs from a queue of `capacity`, each job stopped after
    /// `time_limit`, after sweeping what `retention` no longer keeps; errors and results are
    /// shown and stored through `redactor`.
    ///
    /// # Errors
    ///
    /// An unwritable jobs directory.
    #[allow(clippy::too_many_arguments)] // the server's settings for its jobs, one per flag
    pub fn start(
        store: Arc<Store>,
        registry: Arc<Registry>,
        jobs_dir: PathBuf,
        workers: usize,
        capacity: usize,
        time_limit: Duration,
        retention: Retention,
        redactor: Redactor,
    ) -> Result<Arc<Jobs>> {
        // Work directories of jobs a previous process did not finish.
        if jobs_dir.exists() {
            fs::remove_dir_all(&jobs_dir)
                .with_context(|| format!("clearing {}", jobs_dir.display()))?;
        }
        fs::create_dir_all(&jobs_dir)
            .with_context(|| format!("creating {}", jobs_dir.display()))?;
        log_sweep(retention.sweep(&store, &registry, true));
        let (queue, rx) = channel();
        let jobs = Arc::new(Jobs {
            store,
            registry,
            redactor,
            jobs_dir,
            queue,
            capacity,
            time_limit,
            retention,
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

    /// Whether the queue has room now: checked before a submission is prepared, so that a full
    /// queue answers at once, without reading models or writing a directory. `submit` checks
    /// again, as a slot may be taken in between.
    ///
    /// # Errors
    ///
    /// [`SubmitError::QueueFull`] when it has none.
    pub fn check_room(&self) -> Result<(), SubmitError> {
        if counts(&lock(&self.live)).1 >= self.capacity {
            return Err(SubmitError::QueueFull(self.capacity));
        }
        Ok(())
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
        delete_token_sha256: String,
    ) -> Result<Arc<Job>, SubmitError> {
        let events = Arc::new(EventLog::new());
        let log = events.clone();
        let job = Arc::new(Job {
            id: id.clone(),
            kind: request.kind,
            control: RunControl::observed(move |e| log.push_run_event(e)),
            events,
            delete_token_sha256,
            request,
            prepared: Mutex::new(Some(prepared)),
            dir,
            created: Instant::now(),
        });
        let request_json = serde_json::to_value(&job.request).context("encoding a request")?;
        let mut live = lock(&self.live);
        let (ahead, waiting) = counts(&live);
        // A refused job leaves nothing behind: no row, no work directory.
        if waiting >= self.capacity {
            drop(live);
            let _ = fs::remove_dir_all(&job.dir);
            return Err(SubmitError::QueueFull(self.capacity));
        }
        self.store
            .insert_job(&id, job.kind.command(), &request_json)?;
        job.events.push(JobEvent::Queued { ahead });
        live.insert(id.clone(), job.clone());
        drop(live);
        if self.queue.send(job.clone()).is_err() {
            let error = "the job workers have stopped".to_owned();
            self.finish(
                &job,
                JobEvent::Failed {
                    error,
                    result_id: None,
                },
            );
            return Err(anyhow::anyhow!("the job workers have stopped").into());
        }
        Ok(job)
    }

    /// Removes what the retention policy no longer keeps (logged, never fatal).
    pub fn sweep(&self) {
        log_sweep(self.retention.sweep(&self.store, &self.registry, false));
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        lock(&self.live).get(id).cloned()
    }

    /// Asks a job to stop; a queued job never starts. Returns false when it had finished.
    pub fn cancel(&self, job: &Job) -> bool {
        if job.is_finished() {
            return false;
        }
        if let Err(e) = self.store.request_cancel(&job.id) {
            tracing::error!("recording the cancel of job {}: {e:#}", job.id);
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
        let event = match event {
            JobEvent::Failed { error, result_id } => JobEvent::Failed {
                error: self.redactor.redact(&error).into_owned(),
                result_id,
            },
            other => other,
        };
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
        let timed_out = Arc::new(AtomicBool::new(false));
        let (done, timer) = channel::<()>();
        let (control, flag, limit) = (job.control.clone(), timed_out.clone(), self.time_limit);
        // Ends when `done` drops (the job finished) or stops the job at its time limit.
        let watch = move || {
            if timer.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
                flag.store(true, Ordering::SeqCst);
                control.cancel();
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("job-timer".to_owned())
            .spawn(watch)
        {
            tracing::error!("starting the time limit of job {}: {e}", job.id);
        }
        let ran = catch_unwind(AssertUnwindSafe(|| {
            execute(&prepared, &self.registry, &job.control)
        }));
        drop(done);
        let failed = |error: String| JobEvent::Failed {
            error,
            result_id: None,
        };
        let event = match ran {
            Ok(Ok(())) => match store_result(
                &self.store,
                &self.registry,
                &self.redactor,
                job,
                &prepared,
                None,
            ) {
                Ok(result_id) => JobEvent::Succeeded {
                    share_url: format!("/r/{result_id}"),
                    result_id,
                },
                Err(e) => failed(format!("storing the result: {e:#}")),
            },
            _ if timed_out.load(Ordering::SeqCst) => failed(format!(
                "stopped after {} s, the server's limit per job (serve --job-timeout-s)",
                self.time_limit.as_secs()
            )),
            _ if job.control.cancelled() => JobEvent::Cancelled,
            Ok(Err(e)) => {
                let error = format!("{e:#}");
                // A model written by a failed job is never offered; reports are kept.
                let result_id = (!job.kind.writes_model())
                    .then(|| {
                        store_result(
                            &self.store,
                            &self.registry,
                            &self.redactor,
                            job,
                            &prepared,
                            Some(&error),
                        )
                        .ok()
                    })
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
        let stored = matches!(&event, JobEvent::Succeeded { .. });
        self.finish(job, event);
        if stored {
            self.sweep();
        }
    }
}

/// Runs a job's request with the job's control (cancel, events), writing what the command
/// of its kind writes into the job's output.
fn execute(prepared: &Prepared, registry: &Registry, control: &RunControl) -> Result<()> {
    let mut io = JobIo {
        terminal: Terminal::new(control, &prepared.models),
        registry,
        inputs: &prepared.inputs,
    };
    let (models, out) = (&prepared.models, prepared.out.as_path());
    let written = match &prepared.run {
        JobRun::Generate(r) => {
            generate::write(r, models, Some(out), &mut io)?;
            return Ok(());
        }
        JobRun::Directions(r) => directions::write(r, models, out, &mut io)?,
        JobRun::Eval(r) => {
            let direction = prepared.inputs.direction.as_ref().map(|(_, d)| d);
            eval::write(r, direction, models, out, &mut io)?
        }
        JobRun::Compress(r) => compress::write(r, models, out, &mut io)?,
        JobRun::Compare(r) => compare::write(r, models, out, &mut io)?,
        JobRun::Aird(r) => aird::write(r, models, out, &mut io)?,
    };
    // The bar is cleared before the summary is printed.
    drop(io);
    written.finish()
}

/// Unfinished jobs, and those of them still waiting for a worker.
fn counts(live: &HashMap<String, Arc<Job>>) -> (usize, usize) {
    live.values()
        .filter(|j| !j.is_finished())
        .fold((0, 0), |(ahead, waiting), j| {
            (ahead + 1, waiting + usize::from(j.state() == "queued"))
        })
}

fn log_sweep(swept: Result<Swept>) {
    match swept {
        Ok(s) if s != Swept::default() => tracing::info!(
            results = s.results,
            jobs = s.jobs,
            orphans = s.orphans,
            "retention removed old results (serve --keep-days, --keep-mib)"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!("sweeping old results: {e:#}"),
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
