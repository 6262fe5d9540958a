//! `refusal-lens compress`: quantize or prune a model's linear layers (METHOD §8) and write a
//! loadable model plus a JSON manifest (method, parameters, per-layer sparsity, bits per
//! weight and reconstruction error, calibration set hash).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::builder::PossibleValuesParser;
use futures_lite::future::block_on;
use refusal_core::compress::recipe::{METHOD_NAMES, ggml_type_name};
use refusal_core::compress::{LinearReport, Method, Sparsity, Summary, compress};
use refusal_core::runs::compress::{Calibration, CalibrationRequest, CompressRequest};
use refusal_core::runs::{PromptSource, RunIo};
use serde::Serialize;

use super::{Written, in_terminal};
use crate::model::open::Fingerprint;
use crate::model::saved::{DerivedModel, OutFormat, save};
use crate::model_args::ModelArgs;
use crate::outputs::write_atomic;
use crate::progress::RunControl;

/// The method's parameters as flags (`--bits 4 --group 128`, `--type q4_0`, `--sparsity 0.5`
/// or `--pattern 2:4`).
#[derive(Debug, Clone, clap::Args)]
pub struct MethodArgs {
    #[arg(long, value_parser = PossibleValuesParser::new(METHOD_NAMES))]
    pub method: String,
    /// Bits per weight (rtn, gptq): 2 to 8.
    #[arg(long, default_value_t = CompressRequest::BITS)]
    pub bits: usize,
    /// Inputs sharing a scale (rtn, gptq); 0 for one scale per output row.
    #[arg(long, default_value_t = CompressRequest::GROUP)]
    pub group: usize,
    /// Asymmetric grid (min/max with a zero point) instead of the symmetric default.
    #[arg(long, conflicts_with = "sym")]
    pub asym: bool,
    /// Symmetric grid (the default).
    #[arg(long)]
    pub sym: bool,
    /// GGUF block type (gguf): q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q6_k.
    #[arg(long = "type")]
    pub ggml_type: Option<String>,
    /// Fraction of every output row to prune (magnitude, wanda, sparsegpt).
    #[arg(long, conflicts_with = "pattern")]
    pub sparsity: Option<f64>,
    /// N:M pattern instead of a fraction: prune N of every M consecutive inputs (2:4, 4:8).
    #[arg(long)]
    pub pattern: Option<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CalibrationArgs {
    /// Calibration prompts (any prompt file), chat-formatted; default: the built-in harmless
    /// set.
    #[arg(long, conflicts_with = "calib_text")]
    pub calib: Option<PathBuf>,
    /// A plain text file to calibrate on instead, cut into windows of --calib-seq tokens.
    #[arg(long)]
    pub calib_text: Option<PathBuf>,
    /// At most this many calibration prompts or windows.
    #[arg(long, default_value_t = CalibrationRequest::N_CALIB)]
    pub n_calib: usize,
    /// Tokens per window of --calib-text.
    #[arg(long, default_value_t = CalibrationRequest::CALIB_SEQ)]
    pub calib_seq: usize,
}

impl CalibrationArgs {
    pub fn request(&self) -> CalibrationRequest {
        let name = |p: &PathBuf| p.display().to_string();
        CalibrationRequest {
            calib: self.calib.as_ref().map(|p| PromptSource::Named(name(p))),
            calib_text: self.calib_text.as_ref().map(name),
            n_calib: self.n_calib,
            calib_seq: self.calib_seq,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct CompressArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub method: MethodArgs,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    /// Calibration prompts per forward batch.
    #[arg(long, default_value_t = CompressRequest::BATCH_SIZE)]
    pub batch_size: usize,
    /// The compressed model: FILE.gguf (GGUF sources; GGUF block types, and the rtn/gptq
    /// grids one stores, are packed, other methods f32) or DIR/model.safetensors. The manifest is written beside it as
    /// FILE.manifest.json.
    #[arg(long)]
    pub out: PathBuf,
}

impl CompressArgs {
    pub fn request(&self) -> CompressRequest {
        let m = &self.method;
        CompressRequest {
            method: Some(m.method.clone()),
            bits: m.bits,
            group: m.group,
            asym: m.asym,
            sym: m.sym,
            ggml_type: m.ggml_type.clone(),
            sparsity: m.sparsity,
            pattern: m.pattern.clone(),
            calibration: self.calibration.request(),
            batch_size: self.batch_size,
        }
    }
}

/// The manifest written beside a compressed model.
#[derive(Debug, Serialize)]
struct Manifest<'a> {
    recipe: String,
    method: &'static str,
    parameters: serde_json::Value,
    model: &'a Fingerprint,
    calibration: &'a Calibration,
    summary: Summary,
    layers: &'a [LinearReport],
    output: String,
    seconds: f64,
}

/// The method's parameters as JSON fields.
pub fn parameters(method: Method) -> serde_json::Value {
    match method {
        Method::Rtn(g) | Method::Gptq(g) => serde_json::to_value(g).unwrap_or_default(),
        Method::Ggml(ty) => serde_json::json!({ "type": ggml_type_name(ty) }),
        Method::Magnitude(s) | Method::Wanda(s) | Method::SparseGpt(s) => match s {
            Sparsity::Unstructured(f) => serde_json::json!({ "sparsity": f }),
            Sparsity::NOfM { n, m } => serde_json::json!({ "pattern": format!("{n}:{m}") }),
        },
    }
}

/// `<out>.manifest.json` beside the model (inside the directory for safetensors output).
fn manifest_path(out: &Path) -> PathBuf {
    let mut name = out.file_stem().unwrap_or_default().to_os_string();
    name.push(".manifest.json");
    out.with_file_name(name)
}

pub fn run(args: &CompressArgs, control: &RunControl) -> Result<()> {
    in_terminal(control, &args.model, |io| {
        write(&args.request(), &args.model, &args.out, io)
    })
}

/// Compresses the model `models` names as `request` asks and writes it to `out` with its
/// manifest beside it.
///
/// # Errors
///
/// The request's, an output that does not suit the model's format, calibration and
/// compression errors.
pub fn write(
    request: &CompressRequest,
    models: &ModelArgs,
    out: &Path,
    io: &mut dyn RunIo,
) -> Result<Written> {
    request.validate()?;
    let method = request.method()?;
    let resolved = models.resolve()?;
    OutFormat::of(out, &resolved)?;
    let (loaded, fingerprint) = models.load_with_fingerprint()?;
    let calibration = request.calibration.load(&loaded.text, io)?;
    io.note(&format!(
        "compressing with {method}: calibration {} ({} {}, {} tokens)",
        calibration.source, calibration.samples, calibration.kind, calibration.tokens
    ));
    let start = Instant::now();
    let compressed = block_on(compress(
        loaded.llama,
        method,
        &calibration.ids,
        0,
        request.batch_size,
        &mut |p| io.progress(p),
    ))
    .with_context(|| format!("compressing with {method}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let changed = compressed.unpacked_weights();
    let note = format!(
        "compressed with {method} (calibration sha256 {})",
        calibration.sha256
    );
    save(
        &DerivedModel {
            source: &resolved,
            model: &compressed.model,
            text: &loaded.text,
            changed: &changed,
            packed: &compressed.packed,
            note: ("compression", note),
        },
        out,
    )?;
    let summary = Summary::of(&compressed.layers);
    let manifest = Manifest {
        recipe: method.to_string(),
        method: method.name(),
        parameters: parameters(method),
        model: &fingerprint,
        calibration: &calibration,
        summary,
        layers: &compressed.layers,
        output: out.display().to_string(),
        seconds,
    };
    let path = manifest_path(out);
    write_atomic(&path, |f| {
        serde_json::to_writer_pretty(f, &manifest)?;
        Ok(())
    })?;
    let s = &manifest.summary;
    Ok(Written::done(format!(
        "{method}: {} parameters, sparsity {:.3}, {:.2} bits/weight, weight error {:.4}, output error {}\n\
         wrote {} and {} in {seconds:.1} s",
        s.parameters,
        s.sparsity,
        s.bits_per_weight,
        s.weight_error,
        s.output_error.map_or("-".to_owned(), |e| format!("{e:.4}")),
        out.display(),
        path.display()
    )))
}
