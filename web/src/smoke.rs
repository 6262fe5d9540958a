//! The end-to-end smoke test the browser test (`tests/browser/smoke.mjs`) drives: Burn on
//! WebGPU or on the CPU (flex) inside wasm, running the tiny random-weight model of
//! `refusal-core` and returning its last-position logits.

use burn::tensor::{Device, Tensor};
use refusal_core::model::{Llama, ModelConfig, NoHook, TokenBatch};
use wasm_bindgen::prelude::*;

use crate::init_device;

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
