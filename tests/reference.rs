//! The engine against independent references on the two real built-in models.
//!
//! The fixtures come from llama.cpp (token ids) and a float32 numpy forward pass over weights
//! dequantized by gguf-py (logits, residual norms, greedy completions); see
//! `../shared/fixtures/README.md`. Nothing here was produced by this project.

use refusal_core::chat::{Message, Role};
use refusal_core::model::{Capture, HookPoint, Llama, NoHook, TokenBatch, read_f32};
use refusal_lens::source::BuiltinModel;
use refusal_tests::{fixture, load_builtin};
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

/// Logits: f32 accumulation over ~900-wide dot products against a float32 reference that sums
/// in another order; 2e-2 absolute is what the issue asks for and leaves room for that only.
const LOGIT_TOL: f64 = 2e-2;
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

fn check_logits(case: &Case, row: &[f32], what: &str) {
    for (&id, &want) in case.top10_ids.iter().zip(&case.top10_logits) {
        let got = row[id] as f64;
        assert!(
            (got - want).abs() <= LOGIT_TOL,
            "{what} `{}`: logit of token {id} is {got}, reference {want}",
            case.instruction
        );
    }
    let lse = logsumexp(row);
    assert!(
        (lse - case.logsumexp).abs() <= LOGIT_TOL,
        "{what} `{}`: logsumexp {lse}, reference {}",
        case.instruction,
        case.logsumexp
    );
    let argmax = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
    assert_eq!(
        argmax, case.top10_ids[0],
        "{what} `{}`: top token",
        case.instruction
    );
}

fn check_model(model: BuiltinModel, fixture_name: &str) {
    let reference: Reference = fixture(fixture_name);
    let llama = load_builtin(model);
    let device = llama.device();
    let n_layers = llama.config().n_layers;
    let vocab = llama.config().vocab_size;

    for case in &reference.cases {
        let batch = TokenBatch::left_padded(std::slice::from_ref(&case.token_ids), 0, &device);
        let mut capture = Capture::every_layer(n_layers, HookPoint::ResidPre, vec![1]);
        let row = read_f32(llama.last_logits(&batch, &mut capture));
        check_logits(case, &row, "alone");
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
        check_logits(case, row, "batched");
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
    let completions = refusal_tests::greedy(llama, &assets.tokenizer, &prompts, 24);
    for (case, text) in reference.cases.iter().zip(completions) {
        assert_eq!(
            text, case.greedy24_reference,
            "greedy completion of `{}`",
            case.instruction
        );
    }
}

#[test]
fn smollm2_matches_the_float_reference() {
    check_model(BuiltinModel::SmolLm2_135m, "smollm2-135m.reference.json");
}

#[test]
fn qwen25_coder_matches_the_float_reference() {
    check_model(
        BuiltinModel::Qwen25Coder0_5b,
        "qwen2.5-coder-0.5b.reference.json",
    );
}
