//! Compression on a real model (METHOD §8): the methods compared on one real layer with real
//! calibration activations, and a GGUF quantization written, read back and run.

use std::ops::ControlFlow;

use futures_lite::future::block_on;
use refusal_core::compress::model::{block_input_stats, compress_matrix};
use refusal_core::compress::{HostMatrix, Method, QuantGrid, Sparsity, compress};
use refusal_core::export::{gguf_with_weights, host_weight};
use refusal_core::gguf::GgmlType;
use refusal_core::load;
use refusal_core::model::{BlockWeight, NoHook, TokenBatch, WeightName, read_f32};
use refusal_core::refusal::EncodedPrompts;
use refusal_core::refusal::prompts::builtin_harmless;
use refusal_lens::model::builtin::BuiltinModel;
use refusal_tests::{builtin_gguf, load_builtin, load_builtin_assets};

const MODEL: BuiltinModel = BuiltinModel::SmolLm2_135m;

fn calibration() -> Vec<Vec<u32>> {
    let text = load_builtin_assets(MODEL);
    let prompts: Vec<_> = builtin_harmless().into_iter().take(48).collect();
    EncodedPrompts::new(&text, &prompts, None).unwrap().ids
}

fn error_of(
    method: Method,
    w: &HostMatrix,
    stats: &refusal_core::compress::hessian::HostStats,
) -> f64 {
    let mut c = w.clone();
    compress_matrix(&mut c, method, Some(stats), "layer").unwrap();
    stats.output_error(w, &c)
}

/// On real activations of a middle block, the calibrated methods must beat their
/// calibration-free counterparts at the same budget: GPTQ < RTN (same grid), SparseGPT and
/// Wanda < magnitude (same sparsity). This is the property the methods exist for.
#[test]
fn calibrated_methods_beat_their_baselines_on_a_real_layer() {
    let model = load_builtin(MODEL);
    let layer = model.config().n_layers / 2;
    let stats = block_on(block_input_stats(&model, &calibration(), 0, 16, layer)).unwrap();
    for (w, s) in &stats {
        if !matches!(w, BlockWeight::Up | BlockWeight::Down | BlockWeight::Q) {
            continue;
        }
        let t = host_weight(&model, WeightName::Block(layer, *w)).unwrap();
        let m = HostMatrix {
            rows: t.shape[0],
            cols: t.shape[1],
            data: t.data,
        };
        let grid = QuantGrid::new(3, 64, true).unwrap();
        let (rtn, gptq) = (
            error_of(Method::Rtn(grid), &m, s),
            error_of(Method::Gptq(grid), &m, s),
        );
        assert!(gptq < rtn, "{w:?}: GPTQ {gptq} vs RTN {rtn}");
        for sparsity in [Sparsity::Unstructured(0.5), Sparsity::NOfM { n: 2, m: 4 }] {
            let magnitude = error_of(Method::Magnitude(sparsity), &m, s);
            let wanda = error_of(Method::Wanda(sparsity), &m, s);
            let sparsegpt = error_of(Method::SparseGpt(sparsity), &m, s);
            assert!(
                sparsegpt < magnitude,
                "{w:?} {sparsity}: SparseGPT {sparsegpt} vs magnitude {magnitude}"
            );
            assert!(
                wanda < magnitude,
                "{w:?} {sparsity}: Wanda {wanda} vs magnitude {magnitude}"
            );
            eprintln!(
                "{w:?} {sparsity}: magnitude {magnitude:.4} wanda {wanda:.4} sparsegpt {sparsegpt:.4}; rtn {rtn:.4} gptq {gptq:.4}"
            );
        }
    }
}

/// A GGUF block quantization, or a grid a block type stores, written with the source's
/// metadata reloads to exactly the model that was computed in memory, and the file holds the
/// packed bytes.
fn packed_output_round_trips_bit_exactly(method: Method, ty: GgmlType) {
    let path = builtin_gguf(MODEL);
    let bytes = std::fs::read(&path).unwrap();
    let name = path.display().to_string();
    let file = load::gguf::parse(&name, &bytes).unwrap();
    let device = burn::tensor::Device::flex();
    let model = load::gguf_model(
        &name,
        &file,
        &bytes,
        &device,
        Default::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let n_layers = model.config().n_layers;
    let compressed = block_on(compress(model, method, &[], 0, 16, &mut |_| {
        ControlFlow::Continue(())
    }))
    .unwrap();
    assert_eq!(compressed.packed.len(), 7 * n_layers, "{method}");
    for layer in &compressed.layers {
        assert_eq!(
            layer.stored_as.as_deref(),
            Some(ty.name()),
            "{}",
            layer.tensor
        );
    }
    let written = gguf_with_weights(&file, &bytes, &compressed.model, &[], &compressed.packed)
        .unwrap()
        .to_bytes();
    let reread = load::gguf::parse("written", &written).unwrap();
    for p in &compressed.packed {
        let info = reread.tensor(&load::names::gguf(p.name)).unwrap();
        assert_eq!(info.ggml_type, ty);
        assert_eq!(reread.tensor_bytes(&written, info).unwrap(), &p.bytes[..]);
    }
    let reloaded = load::gguf_model(
        "written",
        &reread,
        &written,
        &device,
        Default::default(),
        &mut |_, _| {},
    )
    .unwrap();
    let prompts = calibration();
    let batch = TokenBatch::left_padded(&prompts[..4], 0, &device);
    let a = read_f32(compressed.model.last_logits(&batch, &mut NoHook));
    let b = read_f32(reloaded.last_logits(&batch, &mut NoHook));
    assert_eq!(
        a, b,
        "the reloaded model must compute exactly the same logits"
    );
}

#[test]
fn gguf_quantization_round_trips_bit_exactly() {
    packed_output_round_trips_bit_exactly(Method::Ggml(GgmlType::Q4_0), GgmlType::Q4_0);
}

#[test]
fn an_asymmetric_4_bit_grid_is_stored_as_q4_1_and_round_trips_bit_exactly() {
    let grid = QuantGrid::new(4, 64, false).unwrap();
    packed_output_round_trips_bit_exactly(Method::Rtn(grid), GgmlType::Q4_1);
}

/// No block type holds a 3-bit grid: a quantized model keeps it in f16 (not f32), written as
/// F16 and multiplied by the 16-bit kernels after reloading, to the same logits.
#[test]
fn a_grid_no_block_type_stores_is_kept_in_f16_and_round_trips_bit_exactly() {
    let grid = QuantGrid::new(3, 32, true).unwrap();
    packed_output_round_trips_bit_exactly(Method::Rtn(grid), GgmlType::F16);
}
