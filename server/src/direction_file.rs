//! A selected refusal direction on disk: `direction.safetensors` (the raw vector `r`, f32)
//! and `direction.json` beside it (layer, position, norm, the model it came from, scores).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use refusal_core::export::f32_safetensors;
use refusal_core::model::HostTensor;
pub use refusal_core::refusal::select::ChosenBy;
use refusal_core::runs::aird::GivenDirection;
use safetensors::{Dtype, SafeTensors};

use crate::model::open::Fingerprint;

const TENSOR: &str = "direction";

/// What `direction.json` records, for a model described by its fingerprint.
pub type DirectionMeta = refusal_core::runs::directions::DirectionMeta<Fingerprint>;

/// A direction and its description.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectionFile {
    pub vector: Vec<f32>,
    pub meta: DirectionMeta,
}

impl DirectionFile {
    /// The two files' contents: safetensors bytes and pretty JSON.
    pub fn to_bytes(&self) -> Result<(Vec<u8>, String)> {
        let tensor = HostTensor {
            shape: vec![self.vector.len()],
            data: self.vector.clone(),
        };
        let metadata = BTreeMap::from([
            ("layer".to_owned(), self.meta.layer.to_string()),
            ("position".to_owned(), self.meta.position.to_string()),
        ]);
        let st = f32_safetensors(vec![(TENSOR.to_owned(), tensor)], metadata)
            .context("serializing the direction")?;
        Ok((st, serde_json::to_string_pretty(&self.meta)?))
    }

    /// Reads a direction given as its directory, its `.safetensors` or its `.json`.
    pub fn read(path: &Path) -> Result<DirectionFile> {
        let (st_path, json_path) = paths(path);
        let st =
            std::fs::read(&st_path).with_context(|| format!("reading {}", st_path.display()))?;
        let json = std::fs::read(&json_path).with_context(|| {
            format!(
                "reading {} (written beside the direction)",
                json_path.display()
            )
        })?;
        DirectionFile::from_bytes(
            &st,
            &json,
            &st_path.display().to_string(),
            &json_path.display().to_string(),
        )
    }

    /// A direction from its two files' contents, each named in errors by `st_name` and
    /// `json_name`.
    pub fn from_bytes(
        st: &[u8],
        json: &[u8],
        st_name: &str,
        json_name: &str,
    ) -> Result<DirectionFile> {
        let tensor = f32_tensor(st, st_name, TENSOR)?;
        if tensor.shape.len() != 1 {
            bail!(
                "{st_name}: `{TENSOR}` must be 1-D, found shape {:?}",
                tensor.shape
            );
        }
        let vector = tensor.data;
        if vector.iter().any(|v| !v.is_finite()) {
            bail!("{st_name}: the direction has non-finite values");
        }
        let meta: DirectionMeta =
            serde_json::from_slice(json).with_context(|| format!("parsing {json_name}"))?;
        if meta.model.d_model != vector.len() {
            bail!(
                "{st_name}: the vector has {} values but the model it names has width {}",
                vector.len(),
                meta.model.d_model
            );
        }
        Ok(DirectionFile { vector, meta })
    }

    /// The direction as a run takes it.
    pub fn given(&self) -> GivenDirection {
        GivenDirection {
            vector: self.vector.clone(),
            layer: self.meta.layer,
            position: self.meta.position,
        }
    }
}

/// The f32 tensor `name` of the safetensors file at `path`, with its shape.
pub fn read_f32_tensor(path: &Path, name: &str) -> Result<HostTensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    f32_tensor(&bytes, &path.display().to_string(), name)
}

/// The f32 tensor `name` of the safetensors bytes of `file`, with its shape.
fn f32_tensor(bytes: &[u8], file: &str, name: &str) -> Result<HostTensor> {
    let tensors = SafeTensors::deserialize(bytes)
        .with_context(|| format!("{file} is not a safetensors file"))?;
    let view = tensors
        .tensor(name)
        .with_context(|| format!("{file} has no tensor `{name}`"))?;
    if view.dtype() != Dtype::F32 {
        bail!("{file}: `{name}` is {:?}, not f32", view.dtype());
    }
    Ok(HostTensor {
        shape: view.shape().to_vec(),
        data: view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    })
}

fn paths(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        return (
            path.join("direction.safetensors"),
            path.join("direction.json"),
        );
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => (path.with_extension("safetensors"), path.to_path_buf()),
        _ => (path.to_path_buf(), path.with_extension("json")),
    }
}

#[cfg(test)]
mod tests {
    use refusal_core::refusal::RefusalTokens;
    use refusal_core::refusal::refusal_tokens::TokenOrigin;
    use refusal_core::refusal::select::CandidateScore;

    use super::*;

    fn sample() -> DirectionFile {
        DirectionFile {
            vector: vec![0.5, -1.25, 3.0],
            meta: DirectionMeta {
                layer: 7,
                position: -1,
                norm: 3.29,
                model: Fingerprint {
                    model: "m".into(),
                    format: "gguf".into(),
                    architecture: "qwen2".into(),
                    n_layers: 24,
                    d_model: 3,
                    sha256: "ab".into(),
                },
                refusal_tokens: RefusalTokens {
                    ids: vec![40],
                    tokens: vec!["I".into()],
                    origin: TokenOrigin::User,
                },
                scores: CandidateScore {
                    layer: 7,
                    position: -1,
                    norm: 3.29,
                    bypass: -2.0,
                    induce: 1.0,
                    kl: 0.01,
                    separation: 3.0,
                    dropped: vec![],
                },
                chosen_by: ChosenBy::Selection,
            },
        }
    }

    #[test]
    fn a_direction_reads_back_from_its_directory_tensor_or_json() {
        let dir = tempfile::tempdir().unwrap();
        let (st, json) = sample().to_bytes().unwrap();
        std::fs::write(dir.path().join("direction.safetensors"), st).unwrap();
        std::fs::write(dir.path().join("direction.json"), json).unwrap();
        for path in [
            dir.path().to_path_buf(),
            dir.path().join("direction.safetensors"),
            dir.path().join("direction.json"),
        ] {
            assert_eq!(DirectionFile::read(&path).unwrap(), sample());
        }
    }

    #[test]
    fn inconsistent_or_missing_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = DirectionFile::read(dir.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains("direction.safetensors"),
            "{err:#}"
        );

        let mut wrong = sample();
        wrong.meta.model.d_model = 4;
        let (st, json) = wrong.to_bytes().unwrap();
        std::fs::write(dir.path().join("direction.safetensors"), st).unwrap();
        std::fs::write(dir.path().join("direction.json"), json).unwrap();
        let err = DirectionFile::read(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("width 4"), "{err:#}");
    }
}
