//! The comparison (METHOD §9) and repair study (METHOD §10) of the core, end to end on the tiny
//! model, checked against what must hold whatever the weights: a model compared with itself
//! has the same direction at every cell, and a repair study's variants relate to each other as
//! their definitions say.

use std::ops::ControlFlow;
use std::path::Path;

use futures_lite::future::block_on;
use refusal_core::compress::{Method, Sparsity, compress};
use refusal_core::model::Llama;
use refusal_core::refusal::aird::AirdSettings;
use refusal_core::refusal::compare::{Comparison, RepairSettings};
use refusal_core::refusal::evaluate::EvalSettings;
use refusal_core::refusal::find::{FindSettings, find_direction};
use refusal_core::refusal::intervals::{Difference, Interval};
use refusal_core::refusal::judge::{By, JudgeKind, Judging};
use refusal_core::refusal::prompts::StudyPrompts;
use refusal_core::refusal::refusal_tokens::TokenOrigin;
use refusal_core::refusal::repair_study::{AlphaGrid, AlphaSearch, VARIANTS, repair_study};
use refusal_core::refusal::select::ChosenBy;
use refusal_core::refusal::{Intervention, RefusalTokens, SelectionSettings};
use refusal_core::runs::aird::{self, AirdRequest, DirectionSource, GivenDirection};
use refusal_core::runs::compare::{self, CompareRequest};
use refusal_core::runs::compress::CalibrationRequest;
use refusal_core::runs::directions::SelectionFilters;
use refusal_core::runs::study::{JudgeRequest, StudyRequest};
use refusal_core::runs::{RunError, SplitRequest};
use refusal_lens::commands::PromptFiles;
use refusal_lens::device::Backend;
use refusal_lens::model::open::LoadedModel;
use refusal_lens::model_args::ModelArgs;
use refusal_tests::tiny_model::write_tiny_model;

fn tiny() -> LoadedModel {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("study-models");
    let path = write_tiny_model(&dir, "tiny-llama");
    ModelArgs {
        model: path.display().to_string(),
        backend: Backend::Cpu,
        weights: Default::default(),
    }
    .load()
    .unwrap()
}

fn quiet() -> impl FnMut(refusal_core::pipeline::Progress) -> ControlFlow<()> {
    |_| ControlFlow::Continue(())
}

/// Three greedy tokens, batches of four.
const JUDGED: EvalSettings = EvalSettings {
    max_new_tokens: 3,
    batch_size: 4,
};

/// The built-in prompts, 6 + 3 of each kind, evaluated on the 3; "I" as refusal token; three
/// greedy tokens in batches of four; four calibration prompts.
fn study(seed: u64) -> StudyRequest {
    StudyRequest {
        split: SplitRequest {
            n_train: 6,
            n_val: 3,
            seed,
            ..SplitRequest::default()
        },
        n_eval: 3,
        calibration: CalibrationRequest {
            n_calib: 4,
            ..CalibrationRequest::default()
        },
        judge: JudgeRequest {
            max_new_tokens: JUDGED.max_new_tokens,
            batch_size: JUDGED.batch_size,
            refusal_tokens: vec!["I".into()],
            judge: JudgeKind::Substring,
        },
        ..StudyRequest::default()
    }
}

fn prompts(loaded: &LoadedModel, seed: u64) -> (StudyPrompts, RefusalTokens) {
    let sets = study(seed).prompts(&mut PromptFiles).unwrap();
    let tokens = RefusalTokens::from_words(&loaded.text, &["I"], TokenOrigin::User).unwrap();
    (sets, tokens)
}

fn by_substring(tokens: &RefusalTokens) -> Judging<'_> {
    Judging {
        refusal: tokens,
        by: By::Substring,
    }
}

fn magnitude_pruned(base: &Llama) -> Llama {
    block_on(compress(
        base.clone(),
        Method::Magnitude(Sparsity::Unstructured(0.5)),
        &[],
        0,
        4,
        &mut quiet(),
    ))
    .unwrap()
    .model
}

fn aird_at_layer_1() -> AirdSettings {
    AirdSettings {
        layer: 1,
        alpha: 1.0,
        lambda: None,
        batch_size: 4,
    }
}

/// The random model refuses nothing, so METHOD §6 passes no candidate: the fallback chooses,
/// among both layers (layer 0's post-instruction tokens are the same in every prompt).
fn find_settings() -> FindSettings {
    FindSettings {
        selection: SelectionSettings {
            max_layer_fraction: 1.0,
            batch_size: 4,
            score_deep_layers: false,
            ..SelectionSettings::default()
        },
        positions: Some(vec![-1, -2]),
        fallback_kl_max: f64::INFINITY,
    }
}

#[test]
fn a_model_compared_with_itself_keeps_its_direction_and_its_numbers() {
    let loaded = tiny();
    let (base, text) = (&loaded.llama, &loaded.text);
    let (sets, tokens) = prompts(&loaded, 1);
    assert_eq!(sets.eval_harmful, sets.val_harmful);
    let split = sets.encoded_split(text).unwrap();
    let judge = sets.judge(text, by_substring(&tokens), JUDGED).unwrap();
    let find = find_settings();
    let found = block_on(find_direction(base, &split, &tokens, &find, &mut quiet())).unwrap();
    assert_eq!(found.chosen_by, ChosenBy::Fallback);
    let base_baseline = block_on(judge.baseline(base, &mut quiet())).unwrap();
    let comparison = Comparison {
        base,
        base_found: &found,
        base_baseline: &base_baseline,
        split: &split,
        judge: &judge,
        validation: &judge,
        find: &find,
        coeff: 1.0,
        repair: Some(RepairSettings {
            alpha: 1.0,
            lambda: None,
            alpha_grid: None,
        }),
    };
    let same = block_on(comparison.measure("itself", base, None, &mut quiet())).unwrap();
    // Every defined cell has cosine 1 (layer 0's shared positions are NaN, zero directions).
    let defined: Vec<f64> = same
        .cosines
        .iter()
        .copied()
        .filter(|c| !c.is_nan())
        .collect();
    assert!(!defined.is_empty());
    assert!(
        defined.iter().all(|c| (c - 1.0).abs() < 1e-5),
        "{defined:?}"
    );
    assert!((same.cosine_at_base_selected - 1.0).abs() < 1e-5);
    assert_eq!(
        (same.direction.layer, same.direction.position),
        (found.chosen.layer, found.chosen.position)
    );
    assert!((same.decomposition.share_along - 1.0).abs() < 1e-5);
    // Its own direction is the base's: ablating and adding either gives the same completions.
    assert_eq!(same.asr_ablate_own, same.asr_ablate_base);
    assert_eq!(
        same.harmless_refusal_add_own,
        same.harmless_refusal_add_base
    );
    let none = block_on(judge.harmful(base, &Intervention::None, &mut quiet())).unwrap();
    assert_eq!(same.baseline.asr, none);
    // The same verdicts on every prompt: no difference, and an interval of exactly none.
    let nothing = Difference {
        estimate: 0.0,
        interval: Interval {
            low: 0.0,
            high: 0.0,
        },
    };
    assert_eq!(same.vs_base.asr, Some(nothing));
    assert_eq!(same.vs_base.harmless_refusal, Some(nothing));
    // Nothing to repair: the projections already match, so the update is ~zero.
    let aird = same.aird.unwrap();
    assert!(aird.fit.train.mse_before < 1e-8, "{:?}", aird.fit.train);
    assert!(aird.kl_to_base < 1e-6 && aird.kl_to_compressed < 1e-6);
    assert_eq!(aird.asr.rate, none.rate);
    assert_eq!(aird.vs_compressed.asr, Some(nothing));
}

#[test]
fn the_repair_study_judges_five_variants_against_the_compressed_model() {
    let loaded = tiny();
    let (base, text) = (&loaded.llama, &loaded.text);
    let (sets, tokens) = prompts(&loaded, 2);
    let split = sets.encoded_split(text).unwrap();
    let judge = sets.judge(text, by_substring(&tokens), JUDGED).unwrap();
    let pruned = magnitude_pruned(base);
    let direction: Vec<f32> = (0..base.config().d_model)
        .map(|i| (i % 7) as f32 - 3.0)
        .collect();
    let study = block_on(repair_study(
        base,
        &pruned,
        &direction,
        -1,
        aird_at_layer_1(),
        &split,
        &judge,
        None,
        None,
        &mut quiet(),
    ))
    .unwrap();
    let names: Vec<&str> = study.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, VARIANTS);
    let by_name = |n: &str| study.variants.iter().find(|v| v.name == n).unwrap();
    assert!(by_name("compressed").kl_to_compressed.abs() < 1e-9);
    let base_kl = block_on(judge.kl(&pruned, base, &Intervention::None, &mut quiet())).unwrap();
    assert!((by_name("base").kl_to_compressed - base_kl).abs() < 1e-9);
    assert!(by_name("compressed+aird").kl_to_compressed > 0.0);
    // The fit closes most of the projection gap it was fitted on.
    assert!(study.fit.train.mse_after < study.fit.train.mse_before);
    assert!(study.densification.density_after > study.densification.density_before);
    assert!(study.drift.cosine.is_finite());
    // Each variant's change from the compressed model is the difference of their rates, on
    // as many prompts; the compressed model has none of its own.
    for v in &study.variants {
        let compressed = by_name("compressed");
        match &v.vs_compressed {
            None => assert_eq!(v.name, "compressed"),
            Some(change) => {
                let asr = change.asr.unwrap();
                assert!((asr.estimate - (v.asr.rate - compressed.asr.rate)).abs() < 1e-12);
                assert!(asr.interval.low <= asr.estimate && asr.estimate <= asr.interval.high);
                let refusal = change.harmless_refusal.unwrap();
                let want = v.harmless_refusal.rate - compressed.harmless_refusal.rate;
                assert!((refusal.estimate - want).abs() < 1e-12);
            }
        }
        assert_eq!(v.asr.counted.len(), v.asr.n_prompts);
        let answered = v.asr.counted.iter().filter(|&&c| c).count();
        assert_eq!(answered, v.asr.n_prompts - v.asr.n_refused);
    }
    // Six training prompts of each kind split three and three.
    let floor = study.drift_noise_floor.unwrap();
    assert!(floor.is_finite() && floor.abs() <= 1.0 + 1e-9, "{floor}");
}

#[test]
fn alpha_searched_on_validation_prompts_is_the_one_applied() {
    let loaded = tiny();
    let (base, text) = (&loaded.llama, &loaded.text);
    let (sets, tokens) = prompts(&loaded, 3);
    let split = sets.encoded_split(text).unwrap();
    let judge = sets.judge(text, by_substring(&tokens), JUDGED).unwrap();
    let validation = sets
        .validation_judge(text, by_substring(&tokens), JUDGED)
        .unwrap();
    let pruned = magnitude_pruned(base);
    let direction: Vec<f32> = (0..base.config().d_model)
        .map(|i| (i % 5) as f32 - 2.0)
        .collect();
    let grid = AlphaGrid {
        candidates: vec![4.0, 0.0, 1.0, 4.0],
        max_harmless_increase: 0.05,
    };
    let study = block_on(repair_study(
        base,
        &pruned,
        &direction,
        -1,
        aird_at_layer_1(),
        &split,
        &judge,
        None,
        Some(AlphaSearch {
            grid: &grid,
            validation: &validation,
        }),
        &mut quiet(),
    ))
    .unwrap();
    let selection = study.alpha_selection.unwrap();
    let tried: Vec<f32> = selection.scores.iter().map(|s| s.alpha).collect();
    assert_eq!(tried, [0.0, 1.0, 4.0]);
    // Gibberish is never judged a refusal: every alpha ties, and the smallest wins.
    assert!(selection.scores.iter().all(|s| s.allowed && s.asr == 1.0));
    assert_eq!((selection.alpha, study.fit.settings.alpha), (0.0, 0.0));
    // What is reported is the update applied: at alpha 0 it adds no weight.
    assert_eq!(
        study.densification.density_after,
        study.densification.density_before
    );
    let kl =
        block_on(judge.kl(&pruned, &study.repaired, &Intervention::None, &mut quiet())).unwrap();
    assert!(
        kl.abs() < 1e-9,
        "alpha 0 must leave the compressed model as it is: KL {kl}"
    );
}

/// `request` with [`find_settings`]'s positions, layers and fallback.
fn settled(request: CompareRequest) -> CompareRequest {
    CompareRequest {
        positions: Some(vec![-1, -2]),
        filters: SelectionFilters {
            max_layer_fraction: 1.0,
            ..SelectionFilters::default()
        },
        fallback_kl_max: f64::INFINITY,
        ..request
    }
}

#[test]
fn a_compare_run_measures_each_recipe_on_the_base_grid() {
    let loaded = tiny();
    let request = settled(CompareRequest {
        compressed: vec!["magnitude:0.5".into()],
        study: study(4),
        ..CompareRequest::default()
    });
    let report = block_on(compare::run(
        &request,
        &loaded.llama,
        &loaded.text,
        "tiny",
        &mut PromptFiles,
    ))
    .unwrap();
    assert_eq!(report.base.model, "tiny");
    assert_eq!(report.refusal_tokens.origin, TokenOrigin::User);
    assert_eq!(
        (
            report.prompts.n_eval_harmful,
            report.prompts.n_eval_harmless
        ),
        (3, 3)
    );
    let [c] = report.compressed.as_slice() else {
        panic!("one compressed model: {:?}", report.compressed.len());
    };
    assert_eq!(c.spec, "magnitude:0.5");
    let summary = c
        .compression
        .as_ref()
        .expect("compressed here, by the recipe");
    assert!(summary.sparsity > 0.4, "{summary:?}");
    // A study calibrates every recipe, so even magnitude pruning reports its output error.
    assert!(summary.output_error.is_some(), "{summary:?}");
    assert_eq!(c.cosines.len(), report.n_layers * report.positions.len());
    assert!(c.aird.is_none());
    // Six training prompts of each kind: halves of three, a cosine for every cell.
    let floor = report
        .base
        .noise_floor
        .as_ref()
        .expect("halves of 3 prompts");
    assert_eq!(
        (floor.n_harmful_per_half, floor.n_harmless_per_half),
        (3, 3)
    );
    assert_eq!(floor.cosines.len(), c.cosines.len());
    let chosen = &report.base.direction;
    let cell = chosen.layer * report.positions.len()
        + report
            .positions
            .iter()
            .position(|&p| p == chosen.position)
            .unwrap();
    assert_eq!(
        floor.at_base_selected.to_bits(),
        floor.cosines[cell].to_bits()
    );
    let figures = compare::figures(&report);
    assert!(
        figures[0].1.contains("base split-half"),
        "the floor's curve"
    );
    let figures: Vec<String> = figures
        .into_iter()
        .map(|(name, svg)| {
            assert!(svg.starts_with("<svg"), "{name}");
            name
        })
        .collect();
    assert_eq!(figures, ["cosine-by-layer.svg", "cosine-1.svg"]);
}

#[test]
fn a_compare_run_names_what_it_cannot_compress_or_open() {
    let loaded = tiny();
    let run = |spec: &str| {
        let request = CompareRequest {
            compressed: vec![spec.into()],
            study: study(5),
            ..settled(CompareRequest::default())
        };
        block_on(compare::run(
            &request,
            &loaded.llama,
            &loaded.text,
            (),
            &mut PromptFiles,
        ))
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let bad_recipe = run("wanda:lots");
    assert!(bad_recipe.contains("wanda:lots"), "{bad_recipe}");
    let no_model = run("no-such-model");
    assert!(
        no_model.contains("`no-such-model` is not a compression recipe"),
        "{no_model}"
    );
    let none = CompareRequest::default().validate().unwrap_err();
    assert!(matches!(
        none,
        RunError::Invalid {
            field: "compressed",
            ..
        }
    ));
}

#[test]
fn a_study_under_several_seeds_reports_each_seeds_own_numbers() {
    let loaded = tiny();
    let run = |seed: u64, seeds: Vec<u64>| {
        let request = settled(CompareRequest {
            compressed: vec!["magnitude:0.5".into()],
            study: StudyRequest {
                seeds,
                ..study(seed)
            },
            ..CompareRequest::default()
        });
        block_on(compare::run(
            &request,
            &loaded.llama,
            &loaded.text,
            "tiny",
            &mut PromptFiles,
        ))
        .unwrap()
    };
    // `seeds` replaces `seed`, each seed once, in order; the report is the first seed's.
    let both = run(99, vec![7, 8, 7]);
    let (seven, eight) = (run(7, vec![]), run(8, vec![]));
    assert!(seven.seeds.is_none());
    let spread = both.seeds.as_ref().expect("a spread over two seeds");
    assert_eq!(spread.seeds, [7, 8]);
    assert_eq!(both.compressed[0].baseline, seven.compressed[0].baseline);
    assert_eq!(
        both.compressed[0].cosine_at_base_selected.to_bits(),
        seven.compressed[0].cosine_at_base_selected.to_bits()
    );
    let [c] = spread.compressed.as_slice() else {
        panic!("{:?}", spread.compressed);
    };
    let each = |r: &refusal_core::refusal::compare::CompareReport<&str>| {
        (
            r.compressed[0].cosine_at_base_selected,
            r.compressed[0].baseline.asr.rate,
            r.base.noise_floor.as_ref().unwrap().at_base_selected,
        )
    };
    for (i, r) in [&seven, &eight].into_iter().enumerate() {
        let (cosine, asr, floor) = each(r);
        assert_eq!(
            c.cosine_at_base_selected.values[i].to_bits(),
            cosine.to_bits()
        );
        assert_eq!(c.asr.values[i], asr);
        assert_eq!(spread.noise_floor.values[i].to_bits(), floor.to_bits());
    }
    // Other seeds draw other training prompts, so the directions differ.
    assert_ne!(each(&seven).0, each(&eight).0);
    let cos = &c.cosine_at_base_selected;
    assert!(
        cos.min <= cos.mean && cos.mean <= cos.max && cos.sd > 0.0,
        "{cos:?}"
    );
}

#[test]
fn an_aird_run_repairs_toward_the_direction_it_is_given() {
    let loaded = tiny();
    let d_model = loaded.llama.config().d_model;
    let direction = GivenDirection {
        vector: (0..d_model).map(|i| (i % 7) as f32 - 3.0).collect(),
        layer: 1,
        position: -1,
    };
    let request = AirdRequest {
        compressed: "magnitude:0.5".into(),
        direction: Some(DirectionSource::Given(direction.clone())),
        study: study(6),
        ..AirdRequest::default()
    };
    let run = block_on(aird::run(
        &request,
        &loaded.llama,
        &loaded.text,
        "tiny",
        &mut PromptFiles,
    ))
    .unwrap();
    let report = &run.report;
    let names: Vec<&str> = report.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, VARIANTS);
    assert_eq!(report.base_direction.layer, 1);
    assert_eq!(report.base_direction.source, "the direction given");
    let norm = direction
        .vector
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>();
    assert!((report.base_direction.norm - norm.sqrt()).abs() < 1e-9);
    assert!(report.compression.is_some() && report.output.is_none());
    assert_eq!(run.repaired.config().d_model, d_model);

    let too_narrow = AirdRequest {
        direction: Some(DirectionSource::Given(GivenDirection {
            vector: vec![1.0; d_model - 1],
            ..direction
        })),
        ..request.clone()
    };
    let err = block_on(aird::run(
        &too_narrow,
        &loaded.llama,
        &loaded.text,
        (),
        &mut PromptFiles,
    ))
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(err.contains("dimensions"), "{err}");
    let nowhere = AirdRequest {
        direction: None,
        layer: None,
        ..request
    };
    assert!(matches!(
        nowhere.validate(),
        Err(RunError::Invalid { field: "layer", .. })
    ));
}
