//! The side-by-side completions of the playground: the model as it is and under each
//! intervention of METHOD §5, and its compressed version (§8) before and after AIRD repair
//! (§10), one name per column. The CLI, the server and the browser engine all set a variant
//! up through [`Variant::setup`], so their columns mean the same thing.

use std::borrow::Cow;
use std::str::FromStr;

use crate::generate::FinishReason;
use crate::model::Llama;

use super::aird::AirdFit;
use super::intervention::Intervention;
use super::orthogonalize::orthogonalize;
use crate::pipeline::PipelineError;

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
    /// The compressed model as it is.
    Compressed,
    /// The compressed model repaired by AIRD toward the base model's direction.
    #[serde(rename = "compressed+aird")]
    CompressedAird,
}

/// The models the variants run on: the base, and for the compressed columns its compressed
/// and repaired versions.
#[derive(Clone, Copy)]
pub struct VariantModels<'a> {
    pub base: &'a Llama,
    pub compressed: Option<&'a Llama>,
    pub repaired: Option<&'a Llama>,
}

/// The direction the variants apply, and how activation addition uses it.
#[derive(Debug, Clone, Copy)]
pub struct VariantDirection<'a> {
    pub vector: &'a [f32],
    /// Layer of the activation addition.
    pub actadd_layer: usize,
    pub coeff: f32,
}

/// What a variant runs: a model (the base, a compressed one, or weights edited for this
/// variant alone) and its hook.
pub struct VariantRun<'a> {
    pub model: Cow<'a, Llama>,
    pub intervention: Intervention,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::None,
        Variant::Ablate,
        Variant::Actadd,
        Variant::Orthogonalized,
        Variant::Compressed,
        Variant::CompressedAird,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::None => "none",
            Variant::Ablate => "ablate",
            Variant::Actadd => "actadd",
            Variant::Orthogonalized => "orthogonalized",
            Variant::Compressed => "compressed",
            Variant::CompressedAird => "compressed+aird",
        }
    }

    /// Whether the variant runs on the compressed model rather than the base.
    pub fn is_compressed(self) -> bool {
        matches!(self, Variant::Compressed | Variant::CompressedAird)
    }

    /// Whether the variant needs a refusal direction: every intervention, and AIRD, which
    /// restores it.
    pub fn needs_direction(self) -> bool {
        !matches!(self, Variant::None | Variant::Compressed)
    }

    /// The variants shown when none are asked for: every one whose inputs are given.
    pub fn defaults(has_direction: bool, has_compressed: bool) -> Vec<Variant> {
        Variant::ALL
            .into_iter()
            .filter(|v| {
                (has_direction || !v.needs_direction()) && (has_compressed || !v.is_compressed())
            })
            .collect()
    }

    /// Sets this variant up on `models` (the base cloned and orthogonalized for
    /// `Orthogonalized`).
    ///
    /// # Errors
    ///
    /// [`PipelineError::NeedsDirection`] for an intervention without a direction,
    /// [`PipelineError::NeedsCompressed`] for a compressed column without its model, and the
    /// errors of [`orthogonalize`] (width, degenerate direction).
    pub fn setup<'a>(
        self,
        models: VariantModels<'a>,
        direction: Option<&VariantDirection<'_>>,
    ) -> Result<VariantRun<'a>, PipelineError> {
        let needs = || PipelineError::NeedsDirection(self.name());
        let compressed = |model: Option<&'a Llama>| {
            model
                .map(Cow::Borrowed)
                .ok_or(PipelineError::NeedsCompressed(self.name()))
        };
        let base = Cow::Borrowed(models.base);
        let (model, intervention) = match self {
            Variant::None => (base, Intervention::None),
            Variant::Ablate => (
                base,
                Intervention::Ablate {
                    direction: direction.ok_or_else(needs)?.vector.to_vec(),
                },
            ),
            Variant::Actadd => {
                let d = direction.ok_or_else(needs)?;
                (
                    base,
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
                    Cow::Owned(orthogonalize(models.base.clone(), d.vector)?),
                    Intervention::None,
                )
            }
            Variant::Compressed => (compressed(models.compressed)?, Intervention::None),
            Variant::CompressedAird => (compressed(models.repaired)?, Intervention::None),
        };
        Ok(VariantRun {
            model,
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
    /// The compressed model of the compressed columns, when they were asked for.
    pub compressed: Option<CompressedUse>,
    pub completions: Vec<Completion>,
}

/// The compressed columns' model and, for `compressed+aird`, how AIRD was fitted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CompressedUse {
    /// A recipe (`wanda:0.5`) or the model it names.
    pub spec: String,
    pub aird: Option<AirdFit>,
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
                let names: Vec<&str> = Variant::ALL.iter().map(|v| v.name()).collect();
                format!("unknown variant `{s}` (one of {})", names.join(", "))
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
        let base_only = VariantModels {
            base: &model,
            compressed: None,
            repaired: None,
        };
        assert!(Variant::None.setup(base_only, None).is_ok());
        for v in [Variant::Ablate, Variant::Actadd, Variant::Orthogonalized] {
            assert!(matches!(
                v.setup(base_only, None),
                Err(PipelineError::NeedsDirection(_))
            ));
        }
        for v in [Variant::Compressed, Variant::CompressedAird] {
            assert!(matches!(
                v.setup(base_only, None),
                Err(PipelineError::NeedsCompressed(_))
            ));
        }
        let r = vec![0.5; ModelConfig::tiny().d_model];
        let d = VariantDirection {
            vector: &r,
            actadd_layer: 1,
            coeff: 2.0,
        };
        let run = Variant::Orthogonalized.setup(base_only, Some(&d)).unwrap();
        assert!(matches!(run.model, Cow::Owned(_)) && run.intervention == Intervention::None);
        let run = Variant::Actadd.setup(base_only, Some(&d)).unwrap();
        assert!(std::ptr::eq(run.model.as_ref(), &model));
        assert_eq!(
            run.intervention,
            Intervention::ActAdd {
                layer: 1,
                vector: r.clone(),
                coeff: 2.0
            }
        );
        let compressed = model.clone();
        let repaired = model.clone();
        let all = VariantModels {
            base: &model,
            compressed: Some(&compressed),
            repaired: Some(&repaired),
        };
        let run = Variant::Compressed.setup(all, None).unwrap();
        assert!(std::ptr::eq(run.model.as_ref(), &compressed));
        let run = Variant::CompressedAird.setup(all, None).unwrap();
        assert!(std::ptr::eq(run.model.as_ref(), &repaired));
    }

    #[test]
    fn defaults_show_every_column_their_inputs_allow() {
        use Variant::*;
        assert_eq!(Variant::defaults(false, false), [None]);
        assert_eq!(
            Variant::defaults(true, false),
            [None, Ablate, Actadd, Orthogonalized]
        );
        assert_eq!(Variant::defaults(false, true), [None, Compressed]);
        assert_eq!(Variant::defaults(true, true), Variant::ALL);
        assert_eq!(
            serde_json::to_string(&CompressedAird).unwrap(),
            "\"compressed+aird\""
        );
    }
}
