//! Compressing a whole model (METHOD §8): every linear layer of every decoder block, block by
//! block. The calibration prompts run through the blocks already compressed, so block `l` is
//! calibrated on the inputs it will really see; within a block all seven linear layers are
//! measured on one pass of the block as loaded. Embedding, norms and head are left as they are.

use burn::tensor::{Int, Tensor, TensorData};
use bytes::Bytes;

use crate::gguf::{GgmlType, dequantize, fits_rows, quantize, zeroed};
use crate::load::names;
use crate::model::llama::{Block, Linear, Weight};
use crate::model::quantized::QuantizedMatrix;
use crate::model::weights::transposed;
use crate::model::{BlockContext, BlockWeight, HostTensor, Llama, TokenBatch, WeightName};
use crate::pipeline::{OnProgress, PipelineError, Stage, read, report};

use super::grid::{GroupScale, QuantGrid};
use super::hessian::{HostStats, InputStats};
use super::obs::{Target, sweep};
use super::prune;
use super::{CompressError, HostMatrix, Method};

/// The linear layers of a block, in the order data reaches them.
pub const LINEARS: [BlockWeight; 7] = [
    BlockWeight::Q,
    BlockWeight::K,
    BlockWeight::V,
    BlockWeight::O,
    BlockWeight::Gate,
    BlockWeight::Up,
    BlockWeight::Down,
];

/// A weight in a GGUF block format: the bytes to write and how they are stored.
#[derive(Debug, Clone)]
pub struct PackedWeight {
    pub name: WeightName,
    pub ty: GgmlType,
    /// The same buffer as the compressed model's blocks (on the CPU), not a copy.
    pub bytes: Bytes,
}

/// What compression did to one linear layer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LinearReport {
    pub layer: usize,
    /// The weight's GGUF name (`blk.3.ffn_down.weight`).
    pub tensor: String,
    pub rows: usize,
    pub cols: usize,
    /// Fraction of zero weights after compression.
    pub sparsity: f64,
    /// Storage cost of the compressed weight as kept (a pruned weight kept in its blocks: the
    /// block type's; any other pruned weight: 16, which a file stores as f16 or wider; the
    /// zeros are not packed).
    pub bits_per_weight: f64,
    /// `||W' - W||_F / ||W||_F`.
    pub weight_error: f64,
    /// `||X W'^T - X W^T||_F / ||X W^T||_F` on the calibration inputs of this layer.
    pub output_error: Option<f64>,
    /// The GGUF type the weight is stored in, when that differs from the one asked for
    /// because rows of this length do not fit it.
    pub fallback_type: Option<String>,
    /// Damping added to `H`'s diagonal by GPTQ / SparseGPT.
    pub damping: Option<f64>,
    /// The type the compressed model keeps the weight in (`Q4_0`, `F16`, `F32`, ...): a GGUF
    /// block type where the method's output is packed (GGUF types; 4, 5 and 8-bit grids of
    /// whole 32-input blocks; pruning in a block type with a code for zero), else 16 bits on a
    /// model kept compact on the CPU (blocks or 16-bit floats), else the model's dense type.
    /// Older manifests lack it.
    #[serde(default)]
    pub stored_as: Option<String>,
}

/// Totals over every compressed layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub parameters: usize,
    pub sparsity: f64,
    pub bits_per_weight: f64,
    /// Parameter-weighted mean of the per-layer output errors.
    pub output_error: Option<f64>,
    pub weight_error: f64,
}

impl Summary {
    pub fn of(layers: &[LinearReport]) -> Summary {
        let parameters: usize = layers.iter().map(|l| l.rows * l.cols).sum();
        let mean = |f: &dyn Fn(&LinearReport) -> f64| {
            layers
                .iter()
                .map(|l| f(l) * (l.rows * l.cols) as f64)
                .sum::<f64>()
                / parameters.max(1) as f64
        };
        let all_measured = !layers.is_empty() && layers.iter().all(|l| l.output_error.is_some());
        Summary {
            parameters,
            sparsity: mean(&|l| l.sparsity),
            bits_per_weight: mean(&|l| l.bits_per_weight),
            output_error: all_measured.then(|| mean(&|l| l.output_error.unwrap_or(0.0))),
            weight_error: mean(&|l| l.weight_error),
        }
    }
}

/// A compressed model and what was done to each layer.
pub struct Compressed {
    /// On the CPU, layers packed in a block type are kept as those blocks and multiplied from
    /// them; every other compressed weight is dense, in the type the weight had (f32 for a
    /// quantized one).
    pub model: Llama,
    pub layers: Vec<LinearReport>,
    /// The GGUF bytes of every linear layer packed in a block type (a pruned one kept in its
    /// source's blocks included).
    pub packed: Vec<PackedWeight>,
    /// Calibration tokens (padding excluded) every layer was measured on.
    pub calibration_tokens: usize,
}

impl Compressed {
    /// The linear weights whose new values are not packed in a GGUF type (written in full, as
    /// [`crate::export::replaced_type`] says).
    pub fn unpacked_weights(&self) -> Vec<WeightName> {
        (0..self.model.blocks.len())
            .flat_map(|l| LINEARS.map(|w| WeightName::Block(l, w)))
            .filter(|n| !self.packed.iter().any(|p| p.name == *n))
            .collect()
    }
}

/// One calibration batch on its way through the blocks.
struct CalibrationBatch {
    /// The input of the next block. `[batch, seq, d_model]`
    x: Tensor<3>,
    ctx: BlockContext,
    /// Flattened indices of the real (unpadded) tokens. `[tokens]`
    real: Tensor<1, Int>,
}

/// Which input statistics a linear layer reads.
fn input_of(w: BlockWeight) -> usize {
    match w {
        BlockWeight::O => 1,
        BlockWeight::Gate | BlockWeight::Up => 2,
        BlockWeight::Down => 3,
        _ => 0,
    }
}

fn linear_mut(block: &mut Block, w: BlockWeight) -> &mut Linear {
    match w {
        BlockWeight::Q => &mut block.attn.q,
        BlockWeight::K => &mut block.attn.k,
        BlockWeight::V => &mut block.attn.v,
        BlockWeight::O => &mut block.attn.o,
        BlockWeight::Gate => &mut block.mlp.gate,
        BlockWeight::Up => &mut block.mlp.up,
        _ => &mut block.mlp.down,
    }
}

/// Compresses every linear layer of `model` with `method`, calibrating on `calibration`
/// (token ids of whole prompts, run `batch_size` at a time, padded with `pad_id`). Methods
/// that do not need calibration accept an empty set and then report no output error.
///
/// # Errors
///
/// [`CompressError::NoCalibration`] for a calibrated method without prompts, the per-matrix
/// errors of the method, and cancellation.
pub async fn compress(
    mut model: Llama,
    method: Method,
    calibration: &[Vec<u32>],
    pad_id: u32,
    batch_size: usize,
    on_progress: &mut OnProgress<'_>,
) -> Result<Compressed, CompressError> {
    if calibration.iter().all(Vec::is_empty) && method.needs_calibration() {
        return Err(CompressError::NoCalibration(method.to_string()));
    }
    let n_layers = model.blocks.len();
    report(on_progress, Stage::Compress, 0, n_layers)?;
    let mut batches = calibration_batches(&model, calibration, pad_id, batch_size.max(1));
    let calibration_tokens = batches.iter().map(|b| b.real.dims()[0]).sum();
    let device = model.device();
    let mut layers = Vec::with_capacity(n_layers * LINEARS.len());
    let mut packed = Vec::new();

    for l in 0..n_layers {
        let host = observe(&model.blocks[l], &batches).await?;
        let block = &mut model.blocks[l];

        for w in LINEARS {
            let name = WeightName::Block(l, w);
            let tensor = names::gguf(name);
            let linear = linear_mut(block, w);
            let original = linear_rows(linear).await?;
            let stats = host[input_of(w)].as_ref();
            let mut compressed = original.clone();
            let mut outcome = compress_matrix(&mut compressed, method, stats, &tensor)?;
            if outcome.packed.is_none() {
                outcome.packed = kept_in_blocks(&linear.weight, method, &compressed);
                if let Some((ty, _)) = &outcome.packed {
                    outcome.bits_per_weight = ty.bits_per_weight();
                }
            }
            if outcome.packed.is_none() {
                outcome.packed = in_sixteen_bits(&linear.weight, &mut compressed);
            }
            let blocks = outcome.packed.as_ref().and_then(|(ty, bytes)| {
                // On the CPU the model multiplies the packed blocks themselves.
                let [rows, cols] = [original.rows, original.cols];
                (device == burn::tensor::Device::flex())
                    .then(|| QuantizedMatrix::new(*ty, rows, cols, bytes.clone()).ok())
                    .flatten()
            });
            if let Some((ty, bytes)) = outcome.packed {
                packed.push(PackedWeight { name, ty, bytes });
            }
            let mut report = LinearReport {
                layer: l,
                rows: original.rows,
                cols: original.cols,
                sparsity: compressed.sparsity(),
                bits_per_weight: outcome.bits_per_weight,
                weight_error: compressed.relative_error(&original),
                output_error: stats.map(|s| s.output_error(&original, &compressed)),
                fallback_type: outcome.fallback_type,
                damping: outcome.damping,
                stored_as: None,
                tensor,
            };
            match blocks {
                Some(q) => linear.weight = Weight::Quantized(q),
                None => set_rows(linear, compressed, &device),
            }
            report.stored_as = Some(linear.weight.type_name());
            layers.push(report);
        }

        let block = &model.blocks[l];
        for b in &mut batches {
            b.x = block.forward_prompt(b.x.clone(), &b.ctx);
        }
        report(on_progress, Stage::Compress, l + 1, n_layers)?;
    }
    Ok(Compressed {
        model,
        layers,
        packed,
        calibration_tokens,
    })
}

/// The statistics of the four inputs of `block`'s linear layers (q/k/v, o, gate/up, down)
/// over the calibration batches.
async fn observe(
    block: &Block,
    batches: &[CalibrationBatch],
) -> Result<Vec<Option<HostStats>>, CompressError> {
    let mut inputs: [InputStats; 4] = Default::default();
    for b in batches {
        let (_, seen) = block.forward_observed(b.x.clone(), &b.ctx);
        for (stats, x) in inputs
            .iter_mut()
            .zip([seen.attn, seen.o, seen.mlp, seen.down])
        {
            stats.add(x, &b.real);
        }
    }
    let mut host = Vec::with_capacity(4);
    for stats in inputs {
        host.push(stats.into_host().await?);
    }
    Ok(host)
}

/// The input statistics of every linear layer of block `layer` of the uncompressed `model`
/// (for studying one layer's methods side by side), keyed like [`LINEARS`].
///
/// # Errors
///
/// [`PipelineError::LayerOutOfRange`], readback errors.
pub async fn block_input_stats(
    model: &Llama,
    calibration: &[Vec<u32>],
    pad_id: u32,
    batch_size: usize,
    layer: usize,
) -> Result<Vec<(BlockWeight, HostStats)>, CompressError> {
    let n_layers = model.blocks.len();
    if layer >= n_layers {
        return Err(PipelineError::LayerOutOfRange { layer, n_layers }.into());
    }
    let mut batches = calibration_batches(model, calibration, pad_id, batch_size.max(1));
    for block in &model.blocks[..layer] {
        for b in &mut batches {
            b.x = block.forward_prompt(b.x.clone(), &b.ctx);
        }
    }
    let host = observe(&model.blocks[layer], &batches).await?;
    Ok(LINEARS
        .into_iter()
        .filter_map(|w| host[input_of(w)].clone().map(|h| (w, h)))
        .collect())
}

/// Batches of similar lengths (less padding), embedded and ready for block 0.
fn calibration_batches(
    model: &Llama,
    prompts: &[Vec<u32>],
    pad_id: u32,
    batch_size: usize,
) -> Vec<CalibrationBatch> {
    let device = model.device();
    let mut order: Vec<&Vec<u32>> = prompts.iter().filter(|p| !p.is_empty()).collect();
    order.sort_by_key(|p| p.len());
    order
        .chunks(batch_size)
        .map(|chunk| {
            let ids: Vec<Vec<u32>> = chunk.iter().map(|p| (*p).clone()).collect();
            let batch = TokenBatch::left_padded(&ids, pad_id, &device);
            let [_, seq] = batch.dims();
            let real: Vec<i64> = batch
                .padding()
                .iter()
                .enumerate()
                .flat_map(|(row, &pad)| (pad..seq).map(move |j| (row * seq + j) as i64))
                .collect();
            let n = real.len();
            let real = Tensor::from_data(TensorData::new(real, [n]), &device);
            let (x, ctx) = model.embed(&batch);
            CalibrationBatch { x, ctx, real }
        })
        .collect()
}

/// What one matrix's compression produced besides the new values.
#[derive(Debug)]
pub struct MatrixOutcome {
    pub bits_per_weight: f64,
    /// The GGUF type and bytes, for [`Method::Ggml`] and the grids a GGUF type stores.
    pub packed: Option<(GgmlType, Bytes)>,
    /// The type actually stored when the one asked for does not fit the rows.
    pub fallback_type: Option<String>,
    /// Damping added to `H` by the Hessian-based methods.
    pub damping: Option<f64>,
}

/// Compresses one weight matrix in place.
///
/// # Errors
///
/// [`CompressError::NoCalibration`] when a calibrated method gets no statistics, and the
/// method's own errors.
pub fn compress_matrix(
    w: &mut HostMatrix,
    method: Method,
    stats: Option<&HostStats>,
    tensor: &str,
) -> Result<MatrixOutcome, CompressError> {
    let mut outcome = MatrixOutcome {
        bits_per_weight: 16.0,
        packed: None,
        fallback_type: None,
        damping: None,
    };
    let needs = || stats.ok_or_else(|| CompressError::NoCalibration(method.to_string()));
    match method {
        Method::Rtn(grid) => {
            let scales = grid.round_to_nearest(w);
            outcome.bits_per_weight = grid.bits_per_weight(w.cols);
            outcome.packed = packed_grid(w, grid, &scales, tensor)?;
        }
        Method::Gptq(grid) => {
            let h = needs()?;
            let swept = sweep(w, &h.hessian, Target::Grid(grid), tensor)?;
            outcome.damping = Some(swept.damp);
            outcome.bits_per_weight = grid.bits_per_weight(w.cols);
            outcome.packed = packed_grid(w, grid, &swept.scales, tensor)?;
        }
        Method::Ggml(ty) => {
            let stored = storage_type(ty, w.cols);
            let ggml = |source| CompressError::Ggml {
                tensor: tensor.to_owned(),
                source,
            };
            let bytes = quantize(stored, &w.data).map_err(ggml)?;
            w.data = dequantize(stored, &bytes, w.data.len()).map_err(ggml)?;
            outcome.bits_per_weight = stored.bits_per_weight();
            if stored != ty {
                outcome.fallback_type = Some(stored.name().to_ascii_lowercase());
            }
            outcome.packed = Some((stored, bytes.into()));
        }
        Method::Magnitude(s) => {
            s.check(tensor, w.cols)?;
            prune::magnitude(w, s);
        }
        Method::Wanda(s) => {
            s.check(tensor, w.cols)?;
            prune::wanda(w, s, &needs()?.input_norms());
        }
        Method::SparseGpt(s) => {
            let h = needs()?;
            outcome.damping = Some(sweep(w, &h.hessian, Target::Prune(s), tensor)?.damp);
        }
    }
    Ok(outcome)
}

/// `w`, rounded to `grid`, as the blocks of the GGML type that stores the grid, if one does
/// ([`QuantGrid::ggml_type`]); `w` then holds the blocks' values (the grid's with its scales
/// rounded to f16), so the model is the same on every backend and the reported errors are
/// those of what is stored.
fn packed_grid(
    w: &mut HostMatrix,
    grid: QuantGrid,
    scales: &[GroupScale],
    tensor: &str,
) -> Result<Option<(GgmlType, Bytes)>, CompressError> {
    let Some((ty, bytes)) = grid.pack(w, scales) else {
        return Ok(None);
    };
    w.data = dequantize(ty, &bytes, w.data.len()).map_err(|source| CompressError::Ggml {
        tensor: tensor.to_owned(),
        source,
    })?;
    Ok(Some((ty, bytes.into())))
}

/// A pruned weight of a model kept in GGML blocks (or 16-bit floats): the source's own blocks
/// with the pruned codes set to zero, where the method only prunes and the type has a code for
/// zero (the other values stay exactly as they were). `None` otherwise.
fn kept_in_blocks(source: &Weight, method: Method, w: &HostMatrix) -> Option<(GgmlType, Bytes)> {
    let Weight::Quantized(q) = source else {
        return None;
    };
    if !method.only_zeroes() || q.rank_of_edits() > 0 {
        return None;
    }
    zeroed(q.ty(), q.blocks(), &w.data).map(|blocks| (q.ty(), blocks.into()))
}

/// A compressed weight that no block type holds, of a model kept compact on the CPU (GGML
/// blocks or 16-bit floats): rounded to 16 bits (see [`crate::gguf::in_sixteen_bits`]), and
/// `w` set to the rounded values, so that the reported errors are those of what is stored.
/// Zeros stay exact, so does a pruning pattern. An f32 copy would double the memory of a
/// 16-bit model and make a quantized one 4-8 times larger. `None` for a dense source (f32, or
/// 16-bit on a GPU, which keeps its type), and for values out of the 16-bit range, which stay
/// f32.
fn in_sixteen_bits(source: &Weight, w: &mut HostMatrix) -> Option<(GgmlType, Bytes)> {
    let Weight::Quantized(q) = source else {
        return None;
    };
    let (ty, bytes) = crate::gguf::in_sixteen_bits(q.ty(), &w.data)?;
    w.data = dequantize(ty, &bytes, w.data.len())
        .unwrap_or_else(|e| unreachable!("whole values, by construction: {e}"));
    Some((ty, bytes.into()))
}

/// The type a row of `cols` values is stored in when `ty` was asked for: `ty` if the row is a
/// whole number of its blocks, else llama.cpp's fallback for that type (Q4_K → Q5_0,
/// Q6_K → Q8_0), else F16.
pub fn storage_type(ty: GgmlType, cols: usize) -> GgmlType {
    let fallback = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    [ty, fallback, GgmlType::F16]
        .into_iter()
        .find(|t| fits_rows(*t, cols))
        .unwrap_or(GgmlType::F32)
}

/// A linear layer's weight as files store it, `[d_out, d_in]`.
async fn linear_rows(linear: &Linear) -> Result<HostMatrix, CompressError> {
    let w = linear.weight_values();
    let [d_in, d_out] = w.dims();
    let stored = read(w).await?;
    let mut data = vec![0.0f32; stored.len()];
    for (i, row) in stored.chunks_exact(d_out).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            data[o * d_in + i] = v;
        }
    }
    Ok(HostMatrix {
        rows: d_out,
        cols: d_in,
        data,
    })
}

/// Replaces a linear layer's weight by `w` (`[d_out, d_in]`), in the type the weight had: a
/// 16-bit model stays 16-bit, its compressed values rounded to that type (the packed GGUF
/// blocks and the manifest's errors are computed from the unrounded values).
fn set_rows(linear: &mut Linear, w: HostMatrix, device: &burn::tensor::Device) {
    let dtype = linear.weight_values().dtype();
    let rows = HostTensor {
        shape: vec![w.rows, w.cols],
        data: w.data,
    };
    linear.set_weight(transposed(rows, device).cast(dtype));
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use futures_lite::future::block_on;

    use super::*;
    use crate::compress::Sparsity;
    use crate::compress::grid::QuantGrid;
    use crate::export::host_weight;
    use crate::model::{ModelConfig, NoHook, read_f32};

    fn calibration() -> Vec<Vec<u32>> {
        (0..12u32)
            .map(|i| (0..(5 + i % 7)).map(|j| (i * 13 + j * 7) % 96).collect())
            .collect()
    }

    fn run(method: Method) -> Result<Compressed, CompressError> {
        let device = burn::tensor::Device::flex();
        let model = Llama::random(&ModelConfig::tiny(), 5, &device);
        block_on(compress(model, method, &calibration(), 0, 4, &mut |_| {
            ControlFlow::Continue(())
        }))
    }

    #[test]
    fn every_linear_layer_is_compressed_and_measured() {
        let c = run(Method::Wanda(Sparsity::NOfM { n: 2, m: 4 })).unwrap();
        assert_eq!(c.layers.len(), 2 * LINEARS.len());
        let tokens: usize = calibration().iter().map(Vec::len).sum();
        assert_eq!(c.calibration_tokens, tokens);
        for (report, name) in c.layers.iter().zip(c.unpacked_weights()) {
            assert_eq!(report.tensor, names::gguf(name));
            assert_eq!(report.sparsity, 0.5);
            let e = report.output_error.unwrap();
            assert!(e > 0.0 && e < 1.0, "{}: {e}", report.tensor);
            let w = host_weight(&c.model, name).unwrap();
            for g in w.data.chunks(4) {
                assert_eq!(g.iter().filter(|v| **v == 0.0).count(), 2);
            }
        }
        // Embedding, norms and head are untouched; the model still runs.
        let batch = TokenBatch::left_padded(&[vec![1, 2, 3]], 0, &c.model.device());
        assert!(
            read_f32(c.model.last_logits(&batch, &mut NoHook))
                .iter()
                .all(|v| v.is_finite())
        );
    }

    fn run_quantized(ty: GgmlType, method: Method) -> (Llama, Compressed) {
        let model = Llama::random_quantized(&ModelConfig::tiny(), 5, ty);
        let c = block_on(compress(
            model.clone(),
            method,
            &calibration(),
            0,
            4,
            &mut |_| ControlFlow::Continue(()),
        ))
        .unwrap();
        (model, c)
    }

    #[test]
    fn pruned_blocks_of_a_type_with_a_zero_code_stay_in_that_type_with_their_other_values() {
        for sparsity in [Sparsity::NOfM { n: 2, m: 4 }, Sparsity::Unstructured(0.5)] {
            for method in [Method::Magnitude(sparsity), Method::Wanda(sparsity)] {
                let (source, c) = run_quantized(GgmlType::Q5_0, method);
                assert_eq!(c.packed.len(), 2 * LINEARS.len(), "{method}");
                for report in &c.layers {
                    assert_eq!(report.stored_as.as_deref(), Some("Q5_0"), "{method}");
                    assert_eq!(report.bits_per_weight, 5.5);
                    assert_eq!(report.sparsity, 0.5, "{method} {}", report.tensor);
                }
                for p in &c.packed {
                    assert_eq!(p.ty, GgmlType::Q5_0);
                    let before = host_weight(&source, p.name).unwrap().data;
                    let after = host_weight(&c.model, p.name).unwrap().data;
                    let zeros = after.iter().filter(|v| **v == 0.0).count();
                    assert_eq!(zeros, after.len() / 2, "{method} {:?}", p.name);
                    for (a, b) in after.iter().zip(&before) {
                        assert!(*a == 0.0 || a.to_bits() == b.to_bits(), "{a} was {b}");
                    }
                    let stored = dequantize(p.ty, &p.bytes, after.len()).unwrap();
                    assert_eq!(stored, after);
                }
            }
        }
    }

    #[test]
    fn other_compressed_weights_of_a_quantized_model_are_f16() {
        let prune = Sparsity::NOfM { n: 2, m: 4 };
        for (ty, method) in [
            // Zero is no value of a type with a minimum.
            (GgmlType::Q4_1, Method::Magnitude(prune)),
            // SparseGPT moves the weights it keeps.
            (GgmlType::Q5_0, Method::SparseGpt(prune)),
            // No block type holds a 3-bit grid.
            (
                GgmlType::Q8_0,
                Method::Rtn(QuantGrid::new(3, 32, true).unwrap()),
            ),
        ] {
            let (source, c) = run_quantized(ty, method);
            assert_eq!(c.packed.len(), 2 * LINEARS.len(), "{method}");
            assert!(
                c.layers
                    .iter()
                    .all(|l| l.stored_as.as_deref() == Some("F16")),
                "{method}"
            );
            for p in &c.packed {
                assert_eq!(p.ty, GgmlType::F16);
                // The model multiplies exactly the values stored, which are the method's
                // output rounded to f16: far closer to it than the compression's own change.
                let held = host_weight(&c.model, p.name).unwrap().data;
                assert_eq!(dequantize(p.ty, &p.bytes, held.len()).unwrap(), held);
                let before = host_weight(&source, p.name).unwrap().data;
                let changed = held.iter().zip(&before).filter(|(a, b)| a != b).count();
                assert!(changed > held.len() / 4, "{method}: {changed} changed");
            }
            if !matches!(method, Method::Rtn(_)) {
                for l in &c.layers {
                    assert_eq!((l.bits_per_weight, l.sparsity), (16.0, 0.5), "{method}");
                }
            }
        }
    }

    #[test]
    fn a_16_bit_model_stays_16_bit_and_keeps_its_pruned_zeros() {
        let device = burn::tensor::Device::flex();
        let prune = Sparsity::NOfM { n: 2, m: 4 };
        let compress_bf16 = |method| {
            let model = Llama::random_bf16(&ModelConfig::tiny(), 5, &device);
            let source = model.clone();
            let c = block_on(compress(model, method, &calibration(), 0, 4, &mut |_| {
                ControlFlow::Continue(())
            }))
            .unwrap();
            (source, c)
        };
        // Magnitude pruning keeps every other value bit for bit; SparseGPT moves the kept
        // ones, which are rounded back to bf16.
        for method in [Method::Magnitude(prune), Method::SparseGpt(prune)] {
            let (source, c) = compress_bf16(method);
            assert_eq!(c.packed.len(), 2 * LINEARS.len(), "{method}");
            for p in &c.packed {
                assert_eq!(p.ty, GgmlType::BF16, "{method}");
                let held = host_weight(&c.model, p.name).unwrap().data;
                assert_eq!(dequantize(p.ty, &p.bytes, held.len()).unwrap(), held);
                // Zero is exact in bf16: the 2:4 pattern survives the rounding.
                for g in held.chunks(4) {
                    assert_eq!(g.iter().filter(|v| **v == 0.0).count(), 2, "{method}");
                }
                if matches!(method, Method::Magnitude(_)) {
                    let before = host_weight(&source, p.name).unwrap().data;
                    for (a, b) in held.iter().zip(&before) {
                        assert!(*a == 0.0 || a.to_bits() == b.to_bits(), "{a} was {b}");
                    }
                }
            }
            assert!(
                c.layers
                    .iter()
                    .all(|l| l.stored_as.as_deref() == Some("BF16")),
                "{method}"
            );
        }
    }

    #[test]
    fn gguf_types_are_packed_and_the_model_holds_their_dequantized_values() {
        let c = run(Method::Ggml(GgmlType::Q8_0)).unwrap();
        assert_eq!(c.packed.len(), 2 * LINEARS.len());
        assert!(c.unpacked_weights().is_empty());
        for p in &c.packed {
            let w = host_weight(&c.model, p.name).unwrap();
            assert_eq!(p.ty, GgmlType::Q8_0);
            assert_eq!(dequantize(p.ty, &p.bytes, w.data.len()).unwrap(), w.data);
        }
        assert_eq!(c.layers[0].bits_per_weight, 8.5);
    }

    #[test]
    fn rows_that_do_not_fit_a_k_quant_fall_back_like_llama_cpp() {
        // Qwen2.5-0.5B: 896-wide rows do not fit 256-element blocks, 4864-wide ones do.
        assert_eq!(storage_type(GgmlType::Q4K, 896), GgmlType::Q5_0);
        assert_eq!(storage_type(GgmlType::Q4K, 4864), GgmlType::Q4K);
        assert_eq!(storage_type(GgmlType::Q6K, 896), GgmlType::Q8_0);
        assert_eq!(storage_type(GgmlType::Q4_0, 50), GgmlType::F16);
        // The tiny model's 64-wide rows do not fit Q4_K's 256-element blocks.
        let c = run(Method::Ggml(GgmlType::Q4K)).unwrap();
        assert!(
            c.layers
                .iter()
                .all(|l| l.fallback_type.as_deref() == Some("q5_0"))
        );
    }

    #[test]
    fn calibrated_methods_need_prompts_and_long_runs_cancel() {
        let device = burn::tensor::Device::flex();
        let model = Llama::random(&ModelConfig::tiny(), 5, &device);
        let gptq = Method::Gptq(QuantGrid::new(4, 32, true).unwrap());
        let none = block_on(compress(model.clone(), gptq, &[], 0, 4, &mut |_| {
            ControlFlow::Continue(())
        }));
        assert!(matches!(none, Err(CompressError::NoCalibration(_))));
        // RTN needs no calibration.
        let rtn = Method::Rtn(QuantGrid::new(4, 32, true).unwrap());
        let c = block_on(compress(model.clone(), rtn, &[], 0, 4, &mut |_| {
            ControlFlow::Continue(())
        }))
        .unwrap();
        assert!(c.layers.iter().all(|l| l.output_error.is_none()));
        let cancelled = block_on(compress(model, gptq, &calibration(), 0, 4, &mut |p| {
            if p.done >= 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }));
        assert!(matches!(
            cancelled,
            Err(CompressError::Pipeline(PipelineError::Cancelled))
        ));
    }
}
