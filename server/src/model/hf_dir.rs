//! The layout of a Hugging Face model directory: the files it must hold and its safetensors
//! shards, checked before loading and after a download.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Name of the single-file safetensors weights in a model directory.
pub const SAFETENSORS_FILE: &str = "model.safetensors";

/// Name of the index that maps tensors to safetensors shards.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// The files every model directory needs besides its weights.
pub const REQUIRED_FILES: [&str; 2] = ["config.json", "tokenizer.json"];

/// Fails, naming every missing piece, unless `dir` holds a loadable
/// Hugging Face model: config, tokenizer and safetensors weights (one file,
/// or an index with all of its shards).
pub fn check_model_dir(dir: &Path) -> Result<()> {
    let mut missing: Vec<String> = REQUIRED_FILES
        .iter()
        .filter(|name| !dir.join(name).is_file())
        .map(|name| (*name).to_owned())
        .collect();
    if !dir.join(SAFETENSORS_FILE).is_file() {
        let index = dir.join(SAFETENSORS_INDEX);
        if index.is_file() {
            missing.extend(
                safetensors_shards(&index)?
                    .into_iter()
                    .filter(|shard| !dir.join(shard).is_file()),
            );
        } else {
            missing.push(format!(
                "{SAFETENSORS_FILE} (or {SAFETENSORS_INDEX} and its shards)"
            ));
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} is not a usable model directory: missing {}",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The shard file names listed in a `model.safetensors.index.json`.
pub fn safetensors_shards(index: &Path) -> Result<BTreeSet<String>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text =
        fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let parsed: Index = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a safetensors index", index.display()))?;
    let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
    // Shard names come from a downloaded file; refuse anything that would
    // point outside the model directory.
    if let Some(bad) = shards
        .iter()
        .find(|s| s.is_empty() || Path::new(s).components().count() != 1 || s.starts_with('.'))
    {
        bail!("{} names an unsafe shard path `{bad}`", index.display());
    }
    Ok(shards)
}
