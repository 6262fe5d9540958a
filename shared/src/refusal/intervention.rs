//! The interventions of METHOD §5 as one closed set, each turned into a forward-pass hook.

use burn::tensor::{Device, Tensor, TensorData};

use crate::model::{ActivationAddition, DirectionalAblation, Hook, HookContext, HookPoint, Llama};

use crate::pipeline::PipelineError;

/// What is done to the residual stream while the model runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Intervention {
    /// The model as it is.
    None,
    /// Directional ablation of `direction` (normalised here) at every layer and position.
    Ablate { direction: Vec<f32> },
    /// `x^layer <- x^layer + coeff * vector` at every position of block `layer`'s input.
    ActAdd {
        layer: usize,
        vector: Vec<f32>,
        coeff: f32,
    },
}

/// Name of an intervention kind, as the CLI and reports spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterventionKind {
    None,
    Ablate,
    Actadd,
}

impl InterventionKind {
    pub const ALL: [InterventionKind; 3] = [
        InterventionKind::None,
        InterventionKind::Ablate,
        InterventionKind::Actadd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InterventionKind::None => "none",
            InterventionKind::Ablate => "ablate",
            InterventionKind::Actadd => "actadd",
        }
    }
}

impl std::str::FromStr for InterventionKind {
    type Err = String;

    fn from_str(s: &str) -> Result<InterventionKind, String> {
        InterventionKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown intervention `{s}`; one of none, ablate, actadd"))
    }
}

impl Intervention {
    pub fn kind(&self) -> InterventionKind {
        match self {
            Intervention::None => InterventionKind::None,
            Intervention::Ablate { .. } => InterventionKind::Ablate,
            Intervention::ActAdd { .. } => InterventionKind::Actadd,
        }
    }

    /// The hook that applies this intervention to `model`.
    ///
    /// # Errors
    ///
    /// [`PipelineError::WidthMismatch`] when the vector is not `d_model` wide,
    /// [`PipelineError::LayerOutOfRange`], and [`PipelineError::DegenerateDirection`] for a
    /// zero or non-finite direction to ablate.
    pub fn hook(&self, model: &Llama) -> Result<InterventionHook, PipelineError> {
        let config = model.config();
        let device = model.device();
        Ok(match self {
            Intervention::None => InterventionHook::None,
            Intervention::Ablate { direction } => {
                check_width(direction, config.d_model)?;
                unit(direction)?;
                InterventionHook::Ablate(DirectionalAblation::new(vector(direction, &device)))
            }
            Intervention::ActAdd {
                layer,
                vector: v,
                coeff,
            } => {
                check_width(v, config.d_model)?;
                if *layer >= config.n_layers {
                    return Err(PipelineError::LayerOutOfRange {
                        layer: *layer,
                        n_layers: config.n_layers,
                    });
                }
                InterventionHook::ActAdd(ActivationAddition::new(
                    *layer,
                    vector(v, &device),
                    *coeff,
                ))
            }
        })
    }
}

/// Checks that a vector lives in a residual stream of width `d_model`.
///
/// # Errors
///
/// [`PipelineError::WidthMismatch`].
pub(crate) fn check_width(v: &[f32], d_model: usize) -> Result<(), PipelineError> {
    if v.len() == d_model {
        Ok(())
    } else {
        Err(PipelineError::WidthMismatch {
            expected: d_model,
            got: v.len(),
        })
    }
}

/// `direction / |direction|`, normalised in f64.
///
/// # Errors
///
/// [`PipelineError::DegenerateDirection`] for a zero or non-finite vector.
pub(crate) fn unit(direction: &[f32]) -> Result<Vec<f32>, PipelineError> {
    let norm = direction
        .iter()
        .map(|&v| v as f64 * v as f64)
        .sum::<f64>()
        .sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(PipelineError::DegenerateDirection);
    }
    Ok(direction
        .iter()
        .map(|&v| (v as f64 / norm) as f32)
        .collect())
}

/// A host vector on the model's device.
pub(crate) fn vector(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// The hook of an [`Intervention`].
#[derive(Debug, Clone)]
pub enum InterventionHook {
    None,
    Ablate(DirectionalAblation),
    ActAdd(ActivationAddition),
}

impl Hook for InterventionHook {
    fn wants(&self, layer: usize, point: HookPoint) -> bool {
        match self {
            InterventionHook::None => false,
            InterventionHook::Ablate(h) => h.wants(layer, point),
            InterventionHook::ActAdd(h) => h.wants(layer, point),
        }
    }

    fn at(&mut self, ctx: &HookContext, x: Tensor<3>) -> Tensor<3> {
        match self {
            InterventionHook::None => x,
            InterventionHook::Ablate(h) => h.at(ctx, x),
            InterventionHook::ActAdd(h) => h.at(ctx, x),
        }
    }
}
