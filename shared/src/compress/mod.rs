//! Compression of the decoder's linear layers (METHOD §8): round-to-nearest and GGUF block
//! quantization, GPTQ, and magnitude, Wanda and SparseGPT pruning.
//!
//! Each method is a function of one weight matrix (`[d_out, d_in]`, rows are outputs) and, for
//! the calibrated ones, of statistics of that layer's inputs. [`compress`] runs them over a
//! model block by block, feeding each block the outputs of the blocks already compressed.

pub mod grid;
pub mod hessian;
pub mod model;
pub mod obs;
pub mod prune;
pub mod recipe;

pub use grid::QuantGrid;
pub use hessian::HostStats;
pub use model::{Compressed, LinearReport, PackedWeight, Summary, compress};
pub use prune::Sparsity;
pub use recipe::Method;

use crate::pipeline::PipelineError;

/// Why a model or a matrix could not be compressed.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("bad compression recipe `{recipe}`: {reason}")]
    BadRecipe { recipe: String, reason: String },
    #[error("{tensor}: {cols} inputs per row are not a multiple of the N:M group size {m}")]
    GroupDoesNotFit {
        tensor: String,
        cols: usize,
        m: usize,
    },
    #[error("{tensor}: the input Hessian is not positive definite even with damping {damp:e}")]
    NotPositiveDefinite { tensor: String, damp: f64 },
    #[error("{tensor}: {source}")]
    Ggml {
        tensor: String,
        #[source]
        source: crate::gguf::GgufError,
    },
    #[error("no calibration prompts: {0} needs calibration data")]
    NoCalibration(String),
}

/// A weight matrix on the host, `[rows, cols] = [d_out, d_in]`, row-major: one row per output.
#[derive(Debug, Clone, PartialEq)]
pub struct HostMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl HostMatrix {
    /// Fraction of exactly zero weights.
    pub fn sparsity(&self) -> f64 {
        self.data.iter().filter(|v| **v == 0.0).count() as f64 / self.data.len().max(1) as f64
    }

    /// `||self - other||_F / ||other||_F` (0 for two zero matrices).
    pub fn relative_error(&self, other: &HostMatrix) -> f64 {
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for (a, b) in self.data.iter().zip(&other.data) {
            diff += f64::from(a - b).powi(2);
            norm += f64::from(*b).powi(2);
        }
        if norm == 0.0 {
            diff.sqrt()
        } else {
            (diff / norm).sqrt()
        }
    }
}
