//! What the server keeps, and for how long: stored results, the records of the jobs that made
//! them and the models those jobs wrote go after `--keep-days`, or, oldest first, once they
//! take more than `--keep-mib` together (the newest result always stays). A result is also
//! removed by whoever holds its delete token. Swept at start, after every stored result and
//! every hour. Event logs live in memory only (the newest finished jobs' ones).
//!
//! A derived model is named after its result (`{id}.gguf` or a directory `{id}`). It is moved
//! in under a hidden name, the result is committed, then it is renamed: a crash between the
//! two leaves a hidden entry, which the sweep at start finishes or removes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use super::is_generated_id;
use super::models::Registry;
use super::store::{Removal, Store};
use crate::outputs::sync_dir;

/// How long and how much the server keeps.
#[derive(Debug, Clone, clap::Args)]
pub struct Retention {
    /// Days a result is kept, with its job's record and any model it wrote (0: until its
    /// owner deletes it).
    #[arg(long, default_value_t = 30)]
    pub keep_days: u64,
    /// Most MiB that results, job records and derived models may take together; past it the
    /// oldest results go first, and the newest always stays (0: no limit).
    #[arg(long, default_value_t = 8192)]
    pub keep_mib: u64,
}

/// What a sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub results: usize,
    pub jobs: usize,
    /// Derived models left without a result.
    pub orphans: usize,
}

/// The prefix of a derived model moved in before its result committed.
const PENDING: &str = ".pending-";

/// The name of the model a job writes for result `id`.
pub fn derived_name(id: &str, gguf: bool) -> String {
    if gguf {
        format!("{id}.gguf")
    } else {
        id.to_owned()
    }
}

/// Where a derived model waits for its result to commit.
pub fn pending_path(registry: &Registry, name: &str) -> PathBuf {
    registry.derived_dir().join(format!("{PENDING}{name}"))
}

/// Renames a pending derived model to its name, durably.
///
/// # Errors
///
/// I/O errors.
pub fn publish(registry: &Registry, name: &str) -> Result<()> {
    let dir = registry.derived_dir();
    fs::rename(pending_path(registry, name), dir.join(name))
        .with_context(|| format!("publishing the derived model {name}"))?;
    sync_dir(dir)
}

/// The result id a derived model's name belongs to.
fn result_of(name: &str) -> Option<&str> {
    let id = name.strip_suffix(".gguf").unwrap_or(name);
    is_generated_id(id).then_some(id)
}

fn remove_path(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .with_context(|| format!("removing {}", path.display()))
}

fn bytes_of(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| bytes_of(&e.path()))
        .sum()
}

/// The derived model of result `id`, if it wrote one.
fn derived_model(registry: &Registry, id: &str) -> Option<PathBuf> {
    [true, false]
        .into_iter()
        .map(|gguf| registry.derived_dir().join(derived_name(id, gguf)))
        .find(|p| p.exists())
}

/// Removes result `id`, its job records and the model it wrote. False when no such result
/// is stored.
///
/// # Errors
///
/// Database and I/O errors.
pub fn remove_result(store: &Store, registry: &Registry, id: &str, why: Removal) -> Result<bool> {
    if !store.remove_result(id, why)? {
        return Ok(false);
    }
    // A crash here leaves the model without its result; the next sweep removes it.
    if let Some(path) = derived_model(registry, id) {
        remove_path(&path)?;
        sync_dir(registry.derived_dir())?;
    }
    Ok(true)
}

impl Retention {
    fn cutoff(&self) -> Option<String> {
        let age = Duration::from_secs(self.keep_days.checked_mul(86_400)?);
        let when = SystemTime::now().checked_sub(age)?;
        Some(humantime::format_rfc3339_seconds(when).to_string())
    }

    /// Removes what is past the limits, and derived models whose result is gone. With
    /// `starting` (no job is storing a result yet), pending derived models are finished or
    /// removed too.
    ///
    /// # Errors
    ///
    /// Database and I/O errors.
    pub fn sweep(&self, store: &Store, registry: &Registry, starting: bool) -> Result<Swept> {
        let mut swept = Swept {
            orphans: sweep_orphans(store, registry, starting)?,
            ..Swept::default()
        };
        let mut results = store.result_sizes()?;
        if self.keep_days > 0
            && let Some(cutoff) = self.cutoff()
        {
            let expired = results.partition_point(|r| r.created_at < cutoff);
            for r in results.drain(..expired) {
                swept.results +=
                    usize::from(remove_result(store, registry, &r.id, Removal::Expired)?);
            }
            swept.jobs += store.remove_resultless_jobs(Some(&cutoff))?;
        }
        if self.keep_mib > 0 {
            let limit = self.keep_mib.saturating_mul(1 << 20);
            let models: Vec<u64> = results
                .iter()
                .map(|r| derived_model(registry, &r.id).map_or(0, |p| bytes_of(&p)))
                .collect();
            let mut total: u64 = results.iter().map(|r| r.bytes).sum::<u64>()
                + models.iter().sum::<u64>()
                + store.resultless_job_bytes()?;
            let newest = results.len().saturating_sub(1);
            for (r, model) in results.iter().zip(&models).take(newest) {
                if total <= limit {
                    break;
                }
                swept.results +=
                    usize::from(remove_result(store, registry, &r.id, Removal::Expired)?);
                total = total.saturating_sub(r.bytes + model);
            }
            while total > limit {
                let removed = store.remove_resultless_jobs(None)?;
                if removed == 0 {
                    break;
                }
                swept.jobs += removed;
                let left = store.resultless_job_bytes()?;
                total = store.result_sizes()?.iter().map(|r| r.bytes).sum::<u64>() + left;
            }
        }
        if swept != Swept::default() {
            store.release_free_pages()?;
        }
        Ok(swept)
    }
}

/// Removes derived models whose result is not stored; at start, also finishes (or removes)
/// the ones a crash left pending.
fn sweep_orphans(store: &Store, registry: &Registry, starting: bool) -> Result<usize> {
    let dir = registry.derived_dir();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let (pending, final_name) = match name.strip_prefix(PENDING) {
            Some(rest) => (true, rest),
            None => (false, name.as_str()),
        };
        let Some(id) = result_of(final_name) else {
            continue;
        };
        if pending && !starting {
            continue;
        }
        if store.has_result(id)? {
            if pending {
                publish(registry, final_name)?;
            }
        } else {
            remove_path(&dir.join(&name))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::fetch::Cache;
    use crate::serve::new_id;
    use crate::serve::store::{Lookup, NewResult};

    fn result(store: &Store, file_bytes: usize) -> String {
        let id = new_id();
        store
            .insert_result(&NewResult {
                id: id.clone(),
                kind: "directions".into(),
                model: json!({}),
                request: json!({}),
                argv: Vec::new(),
                report: json!({}),
                files: vec![("a.bin".into(), vec![7; file_bytes])],
                delete_token_sha256: String::new(),
            })
            .unwrap();
        id
    }

    #[test]
    fn past_the_size_limit_the_oldest_go_and_orphans_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(&root.path().join("db.sqlite3")).unwrap();
        let registry = Registry::new(
            Cache::new(root.path().join("cache")),
            None,
            root.path().join("models"),
        );
        fs::create_dir_all(registry.derived_dir()).unwrap();
        let ids: Vec<String> = (0..3).map(|_| result(&store, 600_000)).collect();
        // A model a removed result left, one whose result committed before a crash, and one
        // whose result never did.
        let orphan = derived_name(&new_id(), true);
        fs::write(registry.derived_dir().join(&orphan), b"x").unwrap();
        let committed = derived_name(&ids[2], true);
        fs::write(pending_path(&registry, &committed), b"x").unwrap();
        let uncommitted = derived_name(&new_id(), false);
        fs::create_dir_all(pending_path(&registry, &uncommitted)).unwrap();

        let retention = Retention {
            keep_days: 30,
            keep_mib: 1,
        };
        let swept = retention.sweep(&store, &registry, true).unwrap();
        assert_eq!((swept.results, swept.orphans), (2, 2), "{swept:?}");
        let kept: Vec<&String> = ids
            .iter()
            .filter(|id| store.has_result(id).unwrap())
            .collect();
        assert_eq!(kept.len(), 1, "the newest stays");
        for id in ids.iter().filter(|id| !kept.contains(id)) {
            assert!(matches!(
                store.result(id).unwrap(),
                Lookup::Removed { reason, .. } if reason == "expired"
            ));
        }
        let mut left: Vec<String> = fs::read_dir(registry.derived_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // The pending model of a stored result is published (if that result survived).
        let expected = if kept[0] == &ids[2] {
            vec![committed]
        } else {
            Vec::new()
        };
        assert_eq!(left, expected);
        // Under the limit, nothing more goes.
        assert_eq!(
            retention.sweep(&store, &registry, false).unwrap(),
            Swept::default()
        );
    }
}
