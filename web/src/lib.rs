//! Refusal Lens in the browser.
//!
//! `smoke_forward` is the end-to-end smoke test the browser test (`tests/browser/smoke.mjs`)
//! drives: it starts Burn on WebGPU or on the CPU (flex) inside wasm, runs the tiny
//! random-weight model of `refusal-core` and returns its last-position logits.

use burn::tensor::{Device, Tensor};
use refusal_core::model::{Llama, ModelConfig, NoHook, TokenBatch};
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

/// Seed of the smoke model's random weights (drawn on the host, so identical on every device).
pub const SMOKE_SEED: u64 = 7;
/// Padding id of the smoke batch.
pub const SMOKE_PAD_ID: u32 = 0;

/// The smoke batch: two prompts of different lengths, so left padding and its mask are exercised.
pub fn smoke_prompts() -> Vec<Vec<u32>> {
    vec![vec![1, 5, 9, 17, 33, 65, 90], vec![2, 4, 8, 16]]
}

/// The smoke model's last-position logits, `[batch, vocab]`, on `device`: `ModelConfig::tiny()`
/// (2 layers, width 64) with seeded random weights over [`smoke_prompts`]. The browser test
/// compares the wasm results (WebGPU, CPU) with this function's native output
/// (`cargo run -p refusal-web --bin smoke-expected`).
pub fn smoke_logits(device: &Device) -> Tensor<2> {
    let config = ModelConfig::tiny();
    let llama = Llama::random(&config, SMOKE_SEED, device);
    let batch = TokenBatch::left_padded(&smoke_prompts(), SMOKE_PAD_ID, device);
    llama.last_logits(&batch, &mut NoHook)
}

/// Run the smoke model on WebGPU (`webgpu = true`) or on the CPU and return its last-position
/// logits, flattened row-major ([batch, vocab]).
#[wasm_bindgen]
pub async fn smoke_forward(webgpu: bool) -> Result<Vec<f32>, JsValue> {
    let device = init_device(webgpu).await?;
    let logits = smoke_logits(&device);
    let data = logits
        .into_data_async()
        .await
        .map_err(|e| JsValue::from_str(&format!("reading logits failed: {e:?}")))?;
    data.try_into_vec_as::<f32>()
        .map_err(|e| JsValue::from_str(&format!("logits are not f32: {e:?}")))
}
