//! `refusal-lens orthogonalize`: bake directional ablation into the weights (METHOD §5) and
//! export the edited model.
//!
//! A GGUF source gives a GGUF that keeps every untouched tensor in its original quantization
//! (the edited embedding, attention-output and down projections are F32). Safetensors output
//! is a Hugging Face directory: the weights as f32 plus config.json, and the tokenizer files
//! (copied from a Hugging Face source; from a GGUF source the tokenizer built from its
//! vocabulary is written as tokenizer.json).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use refusal_core::export::{gguf_with_weights, hf_config_json, note_in_gguf, safetensors_bytes};
use refusal_core::refusal::orthogonalize::{edited_weights, orthogonalize};

use crate::direction_file::DirectionFile;
use crate::model_args::ModelArgs;
use crate::outputs::{StagedDir, parent_dir, write_atomic};
use crate::source::ResolvedModel;

#[derive(Debug, Clone, clap::Args)]
pub struct OrthogonalizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A direction written by `directions` (its directory, .safetensors or .json).
    #[arg(long)]
    pub direction: PathBuf,
    /// The edited model: FILE.gguf (GGUF sources) or DIR/model.safetensors (a Hugging Face
    /// directory is written around it).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutFormat {
    Gguf,
    Safetensors,
}

fn out_format(path: &Path) -> Result<OutFormat> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("gguf") => Ok(OutFormat::Gguf),
        Some("safetensors") => Ok(OutFormat::Safetensors),
        _ => bail!("--out {} must end in .gguf or .safetensors", path.display()),
    }
}

pub fn run(args: &OrthogonalizeArgs) -> Result<()> {
    let format = out_format(&args.out)?;
    let direction = DirectionFile::read(&args.direction)?;
    let resolved = args.model.resolve()?;
    if format == OutFormat::Gguf && !matches!(resolved, ResolvedModel::Gguf(_)) {
        bail!(
            "GGUF export keeps the source GGUF's metadata and tokenizer, so it needs a GGUF model; \
             write .safetensors for a Hugging Face model"
        );
    }
    let loaded = args.model.load()?;
    let text = loaded.text;
    let changed = edited_weights(loaded.llama.config());
    let edited = orthogonalize(loaded.llama, &direction.vector)?;
    let note = format!(
        "orthogonalized against the refusal direction of layer {} position {} (|r| = {:.4}) from {}",
        direction.meta.layer,
        direction.meta.position,
        direction.meta.norm,
        direction.meta.model.model
    );
    match (format, &resolved) {
        (OutFormat::Gguf, ResolvedModel::Gguf(source)) => {
            let file = std::fs::File::open(source)
                .with_context(|| format!("opening {}", source.display()))?;
            // SAFETY: read-only map of the model file, as everywhere else in the loader.
            let bytes = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("mapping {}", source.display()))?;
            let parsed = refusal_core::load::gguf::parse(&source.display().to_string(), &bytes)?;
            let mut writer = gguf_with_weights(&parsed, &bytes, &edited, &changed)?;
            note_in_gguf(&mut writer, "edit", &note);
            write_atomic(&args.out, |f| {
                let mut w = std::io::BufWriter::new(f);
                writer.write_to(&mut w)?;
                std::io::Write::flush(&mut w)?;
                Ok(())
            })?;
        }
        (OutFormat::Safetensors, _) => {
            let dir = parent_dir(&args.out);
            let name = args
                .out
                .file_name()
                .and_then(|n| n.to_str())
                .context("--out has no file name")?;
            let mut staged = StagedDir::new(&dir)?;
            staged.write(
                name,
                safetensors_bytes(
                    &edited,
                    BTreeMap::from([("refusal_lens.edit".to_owned(), note.clone())]),
                )?,
            )?;
            staged.write(
                "config.json",
                serde_json::to_string_pretty(&hf_config_json(edited.config()))?,
            )?;
            match &resolved {
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
        }
        (OutFormat::Gguf, ResolvedModel::HfDir(_)) => unreachable!("refused above"),
    }
    println!("{note}\nwrote {}", args.out.display());
    Ok(())
}
