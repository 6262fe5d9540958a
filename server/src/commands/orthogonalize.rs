//! `refusal-lens orthogonalize`: bake directional ablation into the weights (METHOD §5) and
//! export the edited model.
//!
//! A GGUF source gives a GGUF that keeps every untouched tensor in its original quantization
//! (the edited embedding, attention-output and down projections are F16, or F32 with
//! `--weights f32`, which keeps the edit exact). Safetensors output
//! is a Hugging Face directory: the weights as f32 plus config.json, and the tokenizer files
//! (copied from a Hugging Face source; from a GGUF source the tokenizer built from its
//! vocabulary is written as tokenizer.json).

use std::path::PathBuf;

use anyhow::Result;
use refusal_core::refusal::orthogonalize::{edited_weights, orthogonalize};

use crate::direction_file::DirectionFile;
use crate::model::saved::{DerivedModel, OutFormat, save};
use crate::model_args::ModelArgs;

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

pub fn run(args: &OrthogonalizeArgs) -> Result<()> {
    let direction = DirectionFile::read(&args.direction)?;
    let resolved = args.model.resolve()?;
    OutFormat::of(&args.out, &resolved)?;
    let loaded = args.model.load()?;
    let changed = edited_weights(loaded.llama.config());
    let edited = orthogonalize(loaded.llama, &direction.vector)?;
    let note = format!(
        "orthogonalized against the refusal direction of layer {} position {} (|r| = {:.4}) from {}",
        direction.meta.layer,
        direction.meta.position,
        direction.meta.norm,
        direction.meta.model.model
    );
    save(
        &DerivedModel {
            source: &resolved,
            model: &edited,
            text: &loaded.text,
            changed: &changed,
            packed: &[],
            note: ("edit", note.clone()),
        },
        &args.out,
    )?;
    println!("{note}\nwrote {}", args.out.display());
    Ok(())
}
