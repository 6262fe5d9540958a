//! The side-by-side completions of the playground (METHOD §5): the model as it is and under
//! each intervention, one name per column. The CLI, the server and the browser engine all set
//! a variant up through [`Variant::setup`], so their columns mean the same thing.

use std::str::FromStr;

use crate::generate::FinishReason;
use crate::model::Llama;

use super::PipelineError;
use super::intervention::Intervention;
use super::orthogonalize::orthogonalize;

/// One completion of a side-by-side generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The model as it is.
    None,
    /// The direction ablated at every layer (hooks).
    Ablate,
    /// The direction added at one layer, scaled by a coefficient.
    Actadd,
    /// The ablation baked into the weights; reads like `Ablate`.
    Orthogonalized,
}

/// The direction the variants apply, and how activation addition uses it.
#[derive(Debug, Clone, Copy)]
pub struct VariantDirection<'a> {
    pub vector: &'a [f32],
    /// Layer of the activation addition.
    pub actadd_layer: usize,
    pub coeff: f32,
}

/// What a variant runs: its own weights (only `Orthogonalized` has them) and its hook.
pub struct VariantRun {
    pub edited: Option<Llama>,
    pub intervention: Intervention,
}

impl Variant {
    pub const ALL: [Variant; 4] = [
        Variant::None,
        Variant::Ablate,
        Variant::Actadd,
        Variant::Orthogonalized,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Ablate => "ablate",
            Variant::Actadd => "actadd",
            Variant::Orthogonalized => "orthogonalized",
        }
    }

    /// The variants shown when none are asked for: every one given a direction, else the base.
    pub fn defaults(has_direction: bool) -> Vec<Variant> {
        if has_direction {
            Variant::ALL.to_vec()
        } else {
            vec![Variant::None]
        }
    }

    /// Sets this variant up on `base` (cloned and orthogonalized for `Orthogonalized`).
    ///
    /// # Errors
    ///
    /// [`PipelineError::NeedsDirection`] for an intervention without a direction, and the
    /// errors of [`orthogonalize`] (width, degenerate direction).
    pub fn setup(
        self,
        base: &Llama,
        direction: Option<&VariantDirection<'_>>,
    ) -> Result<VariantRun, PipelineError> {
        let needs = || PipelineError::NeedsDirection(self.name());
        let (edited, intervention) = match self {
            Variant::None => (None, Intervention::None),
            Variant::Ablate => (
                None,
                Intervention::Ablate {
                    direction: direction.ok_or_else(needs)?.vector.to_vec(),
                },
            ),
            Variant::Actadd => {
                let d = direction.ok_or_else(needs)?;
                (
                    None,
                    Intervention::ActAdd {
                        layer: d.actadd_layer,
                        vector: d.vector.to_vec(),
                        coeff: d.coeff,
                    },
                )
            }
            Variant::Orthogonalized => {
                let d = direction.ok_or_else(needs)?;
                (
                    Some(orthogonalize(base.clone(), d.vector)?),
                    Intervention::None,
                )
            }
        };
        Ok(VariantRun {
            edited,
            intervention,
        })
    }
}

/// One variant's completion, judged by the substring judge of METHOD §7.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    pub variant: Variant,
    pub completion: String,
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub refusal: bool,
}

impl Completion {
    pub fn judged(
        variant: Variant,
        completion: String,
        tokens: Vec<u32>,
        finish: FinishReason,
    ) -> Self {
        Completion {
            variant,
            refusal: super::judge::is_refusal(&completion),
            completion,
            tokens,
            finish,
        }
    }
}

/// `generate.json`: one prompt's completions side by side, whoever ran them (`M` describes the
/// model: the CLI's file fingerprint, the browser engine's checkpoint info).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateReport<M> {
    pub model: M,
    pub prompt: String,
    pub formatted_prompt: String,
    pub prompt_tokens: usize,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub seed: u64,
    /// The direction's layer and position, when one was given.
    pub direction: Option<DirectionUse>,
    pub completions: Vec<Completion>,
}

/// Where the report's direction was read and how activation addition used it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DirectionUse {
    pub layer: usize,
    pub position: isize,
    pub actadd_layer: usize,
    pub coeff: f32,
}

impl FromStr for Variant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                format!("unknown variant `{s}` (none, ablate, actadd or orthogonalized)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn names_round_trip_and_interventions_need_a_direction() {
        for v in Variant::ALL {
            assert_eq!(v.name().parse::<Variant>().unwrap(), v);
        }
        assert!("ablated".parse::<Variant>().is_err());
        let device = burn::tensor::Device::flex();
        let model = Llama::random(&ModelConfig::tiny(), 1, &device);
        assert!(Variant::None.setup(&model, None).is_ok());
        for v in [Variant::Ablate, Variant::Actadd, Variant::Orthogonalized] {
            assert!(matches!(
                v.setup(&model, None),
                Err(PipelineError::NeedsDirection(_))
            ));
        }
        let r = vec![0.5; ModelConfig::tiny().d_model];
        let d = VariantDirection {
            vector: &r,
            actadd_layer: 1,
            coeff: 2.0,
        };
        let run = Variant::Orthogonalized.setup(&model, Some(&d)).unwrap();
        assert!(run.edited.is_some() && run.intervention == Intervention::None);
        let run = Variant::Actadd.setup(&model, Some(&d)).unwrap();
        assert!(run.edited.is_none());
        assert_eq!(
            run.intervention,
            Intervention::ActAdd {
                layer: 1,
                vector: r.clone(),
                coeff: 2.0
            }
        );
    }
}
