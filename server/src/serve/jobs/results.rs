//! A finished job's outputs stored as a result: its reports and files in SQLite, a model it
//! wrote moved among the server's models (hidden until the result has committed, see
//! [`crate::serve::retention`]).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::Job;
use crate::model::open::fingerprint;
use crate::model::source::{ModelSource, ResolvedModel, size_and_mtime};
use crate::outputs::sync_dir;
use crate::serve::models::{Format, ModelEntry, Registry};
use crate::serve::new_id;
use crate::serve::redact::Redactor;
use crate::serve::request::Prepared;
use crate::serve::retention::{derived_name, pending_path, publish};
use crate::serve::store::{NewResult, Store};

/// Moves a written model among the server's models and stores everything else, without
/// server paths. With
/// `error` (the command failed), stores what it wrote, if anything, with the error.
pub(super) fn store_result(
    store: &Store,
    registry: &Registry,
    redactor: &Redactor,
    job: &Job,
    prepared: &Prepared,
    error: Option<&str>,
) -> Result<String> {
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
        report.insert("error".into(), redactor.redact(error).into_owned().into());
    }
    let mut derived = None;
    if job.kind.writes_model() {
        let gguf = prepared.model.format == Format::Gguf;
        let from = if gguf {
            prepared.out.clone()
        } else {
            out_dir.join("model")
        };
        let name = derived_name(&id, gguf);
        let to = pending_path(registry, &name);
        fs::create_dir_all(registry.derived_dir())?;
        fs::rename(&from, &to).with_context(|| format!("moving the job's model {name}"))?;
        sync_dir(registry.derived_dir())?;
        report.insert("model_id".into(), Value::String(name.clone()));
        derived = Some(name);
    }
    let mut report = Value::Object(report);
    redactor.redact_paths_in(&mut report);
    let model = model_fingerprint(store, registry, &prepared.model)?;
    let stored = NewResult {
        id: id.clone(),
        kind: job.kind.command().to_owned(),
        model,
        request: serde_json::to_value(&job.request)?,
        argv: prepared.argv.clone(),
        report,
        files,
        delete_token_sha256: job.delete_token_sha256.clone(),
    };
    if let Err(e) = store.insert_result(&stored) {
        if let Some(name) = derived {
            let pending = pending_path(registry, &name);
            let _ = fs::remove_file(&pending).or_else(|_| fs::remove_dir_all(&pending));
        }
        return Err(e);
    }
    if let Some(name) = derived {
        publish(registry, &name)?;
    }
    Ok(id)
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
