//! The engine against independent references on the two real built-in models.
//!
//! The fixtures come from llama.cpp (token ids) and a float32 numpy forward pass over weights
//! dequantized by gguf-py (logits, residual norms, greedy completions); see
//! `../shared/fixtures/README.md`. Nothing here was produced by this project.

use refusal_core::chat::{Message, Role};
use refusal_core::gguf::GgmlType;
use refusal_core::load;
use refusal_core::model::{
    Capture, HookPoint, KvCache, Llama, NoHook, TokenBatch, WeightStorage, read_f32,
};
use refusal_lens::model::builtin::BuiltinModel;
use refusal_tests::{builtin_gguf, fixture, load_builtin_as, load_builtin_assets, widened_gguf};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    instruction: String,
    prompt: String,
    token_ids: Vec<u32>,
    top10_ids: Vec<usize>,
    top10_logits: Vec<f64>,
    logsumexp: f64,
    resid_pre_norm_last: Vec<f64>,
    greedy24_reference: String,
}

/// Logits of the f32 weights: f32 accumulation over ~900-wide dot products against a float32
/// reference that sums in another order; 2e-2 absolute is what the issue asks for and leaves
/// room for that only.
const LOGIT_TOL: f64 = 2e-2;
/// Logits of the weights kept as GGML blocks. Prompt batches that measure activations are
/// multiplied in f32 as above, but a product of at most a few rows (the head on one prompt's
/// last position, every step of decoding) quantizes its activations to 8 bits per block, as
/// llama.cpp does. Each activation
/// then moves by up to 1/254 of its block's largest magnitude; over the head's 576- and
/// 896-wide dot products that measured up to 0.14 on the two models' top-10 logits (logsumexp:
/// up to 0.065), against 2e-5 for prompt batches. 0.25 leaves room for prompts we do not test.
const QUANTIZED_LOGIT_TOL: f64 = 0.25;
/// A generation (`KvCache::generating`) rounds its activations to 8 bits in the products where
/// the kernels are faster, prompt rows included, as llama.cpp does, so its logits wander further
/// from the float reference than one rounded product's: on the six prompts up to 0.55 (SmolLM2)
/// and 0.19 (Qwen), where llama.cpp's own logits, measured against the same reference, are off
/// by up to 0.34 and 0.17. 0.75 leaves room for prompts we do not test.
///
/// A greedy completion may then leave the reference's, but only where the exact product's top
/// two tokens are within this of each other, and the exact product's choice there must continue
/// the reference (measured: 1 of 6 prompts on Qwen at a margin of 0.09, 3 of 6 on SmolLM2 at
/// 0.001-0.20).
const ROUNDED_LOGIT_TOL: f64 = 0.75;
/// Residual norms grow to a few hundred in late layers; compare relatively.
const NORM_REL_TOL: f64 = 1e-3;

fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// The index of the largest logit (the first of equals).
fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b })
}

fn check_logits(case: &Case, row: &[f32], what: &str, tol: f64) {
    check_logit_values(case, row, what, tol);
    assert_eq!(
        argmax(row),
        case.top10_ids[0],
        "{what} `{}`: top token",
        case.instruction
    );
}

/// The reference's top-10 logits and logsumexp, to `tol`.
fn check_logit_values(case: &Case, row: &[f32], what: &str, tol: f64) {
    for (&id, &want) in case.top10_ids.iter().zip(&case.top10_logits) {
        let got = row[id] as f64;
        assert!(
            (got - want).abs() <= tol,
            "{what} `{}`: logit of token {id} is {got}, reference {want}",
            case.instruction
        );
    }
    let lse = logsumexp(row);
    assert!(
        (lse - case.logsumexp).abs() <= tol,
        "{what} `{}`: logsumexp {lse}, reference {}",
        case.instruction,
        case.logsumexp
    );
}

fn check_model(model: BuiltinModel, fixture_name: &str, storage: WeightStorage) {
    let reference: Reference = fixture(fixture_name);
    let llama = load_builtin_as(model, storage);
    let tol = match storage {
        WeightStorage::F32 => LOGIT_TOL,
        WeightStorage::AsStored => QUANTIZED_LOGIT_TOL,
    };
    let device = llama.device();
    let n_layers = llama.config().n_layers;
    let vocab = llama.config().vocab_size;

    for case in &reference.cases {
        let batch = TokenBatch::left_padded(std::slice::from_ref(&case.token_ids), 0, &device);
        let mut capture = Capture::every_layer(n_layers, HookPoint::ResidPre, vec![1]);
        let row = read_f32(llama.last_logits(&batch, &mut capture));
        check_logits(case, &row, "alone", tol);
        if llama.has_quantized_weights() {
            let row = read_f32(llama.forward(&batch, &mut KvCache::generating(), &mut NoHook));
            check_logit_values(case, &row, "generation prompt", ROUNDED_LOGIT_TOL);
        }
        assert_eq!(case.resid_pre_norm_last.len(), n_layers);
        for (l, &want) in case.resid_pre_norm_last.iter().enumerate() {
            let x = read_f32(
                capture
                    .get(l, HookPoint::ResidPre)
                    .expect("captured")
                    .clone(),
            );
            let got = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!(
                (got - want).abs() <= NORM_REL_TOL * want.max(1.0),
                "`{}` layer {l}: |resid_pre| {got}, reference {want}",
                case.instruction
            );
        }
    }

    // All six prompts in one left-padded batch give the same answers.
    let prompts: Vec<Vec<u32>> = reference
        .cases
        .iter()
        .map(|c| c.token_ids.clone())
        .collect();
    let logits =
        read_f32(llama.last_logits(&TokenBatch::left_padded(&prompts, 0, &device), &mut NoHook));
    for (case, row) in reference.cases.iter().zip(logits.chunks_exact(vocab)) {
        check_logits(case, row, "batched", tol);
    }
    check_tokens_and_greedy(&llama, model, &reference);
}

fn check_tokens_and_greedy(llama: &Llama, model: BuiltinModel, reference: &Reference) {
    let assets = refusal_tests::load_builtin_assets(model);
    for case in &reference.cases {
        let prompt = assets
            .chat
            .user_prompt(&case.instruction, None)
            .unwrap_or_else(|e| panic!("{e}"));
        // The model's own template inserts a default system turn; "no system prompt" must
        // remove it (the fixtures are plain ChatML user turns).
        assert_eq!(
            prompt.text,
            case.prompt,
            "chat template of {}",
            model.alias()
        );
        assert_eq!(prompt.suffix, "<|im_end|>\n<|im_start|>assistant\n");
        let own = assets
            .chat
            .render(&[Message::new(Role::User, case.instruction.clone())], true)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(own.starts_with("<|im_start|>system\n") && own.ends_with(&case.prompt));
        let with_system = assets
            .chat
            .user_prompt(&case.instruction, Some("Be brief."))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            with_system.text,
            format!("<|im_start|>system\nBe brief.<|im_end|>\n{}", case.prompt)
        );
        let ids = assets
            .tokenizer
            .encode(&case.prompt, false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids, case.token_ids, "token ids of `{}`", case.instruction);
        let text = assets
            .tokenizer
            .decode(&ids, false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(text, case.prompt, "decoding `{}`", case.instruction);
    }
    let prompts: Vec<Vec<u32>> = reference
        .cases
        .iter()
        .map(|c| c.token_ids.clone())
        .collect();
    let completions = refusal_tests::greedy_tokens(llama, &assets.tokenizer, &prompts, 24);
    for (case, tokens) in reference.cases.iter().zip(completions) {
        let text = |t: &[u32]| {
            assets
                .tokenizer
                .decode(t, true)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        // f32 weights round nothing: token for token.
        if !llama.has_quantized_weights() {
            assert_eq!(
                text(&tokens),
                case.greedy24_reference,
                "greedy completion of `{}`",
                case.instruction
            );
            continue;
        }
        // The first token whose text leaves the reference's completion.
        let Some(p) = (1..=tokens.len()).find(|&n| {
            let ours = text(&tokens[..n]);
            !case.greedy24_reference.starts_with(&ours)
                && !ours.starts_with(&case.greedy24_reference)
        }) else {
            continue;
        };
        let p = p - 1;
        let mut context = case.token_ids.clone();
        context.extend(&tokens[..p]);
        let batch = TokenBatch::left_padded(std::slice::from_ref(&context), 0, &llama.device());
        let row = read_f32(llama.last_logits(&batch, &mut NoHook));
        let best = argmax(&row);
        let mut exact = tokens[..p].to_vec();
        exact.push(best as u32);
        assert!(
            case.greedy24_reference.starts_with(&text(&exact)),
            "`{}`: the exact product's choice after {p} tokens, {:?}, leaves the reference",
            case.instruction,
            text(&exact)
        );
        let margin = (row[best] - row[tokens[p] as usize]) as f64;
        assert!(
            margin <= ROUNDED_LOGIT_TOL,
            "`{}`: generation chose {:?} after {p} tokens ({:?}), {margin} logits below the \
             exact choice",
            case.instruction,
            text(&tokens[p..=p]),
            text(&tokens[..p])
        );
    }
}

const SMOLLM2: (BuiltinModel, &str) = (BuiltinModel::SmolLm2_135m, "smollm2-135m.reference.json");
const QWEN: (BuiltinModel, &str) = (
    BuiltinModel::Qwen25Coder0_5b,
    "qwen2.5-coder-0.5b.reference.json",
);

#[test]
fn smollm2_quantized_matches_the_float_reference() {
    check_model(SMOLLM2.0, SMOLLM2.1, WeightStorage::AsStored);
}

#[test]
fn qwen25_coder_quantized_matches_the_float_reference() {
    check_model(QWEN.0, QWEN.1, WeightStorage::AsStored);
}

#[test]
fn smollm2_f32_matches_the_float_reference() {
    check_model(SMOLLM2.0, SMOLLM2.1, WeightStorage::F32);
}

#[test]
fn qwen25_coder_f32_matches_the_float_reference() {
    check_model(QWEN.0, QWEN.1, WeightStorage::F32);
}

/// Logits of a 16-bit model on its own kernels against the same values widened to f32 and
/// multiplied densely: both compute exact products in f32 and differ only in the order of the
/// sums, which over SmolLM2's 576- and 1536-wide products moved its logits by at most 1.6e-5
/// (F16 and BF16 alike); 1e-4 leaves room for prompts we do not test.
const SIXTEEN_BIT_LOGIT_TOL: f32 = 1e-4;

/// A 16-bit copy of SmolLM2 (its dequantized blocks rounded to F16, or BF16) multiplied by the
/// 16-bit kernels, against the same file widened to f32 at load (the path checked against the
/// float reference above): the same logits to [`SIXTEEN_BIT_LOGIT_TOL`], alone and batched,
/// and the same greedy completions token for token (every decoding step runs the kernels).
#[test]
fn smollm2_in_16_bits_runs_as_its_f32_widening() {
    let path = builtin_gguf(SMOLLM2.0);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reference: Reference = fixture(SMOLLM2.1);
    let prompts: Vec<Vec<u32>> = reference
        .cases
        .iter()
        .map(|c| c.token_ids.clone())
        .collect();
    let assets = load_builtin_assets(SMOLLM2.0);
    let device = burn::tensor::Device::flex();
    for ty in [GgmlType::F16, GgmlType::BF16] {
        let widened = widened_gguf(&bytes, ty);
        let file = load::gguf::parse("widened", &widened).unwrap_or_else(|e| panic!("{e}"));
        let load = |storage| {
            let options = load::LoadOptions {
                storage,
                release: None,
            };
            load::gguf_model("widened", &file, &widened, &device, options, &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let (kept, dense) = (load(WeightStorage::AsStored), load(WeightStorage::F32));
        assert_eq!(kept.weight_types(), vec![(ty.name().to_string(), 211)]);
        let mut batches: Vec<TokenBatch> = prompts
            .iter()
            .map(|p| TokenBatch::left_padded(std::slice::from_ref(p), 0, &device))
            .collect();
        batches.push(TokenBatch::left_padded(&prompts, 0, &device));
        let mut worst = 0.0f32;
        for batch in &batches {
            let a = read_f32(kept.last_logits(batch, &mut NoHook));
            let b = read_f32(dense.last_logits(batch, &mut NoHook));
            worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(worst, f32::max);
        }
        assert!(
            worst <= SIXTEEN_BIT_LOGIT_TOL,
            "{ty}: logits differ by {worst}"
        );
        assert_eq!(
            refusal_tests::greedy(&kept, &assets.tokenizer, &prompts, 24),
            refusal_tests::greedy(&dense, &assets.tokenizer, &prompts, 24),
            "{ty}: greedy completions"
        );
    }
}
