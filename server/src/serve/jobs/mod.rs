//! Jobs: a bounded queue, worker threads that run each job's core request as its command
//! does, an event log per job (progress, streamed tokens, the outcome) that any number of SSE
//! clients replay and follow, and the result stored in SQLite before anyone is told its id.

mod events;
mod io;
mod queue;
mod results;

use std::sync::{Mutex, MutexGuard};

pub use events::{EventLog, JobEvent};
pub use queue::{Job, Jobs, SubmitError};
pub use results::model_fingerprint;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
