//! The decoder, its configuration, hooks, and (test support) random initialisation.

mod cached_attention;
pub mod config;
pub mod hooks;
pub mod llama;
pub mod quantized;
// Test support: random models for the tests of every crate, kept out of what ships.
#[cfg(any(test, feature = "test-support"))]
pub mod random;
mod swiglu;
pub mod weights;

pub use config::{
    Architecture, ConfigError, Llama3RopeScaling, ModelConfig, RopePairing, RopeScaling,
};
pub use hooks::{
    ActivationAddition, Capture, DirectionalAblation, Hook, HookContext, HookPoint, NoHook,
};
pub use llama::{BlockContext, KvCache, Linear, LinearInputs, Llama, TokenBatch, Weight};
pub use quantized::{PromptProducts, QuantizedMatrix};
pub use weights::{
    BlockWeight, HostTensor, StoredTensor, StoredValues, WeightError, WeightName, WeightSource,
    WeightStorage,
};

use burn::tensor::Tensor;

/// Reads a device tensor back to host `f32`s (native: the browser awaits `into_data_async`).
///
/// Every tensor the model produces is f32, so the conversion cannot fail on model outputs.
pub fn read_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_else(|e| unreachable!("f32 tensor data after convert: {e:?}"))
}
