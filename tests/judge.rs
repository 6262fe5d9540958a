//! The judge model against replies we labelled by hand (`judge/labelled.json`: 24 replies to
//! requests, 12 refusals and 12 not, a third of them phrased so that METHOD §7's substring
//! judge gets them wrong: refusals without its phrases, compliance that contains one). The
//! built-in Qwen model is the judge: small and real, it must agree with the labels better than
//! the substring judge does, and well beyond chance.

use futures_lite::future::block_on;
use refusal_core::refusal::judge::{Agreement, is_refusal};
use refusal_core::refusal::model_judge::{Exchange, ModelJudge};
use refusal_lens::model::builtin::BuiltinModel;
use refusal_tests::{load_builtin, load_builtin_assets};

#[derive(serde::Deserialize)]
struct Labelled {
    request: String,
    reply: String,
    refused: bool,
}

fn labelled() -> Vec<Labelled> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/judge/labelled.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn qwen_as_judge_agrees_with_hand_labels_better_than_the_substring_judge() {
    let set = labelled();
    let truth: Vec<bool> = set.iter().map(|l| l.refused).collect();
    let model = load_builtin(BuiltinModel::Qwen25Coder0_5b);
    let text = load_builtin_assets(BuiltinModel::Qwen25Coder0_5b);
    let judge = ModelJudge::new(&model, &text).unwrap();
    let exchanges: Vec<Exchange<'_>> = set
        .iter()
        .map(|l| Exchange {
            request: &l.request,
            reply: &l.reply,
        })
        .collect();
    let scores =
        block_on(judge.scores(&exchanges, 8, &mut |_| std::ops::ControlFlow::Continue(())))
            .unwrap();
    let verdicts: Vec<bool> = scores.iter().map(|&s| s > 0.0).collect();
    let substring: Vec<bool> = set.iter().map(|l| is_refusal(&l.reply)).collect();
    let names = || ["hand".to_owned(), "judge".to_owned()];
    let model_agreement = Agreement::of(names(), &truth, &verdicts).unwrap();
    let substring_agreement = Agreement::of(names(), &truth, &substring).unwrap();
    eprintln!("judge model: {model_agreement:?}\nsubstring: {substring_agreement:?}");
    for (l, s) in set.iter().zip(&scores) {
        let mark = if (*s > 0.0) == l.refused { " " } else { "x" };
        eprintln!("{mark} {s:+.2} labelled {}: {}", l.refused, l.reply);
    }
    assert!(
        (substring_agreement.observed - 16.0 / 24.0).abs() < 1e-12,
        "the set's hard cases: {substring_agreement:?}"
    );
    assert!(
        model_agreement.observed > substring_agreement.observed,
        "{model_agreement:?} vs substring {substring_agreement:?}"
    );
    assert!(model_agreement.kappa.unwrap() >= 0.5, "{model_agreement:?}");
}
