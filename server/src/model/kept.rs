//! The server's model cache: the last model a job loaded stays in memory for the next job on
//! the same files and backend.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use refusal_core::model::WeightStorage;

use crate::device::Backend;
use crate::model::open::{Fingerprint, LoadedModel, fingerprint, open_as};
use crate::model::source::{ResolvedModel, size_and_mtime};

/// A model as loaded, and what identifies its files then.
struct Kept {
    key: (PathBuf, u64, i64, Backend, WeightStorage),
    loaded: LoadedModel,
    fingerprint: Option<Fingerprint>,
}

/// The model the last command loaded, when [`keep_last_model`] asked for it.
static LAST_MODEL: Mutex<Option<Kept>> = Mutex::new(None);
static KEEP_LAST_MODEL: AtomicBool = AtomicBool::new(false);

/// Keeps the most recently loaded model in memory, so that the next command on the same files
/// and backend starts at once (the server's jobs: a playground prompt on the 0.5B model is
/// about 5 s of loading and hashing otherwise). One model at most: loading another one drops
/// it first, so two large models are never held together.
pub fn keep_last_model() {
    KEEP_LAST_MODEL.store(true, Ordering::SeqCst);
}

/// Loads `resolved` (named `label` to the user) on `backend`, with a progress bar, and hashes
/// its files when `hash` asks for it; the kept model is reused when its files have not changed
/// since.
pub fn load(
    resolved: &ResolvedModel,
    label: &str,
    backend: Backend,
    storage: WeightStorage,
    hash: bool,
) -> Result<(LoadedModel, Option<Fingerprint>)> {
    let fingerprint =
        || fingerprint(resolved, label).with_context(|| format!("hashing model `{label}`"));
    let load = || -> Result<LoadedModel> {
        let device = backend.device()?;
        open_as(resolved, &device, storage, true)
            .with_context(|| format!("loading model `{label}`"))
    };
    if !KEEP_LAST_MODEL.load(Ordering::SeqCst) {
        let fp = hash.then(fingerprint).transpose()?;
        return Ok((load()?, fp));
    }
    let (ResolvedModel::Gguf(path) | ResolvedModel::HfDir(path)) = resolved;
    let (size, mtime) = size_and_mtime(path)?;
    let key = (path.clone(), size, mtime, backend, storage);
    // Held while loading, so concurrent jobs on one model load it once.
    let mut last = LAST_MODEL.lock().unwrap_or_else(|e| e.into_inner());
    match last.as_mut() {
        Some(kept) if kept.key == key => {
            if hash && kept.fingerprint.is_none() {
                kept.fingerprint = Some(fingerprint()?);
            }
        }
        _ => {
            *last = None;
            let fp = hash.then(fingerprint).transpose()?;
            *last = Some(Kept {
                key,
                loaded: load()?,
                fingerprint: fp,
            });
        }
    }
    let kept = last.as_ref().context("the model was just kept")?;
    let fp = kept.fingerprint.clone().map(|mut fp| {
        fp.model = label.to_owned();
        fp
    });
    Ok((kept.loaded.clone(), fp))
}
