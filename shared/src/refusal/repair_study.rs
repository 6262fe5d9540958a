//! AIRD against its two baselines (METHOD §10): a compressed model repaired by AIRD, and the
//! same model with the base direction added at `l*`, or orthogonalized against the part of its
//! own direction that drifted away from the base's, each judged like the base and the
//! compressed model themselves.

use crate::compress::Summary;
use crate::model::Llama;

use super::aird::{AirdFit, AirdSettings, Densification, Repaired, compressed_direction, repair};
use super::compare::{Decomposition, decompose};
use super::evaluate::{CrossEntropy, Judge, Judged, cross_entropy};
use super::orthogonalize::orthogonalize;
use super::prompts::PromptUses;
use super::{EncodedSplit, Intervention, OnProgress, PipelineError};

/// The variants, in the order a report lists them.
pub const VARIANTS: [&str; 5] = [
    "base",
    "compressed",
    "compressed+aird",
    "compressed+add_base_direction",
    "compressed+orthogonalize_drift",
];

/// One variant's numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariantOutcome {
    /// One of [`VARIANTS`].
    pub name: String,
    pub asr: Judged,
    pub harmless_refusal: Judged,
    /// KL from the compressed model on the harmless evaluation prompts.
    pub kl_to_compressed: f64,
    pub cross_entropy: Option<CrossEntropy>,
}

/// Where the base direction came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaseDirection {
    pub source: String,
    pub layer: usize,
    pub position: isize,
    pub norm: f64,
}

/// A text whose perplexity every variant is measured on.
#[derive(Debug, Clone, Copy)]
pub struct PerplexityText<'a> {
    pub text: &'a str,
    /// Tokens per window.
    pub window: usize,
}

/// The repaired model and every variant's numbers.
pub struct RepairStudy {
    pub repaired: Llama,
    pub fit: AirdFit,
    pub densification: Densification,
    /// C's own direction at (`l*`, position) along the base direction.
    pub drift: Decomposition,
    pub variants: Vec<VariantOutcome>,
}

/// `<model>.aird.json`: the repair study's report.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AirdReport<M> {
    /// What identifies the base model.
    pub base: M,
    /// The compressed model or recipe, as given.
    pub compressed: String,
    pub compression: Option<Summary>,
    pub prompts: PromptUses,
    pub base_direction: BaseDirection,
    pub fit: AirdFit,
    pub densification: Densification,
    pub drift: Decomposition,
    pub variants: Vec<VariantOutcome>,
    /// Where the repaired model was written (none in a browser).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub seconds: f64,
}

/// Repairs `compressed` by AIRD toward `base_direction` (fitted on `split`) and judges the
/// five [`VARIANTS`]. `position` is where C's own direction is read for the drift.
///
/// # Errors
///
/// Pipeline errors and cancellation.
#[allow(clippy::too_many_arguments)]
pub async fn repair_study(
    base: &Llama,
    compressed: &Llama,
    base_direction: &[f32],
    position: isize,
    settings: AirdSettings,
    split: &EncodedSplit,
    judge: &Judge<'_>,
    perplexity: Option<PerplexityText<'_>>,
    on_progress: &mut OnProgress<'_>,
) -> Result<RepairStudy, PipelineError> {
    let layer = settings.layer;
    let Repaired {
        model: repaired,
        fit,
        densification,
        harmful,
        harmless,
    } = repair(
        base,
        compressed.clone(),
        base_direction,
        settings,
        split,
        on_progress,
    )
    .await?;
    let own = compressed_direction(&harmful, &harmless, position, base.config().d_model)?;
    let (drift, drifted) = decompose(&own, base_direction)?;
    let orthogonalized = orthogonalize(compressed.clone(), &drifted)?;
    let add_base = Intervention::ActAdd {
        layer,
        vector: base_direction.to_vec(),
        coeff: 1.0,
    };
    let none = Intervention::None;
    let models: [(&Llama, &Intervention); 5] = [
        (base, &none),
        (compressed, &none),
        (&repaired, &none),
        (compressed, &add_base),
        (&orthogonalized, &none),
    ];
    let mut variants = Vec::with_capacity(models.len());
    for (name, (model, intervention)) in VARIANTS.into_iter().zip(models) {
        let ce = match perplexity {
            Some(p) => Some(
                cross_entropy(
                    model,
                    &judge.text.tokenizer,
                    p.text,
                    intervention,
                    p.window,
                    on_progress,
                )
                .await?,
            ),
            None => None,
        };
        variants.push(VariantOutcome {
            name: name.to_owned(),
            asr: judge.harmful(model, intervention, on_progress).await?,
            harmless_refusal: judge.harmless(model, intervention, on_progress).await?,
            kl_to_compressed: judge
                .kl(compressed, model, intervention, on_progress)
                .await?,
            cross_entropy: ce,
        });
    }
    Ok(RepairStudy {
        repaired,
        fit,
        densification,
        drift,
        variants,
    })
}
