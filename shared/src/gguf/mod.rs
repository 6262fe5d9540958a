//! GGUF (llama.cpp's checkpoint format) reading, dequantization and quantization.
//!
//! [`GgufFile::parse`] reads the header, metadata and tensor table of a memory-mapped file and
//! validates every length against the bytes present before allocating, so hostile files give an
//! error, never a panic or a huge allocation. [`GgufFile::tensor_f32`] dequantizes one tensor
//! bit-identically to gguf-py, and [`quantize`] is its inverse; [`zeroed`] sets elements of
//! blocks to zero in their own type. [`GgufWriter`] writes files the reader reads back.

pub mod dot;
pub mod error;
pub mod quant;
pub mod quantize;
pub mod reader;
pub mod writer;
pub mod zero;

pub use error::GgufError;
pub use quant::{GgmlType, dequantize, dequantize_into};
pub use quantize::{fits_rows, in_sixteen_bits, pack_levels, quantize};
pub use reader::{GgufFile, MetadataValue, TensorInfo};
pub use writer::GgufWriter;
pub use zero::zeroed;

/// Path of a file under the independent reference fixtures (`shared/fixtures` beside the
/// workspace). `REFUSAL_FIXTURES` overrides the fixtures directory for checkouts laid out
/// differently.
#[cfg(test)]
fn fixture_path(relative: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("REFUSAL_FIXTURES").map_or_else(
        || {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures"
            ))
        },
        std::path::PathBuf::from,
    );
    dir.join(relative)
}

/// Deterministic values with the spread of real weights and activations, and a few outliers
/// (which decide the per-block scales).
#[cfg(test)]
fn test_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            if i % 97 == 0 { 8.0 * u } else { u }
        })
        .collect()
}
