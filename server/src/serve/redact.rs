//! No server path in what clients see. The CLI's errors name files by their full paths, which
//! is what a user at the terminal needs; a client of the server learns nothing from them but
//! the server's layout. So error answers, failed jobs' errors and the errors stored in results
//! keep file names only: a path under one of the server's directories (data, models, cache,
//! web app) loses that directory, and any other absolute path keeps its last component.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use regex::{Captures, Regex};
use serde_json::Value;

use super::api::ErrorBody;

/// Error answers are a line or a paragraph; anything longer is not one of ours to rewrite.
const MAX_ERROR_BODY: usize = 1 << 20;

/// An absolute path: a `/` at the start of the text or after a space, quote, bracket, `=` or
/// `,`, up to the next of those (or a `:` or `;`, which end a path in our messages).
static ABSOLUTE_PATH: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(^|[\s'"`(\[{=,])(/[^\s'"`)\]},:;=]*)"#).expect("a valid pattern")
});

/// Paths of the API itself (`/api/jobs/kinds`, `/r/ID`) that messages point clients to.
const API_PREFIXES: [&str; 2] = ["/api/", "/r/"];

/// Rewrites server paths in text shown to clients.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// The server's directories as written and as resolved, longest first, so that a
    /// directory inside another is stripped whole.
    roots: Vec<String>,
}

impl Redactor {
    /// Strips `dirs` (and the user's home) from paths.
    pub fn new<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> Redactor {
        let mut roots: Vec<String> = dirs
            .into_iter()
            .map(Path::to_path_buf)
            .chain(dirs::home_dir())
            .flat_map(|d| {
                let resolved = std::fs::canonicalize(&d).ok();
                [Some(d), resolved]
            })
            .flatten()
            .filter(|d: &PathBuf| d.is_absolute() && d.parent().is_some())
            .map(|d| d.display().to_string().trim_end_matches('/').to_owned())
            .collect();
        roots.sort_by_key(|r| std::cmp::Reverse(r.len()));
        roots.dedup();
        Redactor { roots }
    }

    /// `text` with each server directory stripped from the paths under it and every other
    /// absolute path cut to its file name.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for root in &self.roots {
            if text.contains(root.as_str()) {
                text = Cow::Owned(strip_root(&text, root));
            }
        }
        match ABSOLUTE_PATH.replace_all(&text, |c: &Captures<'_>| {
            let path = &c[2];
            let kept = if API_PREFIXES.iter().any(|p| path.starts_with(p)) {
                path
            } else {
                path.trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
            };
            format!("{}{kept}", &c[1])
        }) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => Cow::Owned(s),
        }
    }

    /// Every string in `value` that is a path under one of the server's directories (a
    /// report's model, an output it names), as its path below that directory. Other strings
    /// (prompts, completions) are a user's data and are left exactly as they are.
    pub fn redact_paths_in(&self, value: &mut Value) {
        match value {
            Value::String(text) => {
                let under = |root: &String| {
                    text.strip_prefix(root.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                };
                if let Some(root) = self.roots.iter().find(|r| under(r)) {
                    *text = strip_root(text, root);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_paths_in(v)),
            Value::Object(fields) => fields.values_mut().for_each(|v| self.redact_paths_in(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// `text` with `root/` removed before what lies under it, and `root` itself (a message about
/// the directory) replaced by its name.
fn strip_root(text: &str, root: &str) -> String {
    let name = root.rsplit('/').next().unwrap_or_default();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(root) {
        out.push_str(&rest[..at]);
        let after = &rest[at + root.len()..];
        match after.chars().next() {
            Some('/') => rest = &after[1..],
            // A longer name that merely starts like the root (`/data` in `/database`).
            Some(c) if c.is_alphanumeric() || c == '-' || c == '_' || c == '.' => {
                out.push_str(root);
                rest = after;
            }
            _ => {
                out.push_str(name);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Middleware: the `error` of every JSON error answer without server paths.
pub async fn redact_errors(State(redactor): State<Redactor>, res: Response) -> Response {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(res.status().is_client_error() || res.status().is_server_error()) || !is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_ERROR_BODY).await else {
        return (parts.status, "the error answer could not be read").into_response();
    };
    let Ok(ErrorBody { error }) = serde_json::from_slice(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let body = serde_json::to_vec(&ErrorBody {
        error: redactor.redact(&error).into_owned(),
    })
    .unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor {
            roots: vec!["/srv/my data/refusal-lens".into(), "/srv/models".into()],
        }
    }

    #[test]
    fn server_directories_are_stripped_and_other_paths_cut_to_their_name() {
        let r = redactor();
        assert_eq!(
            r.redact("reading /srv/models/sub/bad.gguf: truncated tensor `blk.0.attn_q`"),
            "reading sub/bad.gguf: truncated tensor `blk.0.attn_q`"
        );
        assert_eq!(
            r.redact("writing '/srv/my data/refusal-lens/jobs/ab12/out/eval.json' failed"),
            "writing 'jobs/ab12/out/eval.json' failed"
        );
        assert_eq!(
            r.redact("opening /home/someone/.cache/hf/model.safetensors (No such file)"),
            "opening model.safetensors (No such file)"
        );
        assert_eq!(
            r.redact("--models-dir /srv/models: gone"),
            "--models-dir models: gone"
        );
        assert_eq!(
            r.redact("/srv/modelsextra/x.gguf=/etc/passwd"),
            "x.gguf=passwd"
        );
    }

    #[test]
    fn reports_lose_server_paths_and_keep_user_text() {
        let mut report = serde_json::json!({
            "model": {"model": "/srv/models/tiny-llama", "n_layers": 2},
            "outputs": ["/srv/my data/refusal-lens/jobs/ab/out/x.gguf"],
            "prompt": "What is in /srv/models/secret?",
            "completion": "/etc/passwd holds users",
        });
        redactor().redact_paths_in(&mut report);
        assert_eq!(
            report,
            serde_json::json!({
                "model": {"model": "tiny-llama", "n_layers": 2},
                "outputs": ["jobs/ab/out/x.gguf"],
                "prompt": "What is in /srv/models/secret?",
                "completion": "/etc/passwd holds users",
            })
        );
    }

    #[test]
    fn api_paths_and_relative_paths_are_kept() {
        let r = redactor();
        let text = "see /api/jobs/kinds and /r/0123; model `tiny/one` in dir models/x, 3/4 done";
        assert_eq!(r.redact(text), text);
        assert!(matches!(r.redact("no path here"), Cow::Borrowed(_)));
    }
}
