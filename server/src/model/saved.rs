//! Writing an edited or compressed model where the user asked: a GGUF that keeps the source
//! GGUF's metadata, tokenizer and untouched tensors, or a Hugging Face directory (safetensors
//! with each weight in the type the model holds it in, config.json and the tokenizer files).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use refusal_core::compress::PackedWeight;
use refusal_core::export::{
    gguf_with_weights, hf_config_json, note_in_gguf, replaced_type, safetensors_bytes,
};
use refusal_core::load::TextAssets;
use refusal_core::model::{Llama, WeightName};

use crate::model::source::ResolvedModel;
use crate::outputs::{StagedDir, parent_dir, write_atomic};

/// What a model is written as, from the file name the user gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFormat {
    Gguf,
    Safetensors,
}

impl OutFormat {
    /// `.gguf` or `.safetensors`; a GGUF needs a GGUF source (its metadata and tokenizer are
    /// kept).
    ///
    /// # Errors
    ///
    /// Any other extension, or GGUF output from a Hugging Face source.
    pub fn of(path: &Path, source: &ResolvedModel) -> Result<OutFormat> {
        let format = match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("gguf") => OutFormat::Gguf,
            Some("safetensors") => OutFormat::Safetensors,
            _ => bail!("--out {} must end in .gguf or .safetensors", path.display()),
        };
        if format == OutFormat::Gguf && !matches!(source, ResolvedModel::Gguf(_)) {
            bail!(
                "GGUF export keeps the source GGUF's metadata and tokenizer, so it needs a GGUF \
                 model; write .safetensors for a Hugging Face model"
            );
        }
        Ok(format)
    }
}

/// A model derived from `source`, what changed in it, and a note recorded in the file.
pub struct DerivedModel<'a> {
    pub source: &'a ResolvedModel,
    pub model: &'a Llama,
    pub text: &'a TextAssets,
    /// Weights whose values changed, written in full (GGUF output: 16-bit where the model
    /// keeps them compact, f32 where it holds them in f32; see [`replaced_type`]).
    pub changed: &'a [WeightName],
    /// Weights already packed in a GGUF block type (GGUF output).
    pub packed: &'a [PackedWeight],
    /// `refusal_lens.{key}` in the file's metadata.
    pub note: (&'a str, String),
}

/// Writes `derived` to `out` (staged, then renamed, so a failure leaves nothing behind).
///
/// # Errors
///
/// Bad output names (see [`OutFormat::of`]) and I/O errors.
pub fn save(derived: &DerivedModel<'_>, out: &Path) -> Result<()> {
    let (key, note) = (&derived.note.0, &derived.note.1);
    match (OutFormat::of(out, derived.source)?, derived.source) {
        (OutFormat::Gguf, ResolvedModel::Gguf(source)) => {
            let file = std::fs::File::open(source)
                .with_context(|| format!("opening {}", source.display()))?;
            // SAFETY: read-only map of the model file, as everywhere else in the loader.
            let bytes = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("mapping {}", source.display()))?;
            let parsed = refusal_core::load::gguf::parse(&source.display().to_string(), &bytes)?;
            let mut writer = gguf_with_weights(
                &parsed,
                &bytes,
                derived.model,
                derived.changed,
                derived.packed,
            )?;
            note_in_gguf(&mut writer, key, note);
            if !derived.changed.is_empty() {
                eprintln!(
                    "changed tensors written as {}",
                    written_types(derived.model, derived.changed)
                );
            }
            write_atomic(out, |f| {
                let mut w = std::io::BufWriter::new(f);
                writer.write_to(&mut w)?;
                std::io::Write::flush(&mut w)?;
                Ok(())
            })
        }
        (OutFormat::Safetensors, source) => {
            save_hf_dir(derived, source, out, &format!("refusal_lens.{key}"), note)
        }
        (OutFormat::Gguf, ResolvedModel::HfDir(_)) => unreachable!("refused by OutFormat::of"),
    }
}

/// `F16 x49`, or `F16 x48, F32 x1`: the types [`replaced_type`] writes `changed` in.
fn written_types(model: &Llama, changed: &[WeightName]) -> String {
    let mut counts = BTreeMap::new();
    for &name in changed {
        *counts.entry(replaced_type(model, name).name()).or_insert(0) += 1;
    }
    counts
        .into_iter()
        .map(|(ty, n)| format!("{ty} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn save_hf_dir(
    derived: &DerivedModel<'_>,
    source: &ResolvedModel,
    out: &Path,
    key: &str,
    note: &str,
) -> Result<()> {
    let dir = parent_dir(out);
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .context("--out has no file name")?;
    let mut staged = StagedDir::new(&dir)?;
    staged.write(
        name,
        safetensors_bytes(
            derived.model,
            BTreeMap::from([(key.to_owned(), note.to_owned())]),
        )?,
    )?;
    staged.write(
        "config.json",
        serde_json::to_string_pretty(&hf_config_json(derived.model.config())?)?,
    )?;
    match source {
        ResolvedModel::HfDir(src) => {
            for f in [
                "tokenizer.json",
                "tokenizer_config.json",
                "chat_template.jinja",
                "generation_config.json",
            ] {
                if src.join(f).exists() {
                    let bytes = std::fs::read(src.join(f))
                        .with_context(|| format!("reading {}", src.join(f).display()))?;
                    staged.write(f, bytes)?;
                }
            }
        }
        ResolvedModel::Gguf(_) => {
            let text = derived.text;
            staged.write("tokenizer.json", text.tokenizer.to_json()?)?;
            staged.write(
                "tokenizer_config.json",
                serde_json::to_string_pretty(&serde_json::json!({
                    "bos_token": text.tokenizer.bos_token(),
                    "eos_token": text.tokenizer.eos_token(),
                    "add_bos_token": text.tokenizer.add_bos(),
                    "chat_template": text.chat.source(),
                }))?,
            )?;
        }
    }
    staged.commit()?;
    Ok(())
}
