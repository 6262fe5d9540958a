//! `refusal-lens control-vector`: a direction in llama.cpp's control-vector GGUF format, so
//! that llama.cpp can steer with it (`--control-vector-scaled FILE COEFF`).
//!
//! llama.cpp adds tensor `direction.k` to the output of block `k` (0-based) at every position,
//! and refuses `k = 0`. Our activation addition at layer `l` edits block `l`'s input, which is
//! block `l - 1`'s output: the tensor is `direction.{l-1}`, so `l` must be at least 2.

use std::path::PathBuf;

use anyhow::{Result, bail};
use refusal_core::gguf::{GgufWriter, MetadataValue};

use crate::direction_file::DirectionFile;
use crate::outputs::write_atomic;

#[derive(Debug, Clone, clap::Args)]
pub struct ControlVectorArgs {
    /// A direction written by `directions` (its directory, .safetensors or .json).
    #[arg(long)]
    pub direction: PathBuf,
    /// Layer whose input receives the vector (default: the direction's layer).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Output file (.gguf).
    #[arg(long)]
    pub out: PathBuf,
}

/// The control-vector file for adding `vector` to the input of block `layer`.
pub fn control_vector(
    vector: &[f32],
    layer: usize,
    model_hint: &str,
    n_layers: usize,
) -> Result<GgufWriter<'static>> {
    if layer < 2 {
        bail!(
            "llama.cpp control vectors act on block outputs from block 1 on, i.e. on the inputs of \
             layers >= 2; layer {layer} cannot be expressed"
        );
    }
    if layer >= n_layers {
        bail!("layer {layer} does not exist (the model has {n_layers} layers)");
    }
    let mut w = GgufWriter::new();
    w.set(
        "general.architecture",
        MetadataValue::String("controlvector".into()),
    );
    w.set(
        "controlvector.model_hint",
        MetadataValue::String(model_hint.into()),
    );
    w.set("controlvector.layer_count", MetadataValue::U32(1));
    w.tensor_f32(&format!("direction.{}", layer - 1), &[vector.len()], vector)?;
    Ok(w)
}

pub fn run(args: &ControlVectorArgs) -> Result<()> {
    let direction = DirectionFile::read(&args.direction)?;
    let layer = args.layer.unwrap_or(direction.meta.layer);
    let writer = control_vector(
        &direction.vector,
        layer,
        &direction.meta.model.architecture,
        direction.meta.model.n_layers,
    )?;
    if !args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        bail!("--out {} must end in .gguf", args.out.display());
    }
    write_atomic(&args.out, |f| Ok(writer.write_to(f)?))?;
    println!(
        "wrote {}: direction.{} = r of layer {layer} (|r| = {:.4}); in llama.cpp use \
         --control-vector-scaled {} COEFF (COEFF 1 = activation addition with coefficient 1)",
        args.out.display(),
        layer - 1,
        direction.meta.norm,
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use refusal_core::gguf::GgufFile;

    #[test]
    fn the_vector_lands_on_the_output_of_the_previous_block() {
        let v = [0.5f32, -1.0, 2.0];
        let bytes = control_vector(&v, 5, "qwen2", 24).unwrap().to_bytes();
        let file = GgufFile::parse(&bytes).unwrap();
        assert_eq!(file.tensors.len(), 1);
        assert_eq!(file.tensors[0].name, "direction.4");
        assert_eq!(file.tensor_f32(&bytes, "direction.4").unwrap(), v);
        assert_eq!(
            file.get("general.architecture").and_then(|v| v.as_str()),
            Some("controlvector")
        );
        assert!(
            control_vector(&v, 1, "qwen2", 24).is_err(),
            "block 0's output is not steerable"
        );
        assert!(control_vector(&v, 24, "qwen2", 24).is_err());
    }
}
