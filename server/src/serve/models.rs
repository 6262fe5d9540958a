//! The models a server offers: the built-in aliases, the models in `--models-dir`, and the
//! models its jobs derived (compressed, repaired). Requests name a model by id, never by path;
//! an id is looked up in this listing, so no request can reach another file.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::model::builtin::BuiltinModel;
use crate::model::fetch::Cache;
use crate::model::hf_dir::check_model_dir;

/// Where a model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A built-in alias, downloaded from PyPI on first use.
    Builtin,
    /// A file or directory in `--models-dir`.
    ModelsDir,
    /// Written by a `compress` or `aird` job of this server.
    Derived,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Gguf,
    /// A Hugging Face directory: config.json, tokenizer.json, safetensors shards.
    Safetensors,
}

/// One model as `GET /api/models` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelEntry {
    pub id: String,
    pub origin: Origin,
    pub format: Format,
    /// Size of the weights (every file of a directory), in bytes.
    pub bytes: u64,
    pub description: Option<String>,
    /// False for a built-in model not downloaded yet (the first job or download fetches it).
    pub available: bool,
    /// The files of a directory model, each downloadable from `/api/models/{id}/files/{name}`;
    /// a GGUF model is the single file at `/api/models/{id}/file`.
    pub files: Vec<String>,
    /// SHA-256 of a GGUF file, when known without reading it.
    pub sha256: Option<String>,
    #[serde(skip)]
    pub location: Location,
}

/// Where a listed model lives.
#[derive(Debug, Clone)]
pub enum Location {
    Builtin(BuiltinModel),
    Path(PathBuf),
}

/// Why an id does not name a model.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("`{0}` is not a model id (letters, digits, `.`, `_` and `-`, not starting with `.`)")]
    Invalid(String),
    #[error("no model `{0}` (GET /api/models lists them)")]
    Unknown(String),
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

/// Whether `s` may be an id: one path component that cannot climb out of a directory.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The files of a Hugging Face directory a browser may download.
fn hf_files(dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = matches!(
            name.as_str(),
            "config.json" | "tokenizer.json" | "tokenizer_config.json" | "generation_config.json"
        ) || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json");
        if wanted && valid_id(&name) && entry.file_type()?.is_file() {
            files.push(name);
        }
    }
    files.sort();
    Ok(files)
}

pub struct Registry {
    cache: Cache,
    models_dir: Option<PathBuf>,
    derived_dir: PathBuf,
}

impl Registry {
    pub fn new(cache: Cache, models_dir: Option<PathBuf>, derived_dir: PathBuf) -> Registry {
        Registry {
            cache,
            models_dir,
            derived_dir,
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Where jobs put the models they write.
    pub fn derived_dir(&self) -> &Path {
        &self.derived_dir
    }

    /// Every directory models are read from or written to.
    pub fn directories(&self) -> impl Iterator<Item = &Path> {
        [
            Some(self.cache.root()),
            self.models_dir.as_deref(),
            Some(self.derived_dir.as_path()),
        ]
        .into_iter()
        .flatten()
    }

    /// Every model, built-in ones first.
    ///
    /// # Errors
    ///
    /// An unreadable models directory.
    pub fn list(&self) -> Result<Vec<ModelEntry>> {
        let mut out = Vec::new();
        for &m in BuiltinModel::all() {
            let artifact = m.artifact();
            let cached = self.cache.cached(&artifact)?;
            out.push(ModelEntry {
                id: m.alias().to_owned(),
                origin: Origin::Builtin,
                format: Format::Gguf,
                bytes: artifact.size,
                description: Some(m.description().to_owned()),
                available: cached.is_some(),
                files: Vec::new(),
                sha256: Some(artifact.sha256.to_owned()),
                location: Location::Builtin(m),
            });
        }
        let dirs = self
            .models_dir
            .iter()
            .map(|d| (d.as_path(), Origin::ModelsDir))
            .chain([(self.derived_dir.as_path(), Origin::Derived)]);
        for (dir, origin) in dirs {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut found = Vec::new();
            for entry in entries {
                let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !valid_id(&name) || out.iter().any(|m: &ModelEntry| m.id == name) {
                    continue;
                }
                let path = entry.path();
                // A dangling link or an unreadable entry is the operator's to fix; it must
                // not take the listing (and every job) down with it.
                let meta = match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!("skipping the model {name} in {}: {e}", dir.display());
                        continue;
                    }
                };
                if meta.is_file() && name.to_ascii_lowercase().ends_with(".gguf") {
                    found.push(ModelEntry {
                        id: name,
                        origin,
                        format: Format::Gguf,
                        bytes: meta.len(),
                        description: None,
                        available: true,
                        files: Vec::new(),
                        sha256: None,
                        location: Location::Path(path),
                    });
                } else if meta.is_dir() && check_model_dir(&path).is_ok() {
                    let files = match hf_files(&path) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!("skipping the model {name}: {e:#}");
                            continue;
                        }
                    };
                    let bytes = files
                        .iter()
                        .filter_map(|f| fs::metadata(path.join(f)).ok())
                        .map(|m| m.len())
                        .sum();
                    found.push(ModelEntry {
                        id: name,
                        origin,
                        format: Format::Safetensors,
                        bytes,
                        description: None,
                        available: true,
                        files,
                        sha256: None,
                        location: Location::Path(path),
                    });
                }
            }
            found.sort_by(|a, b| a.id.cmp(&b.id));
            out.extend(found);
        }
        Ok(out)
    }

    /// The model named `id`.
    ///
    /// # Errors
    ///
    /// [`LookupError::Invalid`] for anything that is not an id (`../x`, `a/b`), and
    /// [`LookupError::Unknown`] for an id not listed.
    pub fn find(&self, id: &str) -> Result<ModelEntry, LookupError> {
        if !valid_id(id) {
            return Err(LookupError::Invalid(id.to_owned()));
        }
        self.list()?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| LookupError::Unknown(id.to_owned()))
    }

    /// The `--model` value that makes a command load `entry`: the alias or the path.
    pub fn cli_value(entry: &ModelEntry) -> String {
        match &entry.location {
            Location::Builtin(m) => m.alias().to_owned(),
            Location::Path(p) => p.display().to_string(),
        }
    }
}
