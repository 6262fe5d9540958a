//! The quick direction: the default model's refusal direction on the built-in prompt sets,
//! computed in the background when the server starts, so that the Playground opens with a
//! direction chosen and a visitor's first click shows the model refusing and, ablated,
//! complying. It is a stored `directions` result like any other (shared, retained and deleted
//! the same way); the next start finds it again while the model's files are the same, and
//! computes a new one when they changed or it was removed.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use serde::Serialize;
use serde_json::{Value, json};

use refusal_core::runs::defaults;

use super::AppState;
use super::request::JobRequest;

/// Training prompts of each kind: the built-in sets hold 80.
const N_TRAIN: usize = 32;
/// Validation prompts of each kind, which score each layer's candidate.
const N_VAL: usize = 8;

/// What `GET /api/quick-direction` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct QuickDirectionStatus {
    /// The model it is for (`--quick-direction`; none when off).
    pub model: Option<String>,
    /// `looking` (for a stored one, at start), `ready` (`result_id` holds it), `running`
    /// (`job_id` computes it), `failed` (`error` says why) or `off` (this server finds none).
    pub state: &'static str,
    pub result_id: Option<String>,
    pub job_id: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
enum State {
    Looking,
    Ready(String),
    Running(String),
    Failed(String),
    Off,
}

/// The server's quick direction for one model, or none.
#[derive(Debug)]
pub struct QuickDirection {
    model: Option<String>,
    state: Mutex<State>,
}

/// The job that computes it: the built-in sets, the last position only (one candidate per
/// layer instead of one per post-instruction token), METHOD §6's selection, else the
/// comparison's fallback (on Qwen2.5-Coder no candidate passes §6: every induce score is
/// negative).
pub fn request(model: &str) -> JobRequest {
    let args = json!({
        "model": model,
        "n-train": N_TRAIN,
        "n-val": N_VAL,
        "positions": [-1],
        "fallback-kl-max": defaults::FALLBACK_KL_MAX,
    });
    JobRequest {
        kind: super::request::JobKind::Directions,
        args: match args {
            Value::Object(map) => map,
            _ => unreachable!("a JSON object"),
        },
    }
}

impl QuickDirection {
    /// For `model`, not looked for yet; off without one.
    pub fn new(model: Option<String>) -> QuickDirection {
        let state = if model.is_some() {
            State::Looking
        } else {
            State::Off
        };
        QuickDirection {
            model,
            state: Mutex::new(state),
        }
    }

    fn set(&self, state: State) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Finds the stored quick direction of the model's current files, or submits the job that
    /// computes it. Runs once at start, off the request path (hashing a model the first time
    /// reads its files).
    fn find_or_compute(&self, app: &AppState, model: &str) {
        let state = match find(app, model) {
            Ok(Some(id)) => State::Ready(id),
            Ok(None) => match super::api::submit(app, request(model)) {
                Ok(created) => State::Running(created.id),
                Err(e) => State::Failed(e.message().to_owned()),
            },
            Err(e) => State::Failed(app.redactor.redact(&format!("{e:#}")).into_owned()),
        };
        match &state {
            State::Ready(id) => tracing::info!("quick direction of {model}: result {id}"),
            State::Running(job) => {
                tracing::info!("finding the quick direction of {model} (job {job})")
            }
            State::Failed(e) => tracing::warn!("no quick direction of {model}: {e}"),
            State::Looking | State::Off => {}
        }
        self.set(state);
    }

    /// Where it stands now: a running job that has finished since is read from its record.
    pub fn status(&self, app: &AppState) -> Result<QuickDirectionStatus> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let State::Running(job) = &*state
            && let Some(record) = app.store.job(job)?
        {
            match (record.state.as_str(), record.result_id) {
                ("succeeded", Some(id)) => *state = State::Ready(id),
                ("failed" | "cancelled", _) => {
                    *state = State::Failed(record.error.unwrap_or(record.state))
                }
                _ => {}
            }
        }
        if let State::Ready(id) = &*state
            && !app.store.has_result(id)?
        {
            *state = State::Failed(format!(
                "result {id} was removed; the next start computes it again"
            ));
        }
        let (name, result_id, job_id, error) = match state.clone() {
            State::Looking => ("looking", None, None, None),
            State::Ready(id) => ("ready", Some(id), None, None),
            State::Running(job) => ("running", None, Some(job), None),
            State::Failed(e) => ("failed", None, None, Some(e)),
            State::Off => ("off", None, None, None),
        };
        Ok(QuickDirectionStatus {
            model: self.model.clone(),
            state: name,
            result_id,
            job_id,
            error,
        })
    }
}

/// The newest stored result of [`request`] on `model`'s current files.
fn find(app: &AppState, model: &str) -> Result<Option<String>> {
    let entry = app.registry.find(model)?;
    let fingerprint = super::jobs::model_fingerprint(&app.store, &app.registry, &entry)?;
    let wanted = serde_json::to_value(request(model))?;
    Ok(app
        .store
        .results_of_request("directions", &wanted)?
        .into_iter()
        .find(|(_, stored)| stored.get("sha256") == fingerprint.get("sha256"))
        .map(|(id, _)| id))
}

/// Starts looking for (or computing) the quick direction on a thread of its own, if the
/// server has one to find.
pub fn start(app: &Arc<AppState>) {
    let Some(model) = app.quick_direction.model.clone() else {
        return;
    };
    let app = app.clone();
    let spawned = std::thread::Builder::new()
        .name("quick-direction".to_owned())
        .spawn(move || app.quick_direction.find_or_compute(&app, &model));
    if let Err(e) = spawned {
        tracing::warn!("no quick direction: cannot start its thread: {e}");
    }
}
