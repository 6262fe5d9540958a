//! The playground's compressed columns in the browser: the loaded model compressed in the tab
//! by a recipe (METHOD §8, calibrated on the built-in harmless prompts, the CLI's default), and
//! that model repaired by AIRD toward the request's direction (METHOD §10, fitted on the
//! built-in sets as `refusal-lens generate --compressed` does). Compressing is the slow part,
//! so both models are kept for the next run with the same recipe and direction.

use std::cell::RefCell;

use js_sys::Function;
use refusal_core::compress::{Method, Summary};
use refusal_core::model::Llama;
use refusal_core::pipeline::OnProgress;
use refusal_core::refusal::aird::{AirdFit, AirdSettings, builtin_fit_prompts, repair};
use refusal_core::refusal::variant::CompressedUse;
use refusal_core::runs::RunError;
use refusal_core::runs::aird::GivenDirection;
use refusal_core::runs::compress::{
    Calibration, CalibrationRequest, compress_base, compressed_model,
};

use crate::engine::{Engine, TabIo};
use crate::js_progress;

/// The most weight memory a tab is asked to hold: the base model plus the compressed copy of
/// its linear layers (WebAssembly memory ends at 4 GB).
const TAB_MEMORY: u64 = 3_500_000_000;

/// How the compressed columns are made (fields of the playground request).
#[derive(Debug, Clone, PartialEq)]
pub struct CompressSettings {
    /// A recipe such as `rtn:4:128` or `wanda:0.5`.
    pub recipe: String,
    /// Built-in harmless prompts the calibrated methods see.
    pub n_calib: usize,
    /// Training prompts of each built-in set AIRD is fitted on (a quarter as many more,
    /// held out, choose its penalty).
    pub aird_prompts: usize,
    pub aird_alpha: f32,
    pub batch_size: usize,
}

/// The models kept from the last run.
#[derive(Default)]
pub(crate) struct Kept(RefCell<Option<KeptCompressed>>);

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
    aird_prompts: usize,
    alpha: f32,
    model: Llama,
    fit: AirdFit,
}

/// The models of the compressed columns for one request, and what the report says of them.
pub(crate) struct Columns {
    pub compressed: Llama,
    pub repaired: Option<Llama>,
    pub used: CompressedUse,
}

impl Engine {
    /// The compressed model for `settings` (kept, or compressed now) and, when `direction`
    /// is given, its AIRD repair at the direction's layer.
    pub(crate) async fn compressed_columns(
        &self,
        settings: &CompressSettings,
        direction: Option<&GivenDirection>,
        on_progress: &Function,
    ) -> Result<Columns, String> {
        let calibration = CalibrationRequest {
            n_calib: settings.n_calib,
            ..CalibrationRequest::default()
        };
        let compressed = compressed_model(
            &settings.recipe,
            self.llama(),
            self.text(),
            &calibration,
            settings.batch_size,
            false,
            &mut TabIo::new(self, on_progress),
        )
        .await
        .map_err(|e| e.to_string())?
        .llama;
        let (repaired, fit) = match direction {
            Some(d) => {
                let mut progress = js_progress(on_progress);
                let (model, fit) = self
                    .repaired(&compressed, settings, d, &mut progress)
                    .await?;
                (Some(model), Some(fit))
            }
            None => (None, None),
        };
        Ok(Columns {
            compressed,
            repaired,
            used: CompressedUse {
                spec: settings.recipe.clone(),
                aird: fit,
            },
        })
    }

    /// `base` (the loaded model) compressed by `method`: kept from an earlier run with the
    /// same recipe and calibration, or compressed now, with what compression did.
    pub(crate) async fn compressed_kept(
        &self,
        base: &Llama,
        method: Method,
        calibration: &Calibration,
        batch_size: usize,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<(Llama, Summary), RunError> {
        let recipe = method.to_string();
        if let Some(k) = self.kept().0.borrow().as_ref()
            && k.recipe == recipe
            && k.calibration == calibration.sha256
        {
            return Ok((k.model.clone(), k.summary.clone()));
        }
        self.forget_compressed();
        self.check_memory(method).map_err(RunError::Input)?;
        let (model, summary) =
            compress_base(base, method, calibration, batch_size, on_progress).await?;
        *self.kept().0.borrow_mut() = Some(KeptCompressed {
            recipe,
            calibration: calibration.sha256.clone(),
            model: model.clone(),
            summary: summary.clone(),
            repaired: None,
        });
        Ok((model, summary))
    }

    /// Drops the kept models before compressing anew, so that two compressed copies never
    /// share the tab's memory.
    fn forget_compressed(&self) {
        self.kept().0.borrow_mut().take();
    }

    /// The model as kept plus its compressed linear layers: on a model kept compact (blocks or
    /// 16-bit floats, on the CPU engine), packed blocks where a block type holds the method's
    /// output (GGUF types, and the grids they store) and at most 16 bits per weight otherwise
    /// (pruned blocks keep their type where it has a code for zero, the rest is f16); f32 on
    /// a dense model.
    fn check_memory(&self, method: Method) -> Result<(), String> {
        let llama = self.llama();
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

    /// `compressed` repaired by AIRD toward `direction` (kept, or fitted now).
    async fn repaired(
        &self,
        compressed: &Llama,
        settings: &CompressSettings,
        direction: &GivenDirection,
        on_progress: &mut OnProgress<'_>,
    ) -> Result<(Llama, AirdFit), String> {
        let same = |r: &KeptRepair| {
            r.direction == direction.vector
                && r.layer == direction.layer
                && r.aird_prompts == settings.aird_prompts
                && r.alpha == settings.aird_alpha
        };
        if let Some(r) = self
            .kept()
            .0
            .borrow()
            .as_ref()
            .and_then(|k| k.repaired.as_ref())
            && same(r)
        {
            return Ok((r.model.clone(), r.fit.clone()));
        }
        let prompts =
            builtin_fit_prompts(self.text(), settings.aird_prompts).map_err(|e| e.to_string())?;
        let aird = AirdSettings {
            layer: direction.layer,
            alpha: settings.aird_alpha,
            lambda: None,
            batch_size: settings.batch_size,
        };
        let repaired = repair(
            self.llama(),
            compressed.clone(),
            &direction.vector,
            aird,
            &prompts,
            on_progress,
        )
        .await
        .map_err(|e| format!("repairing with AIRD: {e}"))?;
        if let Some(k) = self.kept().0.borrow_mut().as_mut() {
            k.repaired = Some(KeptRepair {
                direction: direction.vector.clone(),
                layer: direction.layer,
                aird_prompts: settings.aird_prompts,
                alpha: settings.aird_alpha,
                model: repaired.model.clone(),
                fit: repaired.fit.clone(),
            });
        }
        Ok((repaired.model, repaired.fit))
    }
}
