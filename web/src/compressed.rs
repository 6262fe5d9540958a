//! The models a tab keeps between runs: the loaded model compressed by a recipe (METHOD §8),
//! and that model repaired by AIRD toward a direction (METHOD §10). Compressing is the slow
//! part, so both are kept for the next run with the same recipe, calibration and direction;
//! a second compressed copy never shares the tab's memory with the first.

use std::cell::RefCell;

use refusal_core::compress::{Method, Summary};
use refusal_core::load::TextAssets;
use refusal_core::model::Llama;
use refusal_core::pipeline::OnProgress;
use refusal_core::refusal::aird::{AirdFit, AirdSettings, repair_on_builtin};
use refusal_core::runs::RunError;
use refusal_core::runs::aird::GivenDirection;
use refusal_core::runs::compress::{Calibration, compress_base};

/// The most weight memory a tab is asked to hold: the base model plus the compressed copy of
/// its linear layers (WebAssembly memory ends at 4 GB).
const TAB_MEMORY: u64 = 3_500_000_000;

/// The models kept from the last run.
#[derive(Default)]
pub struct Kept(RefCell<Option<KeptCompressed>>);

struct KeptCompressed {
    recipe: String,
    /// The calibration's SHA-256.
    calibration: String,
    model: Llama,
    summary: Summary,
    repaired: Option<KeptRepair>,
}

struct KeptRepair {
    direction: Vec<f32>,
    layer: usize,
    fit_prompts: usize,
    alpha: f32,
    model: Llama,
    fit: AirdFit,
}

impl Kept {
    /// `base` (the loaded model) compressed by `method`: kept from an earlier run with the
    /// same recipe and calibration, or compressed now, with what compression did.
    pub async fn compressed(
        &self,
        base: &Llama,
        method: Method,
        calibration: &Calibration,
        batch_size: usize,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<(Llama, Summary), RunError> {
        let recipe = method.to_string();
        if let Some(k) = self.0.borrow().as_ref()
            && k.recipe == recipe
            && k.calibration == calibration.sha256
        {
            return Ok((k.model.clone(), k.summary.clone()));
        }
        // Dropped before compressing anew, so that two compressed copies never coexist.
        self.0.borrow_mut().take();
        check_memory(base, method).map_err(RunError::Input)?;
        let (model, summary) =
            compress_base(base, method, calibration, batch_size, on_progress).await?;
        *self.0.borrow_mut() = Some(KeptCompressed {
            recipe,
            calibration: calibration.sha256.clone(),
            model: model.clone(),
            summary: summary.clone(),
            repaired: None,
        });
        Ok((model, summary))
    }

    /// `compressed` repaired by AIRD toward `direction`, fitted on `fit_prompts` training
    /// prompts of each built-in set: kept, or fitted now.
    #[allow(clippy::too_many_arguments)] // the run's inputs, as RunIo::repair takes them
    pub async fn repaired(
        &self,
        base: &Llama,
        compressed: &Llama,
        text: &TextAssets,
        direction: &GivenDirection,
        settings: AirdSettings,
        fit_prompts: usize,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<(Llama, AirdFit), RunError> {
        let same = |r: &KeptRepair| {
            r.direction == direction.vector
                && r.layer == settings.layer
                && r.fit_prompts == fit_prompts
                && r.alpha == settings.alpha
        };
        if let Some(r) = self.0.borrow().as_ref().and_then(|k| k.repaired.as_ref())
            && same(r)
        {
            return Ok((r.model.clone(), r.fit.clone()));
        }
        let (layer, alpha) = (settings.layer, settings.alpha);
        let repaired = repair_on_builtin(
            base,
            compressed.clone(),
            &direction.vector,
            settings,
            text,
            fit_prompts,
            on_progress,
        )
        .await?;
        if let Some(k) = self.0.borrow_mut().as_mut() {
            k.repaired = Some(KeptRepair {
                direction: direction.vector.clone(),
                layer,
                fit_prompts,
                alpha,
                model: repaired.model.clone(),
                fit: repaired.fit.clone(),
            });
        }
        Ok((repaired.model, repaired.fit))
    }
}

/// Whether a tab holds `llama` as kept and its compressed linear layers: on a model kept
/// compact (blocks or 16-bit floats, on the CPU engine), packed blocks where a block type
/// holds the method's output (GGUF types, and the grids they store) and at most 16 bits per
/// weight otherwise (pruned blocks keep their type where it has a code for zero, the rest is
/// f16); f32 on a dense model.
fn check_memory(llama: &Llama, method: Method) -> Result<(), String> {
    let config = llama.config();
    let linears = config.n_linear_params();
    let packed = match method {
        Method::Ggml(ty) => Some(ty),
        Method::Rtn(grid) | Method::Gptq(grid) => grid
            .ggml_type(config.d_model)
            .filter(|_| grid.ggml_type(config.d_ff).is_some()),
        _ => None,
    };
    let compressed = match packed {
        Some(ty) if llama.has_quantized_weights() => {
            linears * ty.type_size() as u64 / ty.block_size() as u64
        }
        _ if llama.has_quantized_weights() => 2 * linears,
        _ => 4 * linears,
    };
    let need = llama.weight_bytes() + compressed;
    if need > TAB_MEMORY {
        return Err(format!(
            "compressing this model in the tab needs about {:.1} GB of weights (the model \
             and a compressed copy of its linear layers), more than a tab can hold: run it \
             on the server",
            need as f64 / 1e9
        ));
    }
    Ok(())
}
