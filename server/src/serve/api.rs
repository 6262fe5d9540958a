//! The HTTP routes: JSON API (documented as OpenAPI at `/api/openapi.json`, readable at
//! `/api/docs`), Server-Sent Events for jobs, share links, and the web app's files.

use std::convert::Infallible;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::stream::{self, Stream};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use super::access;
use super::jobs::{JobEvent, SubmitError, model_fingerprint};
use super::models::{Format, Location, LookupError, ModelEntry, valid_id};
use super::quick_direction::QuickDirectionStatus;
use super::redact;
use super::request::{self, Context, JobRequest, KindInfo, RequestError};
use super::retention;
use super::store::{JobRecord, Lookup, Removal, StoredResult};
use super::{AppState, is_generated_id};
use crate::model::fetch::ensure_builtin;

type AppStateRef = State<Arc<AppState>>;

/// Longest a request body may go without sending more.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u32>,
}

#[derive(Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// What the error says.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }

    fn bad_id(id: &str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, format!("`{id}` is not an id"))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        tracing::error!("{e:#}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

/// A model file that is there but cannot be read: the client named it, so 422, not a 500.
fn unreadable_model(id: &str, e: &anyhow::Error) -> ApiError {
    tracing::warn!("model `{id}`: {e:#}");
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("model `{id}` cannot be read: {e:#}"),
    )
}

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> ApiError {
        match e {
            LookupError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
            LookupError::Unknown(_) => ApiError::not_found(e.to_string()),
            LookupError::Io(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(anyhow::anyhow!("a request handler failed: {e}")))?
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Refusal Lens",
        description = "Refusal directions in language models: jobs (the CLI's commands), live \
                       progress, stored results and share links."
    ),
    paths(
        list_models,
        model_file,
        model_dir_file,
        job_kinds,
        submit_job,
        quick_direction,
        job_status,
        cancel_job,
        job_events,
        get_result,
        delete_result,
        result_file,
        export_result
    ),
    components(schemas(
        ModelEntry,
        JobRequest,
        KindInfo,
        JobCreated,
        JobStatus,
        QuickDirectionStatus,
        JobEvent,
        StoredResult,
        ErrorBody
    ))
)]
struct ApiDoc;

/// Every route, with `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.limits.max_request_bytes;
    let web = state.web_dir.clone();
    let api = Router::new()
        .route("/api/models", get(list_models))
        .route("/api/models/{id}/file", get(model_file))
        .route("/api/models/{id}/files/{name}", get(model_dir_file))
        .route("/api/jobs", axum::routing::post(submit_job))
        .route("/api/jobs/kinds", get(job_kinds))
        .route("/api/quick-direction", get(quick_direction))
        .route("/api/jobs/{id}", get(job_status).delete(cancel_job))
        .route("/api/jobs/{id}/events", get(job_events))
        .route("/api/results/{id}", get(get_result).delete(delete_result))
        .route("/api/results/{id}/files/{*name}", get(result_file))
        .route("/api/results/{id}/export", get(export_result))
        .route(
            "/api/openapi.json",
            get(|| async { Json(ApiDoc::openapi()) }),
        )
        .route("/api/docs", get(|| async { Html(DOCS_PAGE) }))
        .route("/r/{id}", get(share_page));
    let app = match web {
        Some(dir) => api.fallback_service(ServeDir::new(dir)),
        None => api.route("/", get(|| async { Html(NO_APP_PAGE) })),
    };
    let access = state.access.clone();
    let app = app
        .layer(axum::middleware::map_response_with_state(
            state.redactor.clone(),
            redact::redact_errors,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        // A body that stalls between reads holds its connection; it gets this long per read.
        .layer(RequestBodyTimeoutLayer::new(BODY_READ_TIMEOUT));
    // Other origins (a static copy of the app, a notebook) read models and results only when
    // named; none may submit or cancel jobs.
    let app = match access.cors() {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.layer(axum::middleware::from_fn(move |request, next| {
        access::check(access.clone(), request, next)
    }))
    .layer(TraceLayer::new_for_http().on_failure(log_failure))
    .with_state(state)
}

/// A full queue is the server working as meant (the client is told to retry), not an error
/// worth an operator's attention; a storm of retries would otherwise flood the log.
fn log_failure(failure: ServerErrorsFailureClass, latency: Duration, _: &tracing::Span) {
    match failure {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::debug!(?latency, "answered 503");
        }
        failure => tracing::error!(?latency, "request failed: {failure}"),
    }
}

/// The OpenAPI document, rendered by Redoc (loaded from its CDN: the page is for people
/// reading the API, who are online; the JSON itself needs nothing).
const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Refusal Lens API</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><noscript>The API is described in <a href="/api/openapi.json">/api/openapi.json</a>.</noscript>
<redoc spec-url="/api/openapi.json"></redoc>
<script src="https://cdn.redoc.ly/redoc/v2.1.5/bundles/redoc.standalone.js"></script>
<p id="offline" hidden>Redoc could not be loaded; the API is described in
<a href="/api/openapi.json">/api/openapi.json</a>.</p>
<script>if (!window.Redoc) document.getElementById('offline').hidden = false;</script>
</body></html>"#;

const NO_APP_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Refusal Lens</title></head>
<body style="font: 15px/1.5 system-ui, sans-serif; margin: 2rem">
<h1>Refusal Lens</h1>
<p>This server runs without the web app (start it with <code>--web-dir dist</code> after
<code>scripts/build-web.sh</code>). The API is at <a href="/api/docs">/api/docs</a>.</p>
</body></html>"#;

/// The built-in models, then those in `--models-dir`, then those jobs derived.
#[utoipa::path(get, path = "/api/models", responses((status = 200, body = [ModelEntry])))]
async fn list_models(State(s): AppStateRef) -> Result<Json<Vec<ModelEntry>>, ApiError> {
    blocking(move || Ok(Json(s.registry.list()?))).await
}

/// A GGUF model's bytes, for the browser to run it (Range requests, ETag = its SHA-256).
#[utoipa::path(get, path = "/api/models/{id}/file",
    params(("id" = String, Path, description = "a model id from /api/models")),
    responses((status = 200, description = "the GGUF file"), (status = 206, description = "a range of it"),
        (status = 304, description = "unchanged (If-None-Match)"), (status = 404, body = ErrorBody)))]
async fn model_file(
    State(s): AppStateRef,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (path, etag) = blocking(move || {
        let entry = s.registry.find(&id)?;
        if entry.format != Format::Gguf {
            return Err(ApiError::not_found(format!(
                "`{id}` is a directory model; its files are at /api/models/{id}/files/NAME: {}",
                entry.files.join(", ")
            )));
        }
        let path = match &entry.location {
            Location::Builtin(m) => {
                ensure_builtin(&m.artifact(), m.alias(), s.registry.cache(), false)?
            }
            Location::Path(p) => p.clone(),
        };
        let etag = match &entry.sha256 {
            Some(sha) => sha.clone(),
            None => model_fingerprint(&s.store, &s.registry, &entry)
                .map_err(|e| unreadable_model(&id, &e))?["sha256"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        Ok((path, format!("\"{etag}\"")))
    })
    .await?;
    Ok(serve_file(path, Some(etag), req).await)
}

/// One file of a directory model (config.json, tokenizer.json, safetensors shards).
#[utoipa::path(get, path = "/api/models/{id}/files/{name}",
    params(("id" = String, Path), ("name" = String, Path, description = "a file listed in the model's `files`")),
    responses((status = 200, description = "the file"), (status = 206, description = "a range of it"),
        (status = 404, body = ErrorBody)))]
async fn model_dir_file(
    State(s): AppStateRef,
    Path((id, name)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let path = blocking(move || {
        let entry = s.registry.find(&id)?;
        if !valid_id(&name) || !entry.files.contains(&name) {
            return Err(ApiError::not_found(format!(
                "model `{id}` has no file `{name}`; it has: {}",
                entry.files.join(", ")
            )));
        }
        match &entry.location {
            Location::Path(p) => Ok(p.join(&name)),
            _ => Err(ApiError::not_found(format!("no file `{name}` for `{id}`"))),
        }
    })
    .await?;
    // Weak: size and modification time stand for the bytes.
    let etag = crate::model::source::size_and_mtime(&path)
        .ok()
        .map(|(size, mtime)| format!("W/\"{size:x}-{mtime:x}\""));
    Ok(serve_file(path, etag, req).await)
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || bare(t) == bare(etag))
}

/// A file with Content-Length, Range and Last-Modified (tower-http), plus an ETag.
async fn serve_file(path: PathBuf, etag: Option<String>, req: Request) -> Response {
    if let Some(tag) = &etag
        && etag_matches(req.headers(), tag)
    {
        let mut res = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(tag) {
            res.headers_mut().insert(header::ETAG, v);
        }
        return res;
    }
    let Ok(mut res) = ServeFile::new(&path).oneshot(req).await;
    if let Some(tag) = etag
        && let Ok(v) = HeaderValue::from_str(&tag)
        && res.status().is_success()
    {
        res.headers_mut().insert(header::ETAG, v);
    }
    res.map(Body::new)
}

/// Every job kind and its flags (the CLI subcommand's, minus those the server sets).
#[utoipa::path(get, path = "/api/jobs/kinds", responses((status = 200, body = [KindInfo])))]
async fn job_kinds(State(s): AppStateRef) -> Json<Vec<KindInfo>> {
    Json(s.kinds.clone())
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobCreated {
    pub id: String,
    pub state: String,
    /// Server-Sent Events of the job.
    pub events_url: String,
    pub status_url: String,
    /// The command line it corresponds to (inline prompts and texts shown by size).
    pub argv: Vec<String>,
    /// Deletes the job's result (`DELETE /api/results/{id}` with the header
    /// `X-Delete-Token`); given only here, once.
    pub delete_token: String,
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull(_) => ApiError {
            retry_after: Some(30),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        },
        SubmitError::Internal(e) => e.into(),
    }
}

/// Queues a job. 202 with its id; 422 for invalid parameters, 413 over a limit, 503 (with
/// Retry-After) when the queue is full.
#[utoipa::path(post, path = "/api/jobs", request_body = JobRequest,
    responses((status = 202, body = JobCreated), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn submit_job(
    State(s): AppStateRef,
    body: Result<Json<JobRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<JobCreated>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let created = blocking(move || submit(&s, req)).await?;
    Ok((StatusCode::ACCEPTED, Json(created)))
}

/// Prepares and queues `req` as `POST /api/jobs` does; blocking (it may read a model).
///
/// # Errors
///
/// What `POST /api/jobs` answers with: 422, 413, 503 and internal errors.
pub fn submit(s: &AppState, req: JobRequest) -> Result<JobCreated, ApiError> {
    s.jobs.check_room().map_err(submit_error)?;
    let (id, dir) = s.jobs.new_dir()?;
    let cx = Context {
        kinds: &s.kinds,
        registry: &s.registry,
        store: &s.store,
        limits: &s.limits,
        backend: s.backend,
    };
    let prepared = match request::prepare(&req, &cx, &dir) {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(match e {
                RequestError::Invalid(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
                RequestError::TooLarge(m) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, m),
                RequestError::Model(LookupError::Io(e)) | RequestError::Internal(e) => e.into(),
                RequestError::Model(e) => {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
                }
            });
        }
    };
    let argv = prepared.argv.clone();
    let delete_token = super::new_id();
    let job = s
        .jobs
        .submit(id, dir, req, prepared, sha256_hex(&delete_token))
        .map_err(submit_error)?;
    Ok(JobCreated {
        events_url: format!("/api/jobs/{}/events", job.id),
        status_url: format!("/api/jobs/{}", job.id),
        state: job.state().to_owned(),
        id: job.id.clone(),
        argv,
        delete_token,
    })
}

/// The direction the Playground opens with: the `--quick-direction` model's, found on the
/// built-in prompt sets by a `directions` job the server submits when it starts.
#[utoipa::path(get, path = "/api/quick-direction",
    responses((status = 200, body = QuickDirectionStatus)))]
async fn quick_direction(State(s): AppStateRef) -> Result<Json<QuickDirectionStatus>, ApiError> {
    blocking(move || Ok(Json(s.quick_direction.status(&s)?))).await
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobStatus {
    #[serde(flatten)]
    pub record: JobRecord,
    /// The newest event, while the server that ran the job is up.
    pub last_event: Option<JobEvent>,
    pub events_url: String,
}

/// A job as recorded, with its newest event while this server runs it.
fn job_status_of(s: &AppState, id: &str) -> Result<JobStatus, ApiError> {
    if !is_generated_id(id) {
        return Err(ApiError::bad_id(id));
    }
    let record = s
        .store
        .job(id)?
        .ok_or_else(|| ApiError::not_found(format!("no job `{id}`")))?;
    Ok(JobStatus {
        last_event: s.jobs.get(id).and_then(|j| j.events.last()),
        events_url: format!("/api/jobs/{id}/events"),
        record,
    })
}

/// A job's state (queued, running, succeeded, failed, cancelled) and result id.
#[utoipa::path(get, path = "/api/jobs/{id}", params(("id" = String, Path)),
    responses((status = 200, body = JobStatus), (status = 404, body = ErrorBody)))]
async fn job_status(
    State(s): AppStateRef,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    blocking(move || Ok(Json(job_status_of(&s, &id)?))).await
}

/// Cancels a queued or running job (it stops at its next progress report). 409 when it has
/// finished.
#[utoipa::path(delete, path = "/api/jobs/{id}", params(("id" = String, Path)),
    responses((status = 202, body = JobStatus), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn cancel_job(
    State(s): AppStateRef,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobStatus>), ApiError> {
    blocking(move || {
        let before = job_status_of(&s, &id)?;
        let cancelled = s.jobs.get(&id).is_some_and(|job| s.jobs.cancel(&job));
        if !cancelled {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("job `{id}` has finished ({})", before.record.state),
            ));
        }
        Ok((StatusCode::ACCEPTED, Json(job_status_of(&s, &id)?)))
    })
    .await
}

fn sse_event(index: usize, event: &JobEvent) -> Event {
    Event::default()
        .id(index.to_string())
        .event(event.name())
        .json_data(event)
        .unwrap_or_else(|_| Event::default().event("failed").data("unencodable event"))
}

/// The job's events as Server-Sent Events, from the first (or after `Last-Event-ID`) until its
/// final event: `queued`, `started`, `progress` and `token`, then `succeeded`, `failed` or
/// `cancelled`. Each event's data is a JSON [`JobEvent`].
#[utoipa::path(get, path = "/api/jobs/{id}/events", params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of JobEvent", content_type = "text/event-stream"),
        (status = 404, body = ErrorBody)))]
async fn job_events(
    State(s): AppStateRef,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // EventSource resends the id it saw last; an id past any event (u64::MAX) resumes past
    // the end instead of wrapping round to the start.
    let start = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |i| {
            usize::try_from(i)
                .ok()
                .and_then(|i| i.checked_add(1))
                .unwrap_or(usize::MAX)
        });
    let s2 = s.clone();
    let id2 = id.clone();
    let record = blocking(move || job_status_of(&s2, &id2)).await?.record;
    let live = s.jobs.get(&id);
    // A job of an earlier server process: only how it ended is known.
    let past = match (&live, record.state.as_str()) {
        (None, "succeeded") => record
            .result_id
            .clone()
            .map(|result_id| JobEvent::Succeeded {
                share_url: format!("/r/{result_id}"),
                result_id,
            }),
        (None, "cancelled") => Some(JobEvent::Cancelled),
        (None, _) => Some(JobEvent::Failed {
            error: record.error.clone().unwrap_or_default(),
            result_id: record.result_id.clone(),
        }),
        (Some(_), _) => None,
    };
    let log = live.map(|j| j.events.clone());
    let rx = log.as_ref().map(|l| l.subscribe());
    let events = stream::unfold(
        (log, rx, past, start, false),
        |(log, mut rx, mut past, next, finished)| async move {
            if finished {
                return None;
            }
            if let Some(event) = past.take() {
                return Some((Ok(sse_event(0, &event)), (log, rx, None, next, true)));
            }
            let (l, r) = (log.as_ref()?, rx.as_mut()?);
            loop {
                if let Some(event) = l.get(next) {
                    let fin = event.is_final();
                    return Some((Ok(sse_event(next, &event)), (log, rx, None, next + 1, fin)));
                }
                // Resumed after the final event: nothing more will come.
                if l.last().is_some_and(|e| e.is_final()) {
                    return None;
                }
                if r.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

fn immutable(mut res: Response) -> Response {
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    res
}

fn sha256_hex(token: &str) -> String {
    crate::model::fetch::hex(&Sha256::digest(token.as_bytes()))
}

/// What a lookup of result `id` found, or 404 (never stored) / 410 (removed, and why).
fn found<T>(id: &str, lookup: Lookup<T>, missing: impl FnOnce() -> String) -> Result<T, ApiError> {
    match lookup {
        Lookup::Found(t) => Ok(t),
        Lookup::Removed { reason, removed_at } => {
            let why = match reason.as_str() {
                "deleted" => "deleted by its owner".to_owned(),
                _ => "removed under this server's retention policy".to_owned(),
            };
            Err(ApiError::new(
                StatusCode::GONE,
                format!("result `{id}` was {why} on {removed_at}"),
            ))
        }
        Lookup::Missing => Err(ApiError::not_found(missing())),
    }
}

fn find_result(s: &AppState, id: &str) -> Result<StoredResult, ApiError> {
    if !is_generated_id(id) {
        return Err(ApiError::bad_id(id));
    }
    found(id, s.store.result(id)?, || format!("no result `{id}`"))
}

/// Deletes a result, its files, its job's record and any model it wrote, for whoever holds
/// its delete token (given once, when its job was submitted). Its share link then answers
/// 410 Gone.
#[utoipa::path(delete, path = "/api/results/{id}", params(("id" = String, Path),
        ("X-Delete-Token" = String, Header, description = "the job's `delete_token`")),
    responses((status = 204, description = "deleted"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
async fn delete_result(
    State(s): AppStateRef,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let token = headers
        .get("x-delete-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    blocking(move || {
        if !is_generated_id(&id) {
            return Err(ApiError::bad_id(&id));
        }
        let stored = found(&id, s.store.delete_token(&id)?, || {
            format!("no result `{id}`")
        })?;
        let matches = !token.is_empty()
            && stored.is_some_and(|hash| {
                access::same_secret(hash.as_bytes(), sha256_hex(&token).as_bytes())
            });
        if !matches {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "result `{id}` is deleted only with the delete token its job was given \
                     (header X-Delete-Token)"
                ),
            ));
        }
        retention::remove_result(&s.store, &s.registry, &id, Removal::Deleted)?;
        tracing::info!(result = %id, "deleted by its owner");
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// A finished result: inputs, model fingerprint, parameters, every report (metrics, plot
/// data, completions) and its files. Never changes.
#[utoipa::path(get, path = "/api/results/{id}", params(("id" = String, Path)),
    responses((status = 200, body = StoredResult), (status = 404, body = ErrorBody)))]
async fn get_result(State(s): AppStateRef, Path(id): Path<String>) -> Result<Response, ApiError> {
    blocking(move || Ok(immutable(Json(find_result(&s, &id)?).into_response()))).await
}

fn media_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// One file of a result (a direction's safetensors, a figure).
#[utoipa::path(get, path = "/api/results/{id}/files/{name}", params(("id" = String, Path), ("name" = String, Path)),
    responses((status = 200, description = "the file"), (status = 404, body = ErrorBody)))]
async fn result_file(
    State(s): AppStateRef,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    blocking(move || {
        if !is_generated_id(&id) {
            return Err(ApiError::bad_id(&id));
        }
        let bytes = found(&id, s.store.result_file(&id, &name)?, || {
            format!("result `{id}` has no file `{name}`")
        })?;
        Ok(immutable(
            ([(header::CONTENT_TYPE, media_type(&name))], bytes).into_response(),
        ))
    })
    .await
}

/// The result as a zip: `result.json` (what was run, on which model), every report as its
/// JSON file, and every file (safetensors, figures).
#[utoipa::path(get, path = "/api/results/{id}/export", params(("id" = String, Path)),
    responses((status = 200, description = "application/zip"), (status = 404, body = ErrorBody)))]
async fn export_result(
    State(s): AppStateRef,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    blocking(move || {
        let result = find_result(&s, &id)?;
        let files = s.store.result_files(&id)?;
        let zip = export_zip(&result, &files)?;
        Ok(immutable(
            (
                [
                    (header::CONTENT_TYPE, "application/zip".to_owned()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"refusal-lens-{id}.zip\""),
                    ),
                ],
                zip,
            )
                .into_response(),
        ))
    })
    .await
}

fn export_zip(result: &StoredResult, files: &[(String, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    let meta = serde_json::json!({
        "id": result.id,
        "kind": result.kind,
        "created_at": result.created_at,
        "model": result.model,
        "request": result.request,
        "argv": result.argv,
    });
    zip.start_file("result.json", options)?;
    zip.write_all(serde_json::to_string_pretty(&meta)?.as_bytes())?;
    if let Some(reports) = result.report.as_object() {
        for (name, value) in reports {
            if value.is_object() || value.is_array() {
                zip.start_file(name.as_str(), options)?;
                zip.write_all(serde_json::to_string_pretty(value)?.as_bytes())?;
            }
        }
    }
    for (name, bytes) in files {
        zip.start_file(name.as_str(), options)?;
        zip.write_all(bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// The share link: the web app, opened on a stored result.
async fn share_page(State(s): AppStateRef, Path(id): Path<String>) -> Result<Response, ApiError> {
    let s2 = s.clone();
    let id2 = id.clone();
    blocking(move || find_result(&s2, &id2).map(drop)).await?;
    let Some(dir) = &s.web_dir else {
        return Ok(Html(format!(
            "<!doctype html><meta charset=utf-8><title>Refusal Lens result</title>\
             <p>This server runs without the web app; the result is at \
             <a href=\"/api/results/{id}\">/api/results/{id}</a>.</p>"
        ))
        .into_response());
    };
    let page = tokio::fs::read_to_string(dir.join("index.html"))
        .await
        .map_err(|e| anyhow::anyhow!("reading the web app's index.html: {e}"))?;
    // The app's relative URLs (./refusal-web.js) resolve from the root, not from /r/.
    let page = page.replacen("<head>", "<head>\n  <base href=\"/\">", 1);
    Ok(Html(page).into_response())
}
