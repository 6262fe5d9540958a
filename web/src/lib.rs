//! Refusal Lens in the browser: wasm-bindgen entry points over `refusal-core`, run by the app's
//! Web Worker (`web/app/engine-worker.js`) on WebGPU or on the CPU.
//!
//! - [`engine`]: a model loaded from checkpoint bytes; what it is, its logits.
//! - [`generate`]: the Playground's run: completions side by side, streamed.
//! - [`tab_io`]: what the core's runs ask of a tab (progress, cancel, kept models, tokens).
//! - [`compressed`]: the models a tab keeps between runs, compressed and repaired in the tab.
//! - [`compare`]: the Compressed vs base page's run (METHOD §9) on recipes compressed in the tab.
//! - [`aird`]: the Repair page's run (METHOD §10): AIRD and its baselines.
//! - [`directions`]: the Directions page's run (METHOD §3-6) on the loaded model.
//! - [`inspect`]: what a checkpoint is and what memory it needs, from its header alone.

pub mod aird;
pub mod compare;
pub mod compressed;
pub mod directions;
pub mod engine;
pub mod generate;
pub mod inspect;
pub mod tab_io;

use std::ops::ControlFlow;

use burn::tensor::Device;
use js_sys::Function;
use refusal_core::pipeline::Progress;
use wasm_bindgen::prelude::*;

/// Runs once when the module is instantiated: turn Rust panics into readable console errors
/// (otherwise a panic shows only as "unreachable").
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// Create the Burn device. `webgpu = true` starts Burn's wgpu runtime (WebGPU in the browser);
/// `false` uses the pure-Rust flex CPU backend, which needs no GPU adapter at all.
pub async fn init_device(webgpu: bool) -> Result<Device, JsValue> {
    if webgpu {
        init_webgpu().await
    } else {
        Ok(Device::flex())
    }
}

/// Start (once per page) and return Burn's wgpu device on the browser's WebGPU adapter.
#[cfg(target_family = "wasm")]
async fn init_webgpu() -> Result<Device, JsValue> {
    use std::cell::RefCell;
    // An initialized runtime cannot be initialized again: keep its device for later calls.
    thread_local! {
        static WGPU: RefCell<Option<Device>> = const { RefCell::new(None) };
    }
    if let Some(device) = WGPU.with(|d| d.borrow().clone()) {
        return Ok(device);
    }
    let device = Device::wgpu_options()
        .init_async()
        .await
        .map_err(|e| JsValue::from_str(&format!("WebGPU initialization failed: {e}")))?;
    WGPU.with(|d| *d.borrow_mut() = Some(device.clone()));
    Ok(device)
}

/// Native builds of this crate carry only the CPU backend (the workspace's burn features).
#[cfg(not(target_family = "wasm"))]
async fn init_webgpu() -> Result<Device, JsValue> {
    Err(JsValue::from_str("WebGPU exists only in the wasm build"))
}

/// The request of `kind` (`generate`, `directions`, `compare`, `aird`) with every field at the tab's
/// default, as JSON whose keys are the command line's flags: what a page's form starts from
/// when no server is there to ask.
#[wasm_bindgen]
pub fn request_defaults(kind: &str) -> Result<String, JsValue> {
    match kind {
        "generate" => serde_json::to_string(&generate::tab_request()),
        "directions" => serde_json::to_string(&directions::tab_request()),
        "compare" => serde_json::to_string(&compare::tab_request()),
        "aird" => serde_json::to_string(&aird::tab_request()),
        _ => return Err(js_error(format!("no request kind `{kind}` runs in a tab"))),
    }
    .map_err(js_error)
}

/// A Rust error as the JavaScript error the worker reports.
pub(crate) fn js_error(e: impl std::fmt::Display) -> JsValue {
    js_sys::Error::new(&e.to_string()).into()
}

/// The core's progress callback as a call of `on_progress(stage, done, total)`; a `false`
/// answer cancels the computation.
pub(crate) fn js_progress(on_progress: &Function) -> impl FnMut(Progress) -> ControlFlow<()> + '_ {
    move |p: Progress| {
        let stage = serde_json::to_value(p.stage)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        match on_progress.call3(
            &JsValue::NULL,
            &stage.into(),
            &p.done.into(),
            &p.total.into(),
        ) {
            Ok(answer) if answer.as_bool() == Some(false) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        }
    }
}
