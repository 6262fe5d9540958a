//! Refusal directions on the real built-in models against the independent reference, and
//! ablation as an exact projection on them.
//!
//! `directions_last_token.mean_diff` in the fixtures is mean(harmful) - mean(harmless) of
//! resid_pre at the last position over the first 32 prompts of each training split, computed
//! by a float32 numpy forward pass outside the project (`../shared/fixtures/README.md`).

use futures_lite::future::block_on;
use refusal_core::model::{Capture, HookPoint, KvCache, TokenBatch, read_f32};
use refusal_core::refusal::directions::extract;
use refusal_core::refusal::prompts::{self, Prompt, PromptFormat};
use refusal_core::refusal::{EncodedPrompts, Intervention};
use refusal_lens::model::builtin::BuiltinModel;
use refusal_tests::{fixture, load_builtin, load_builtin_assets, shared_dir};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    directions_last_token: Directions,
}

#[derive(Deserialize)]
struct Directions {
    n_harmful: usize,
    n_harmless: usize,
    mean_diff: Vec<Vec<f64>>,
}

/// The bounds: the reference sums in float32 numpy, we in f64 over f32 activations.
const MIN_COSINE: f64 = 0.999;
const MAX_NORM_ERROR: f64 = 0.01;

fn data(name: &str) -> Vec<Prompt> {
    let path = shared_dir().join("data").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    prompts::parse(name, &bytes, PromptFormat::InstructionJson).unwrap_or_else(|e| panic!("{e}"))
}

fn check_model(model: BuiltinModel) {
    let reference: Reference = fixture(&format!("{}.reference.json", model.alias()));
    let want = reference.directions_last_token;
    let llama = load_builtin(model);
    let assets = load_builtin_assets(model);
    let harmful: Vec<Prompt> = data("harmful_train.json")
        .into_iter()
        .take(want.n_harmful)
        .collect();
    let harmless: Vec<Prompt> = data("harmless_train.json")
        .into_iter()
        .take(want.n_harmless)
        .collect();
    let harmful = EncodedPrompts::new(&assets, &harmful, None).unwrap();
    let harmless = EncodedPrompts::new(&assets, &harmless, None).unwrap();
    // The post-instruction positions are exactly the ChatML text after the instruction.
    let ids = &harmful.ids[0];
    let tail = assets
        .tokenizer
        .decode(&ids[ids.len() - harmful.post_instruction..], false)
        .unwrap();
    assert_eq!(
        tail,
        "<|im_end|>\n<|im_start|>assistant\n",
        "{}",
        model.alias()
    );
    let mut quiet = |_| std::ops::ControlFlow::Continue(());
    let got = block_on(extract(&llama, &harmful, &harmless, 16, &mut quiet)).unwrap();
    let last = got.position_index(-1).unwrap();
    assert_eq!(want.mean_diff.len(), got.n_layers);
    for (layer, reference) in want.mean_diff.iter().enumerate().skip(1) {
        let ours: Vec<f64> = got
            .direction(layer, last)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let dot: f64 = ours.iter().zip(reference).map(|(a, b)| a * b).sum();
        let (na, nb) = (
            ours.iter().map(|v| v * v).sum::<f64>().sqrt(),
            reference.iter().map(|v| v * v).sum::<f64>().sqrt(),
        );
        let cosine = dot / (na * nb);
        let norm_error = (na - nb).abs() / nb;
        assert!(
            cosine >= MIN_COSINE && norm_error <= MAX_NORM_ERROR,
            "{} layer {layer}: cosine {cosine}, norm error {norm_error}",
            model.alias()
        );
    }

    // Ablating a real direction leaves no component along it at any layer (METHOD §5).
    let layer = got.n_layers / 2;
    let direction = got.direction(layer, last);
    let norm = direction.iter().map(|v| v * v).sum::<f32>().sqrt();
    let mut hook = Intervention::Ablate {
        direction: direction.clone(),
    }
    .hook(&llama)
    .unwrap();
    let mut capture = Capture::new(
        (0..got.n_layers)
            .flat_map(|l| {
                [
                    (l, HookPoint::AttnOut),
                    (l, HookPoint::MlpOut),
                    (l, HookPoint::ResidPost),
                ]
            })
            .collect(),
        vec![],
    );
    let batch = TokenBatch::left_padded(&harmful.ids[..4], 0, &llama.device());
    llama.hidden(&batch, &mut KvCache::new(), &mut (&mut hook, &mut capture));
    let device = llama.device();
    let unit = burn::tensor::Tensor::<1>::from_data(
        burn::tensor::TensorData::new(
            direction.iter().map(|v| v / norm).collect::<Vec<_>>(),
            [direction.len()],
        ),
        &device,
    );
    let pad = batch.padding().to_vec();
    for ((l, point), x) in capture.into_captured() {
        let [n, s, d] = x.dims();
        let along = read_f32(
            x.clone()
                .matmul(unit.clone().reshape([1, d, 1]))
                .reshape([n * s]),
        );
        let norms = read_f32(x.square().sum_dim(2).sqrt().reshape([n * s]));
        for (i, (a, m)) in along.iter().zip(&norms).enumerate() {
            if i % s < pad[i / s] {
                continue; // padding positions are masked out and never read
            }
            assert!(
                a.abs() <= 1e-4 * m,
                "{} layer {l} {point:?}: |x.r^| = {a} for |x| = {m}",
                model.alias()
            );
        }
    }
}

#[test]
fn smollm2_directions_match_the_reference_and_ablation_projects_them_out() {
    check_model(BuiltinModel::SmolLm2_135m);
}

#[test]
fn qwen_directions_match_the_reference_and_ablation_projects_them_out() {
    check_model(BuiltinModel::Qwen25Coder0_5b);
}
