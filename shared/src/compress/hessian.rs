//! Statistics of a linear layer's inputs over the calibration tokens: the Hessian of its output
//! error `H = 2/n sum x x^T` (GPTQ, SparseGPT), the input norms `||X_j||_2` (Wanda), and the
//! output error a compressed weight makes on those inputs.

use burn::tensor::{Int, Tensor};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef};

use crate::pipeline::{PipelineError, read};

use super::HostMatrix;

/// `sum x x^T` of one layer's inputs, accumulated on the device batch by batch.
#[derive(Default)]
pub struct InputStats {
    gram: Option<Tensor<2>>,
    tokens: usize,
}

impl InputStats {
    pub fn new() -> InputStats {
        InputStats::default()
    }

    /// Adds the rows of `x` listed in `real` (the flattened `[batch * seq]` indices of real
    /// tokens, so left padding does not count).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d]`
    /// - `real`: `[tokens]`
    pub fn add(&mut self, x: Tensor<3>, real: &Tensor<1, Int>) {
        let [batch, seq, d] = x.dims();
        let [tokens] = real.dims();
        let rows = x.reshape([batch * seq, d]).select(0, real.clone());
        let gram = rows.clone().transpose().matmul(rows);
        self.gram = Some(match self.gram.take() {
            Some(g) => g + gram,
            None => gram,
        });
        self.tokens += tokens;
    }

    /// Reads the statistics back to the host (`None` if nothing was added).
    pub async fn into_host(self) -> Result<Option<HostStats>, PipelineError> {
        let Some(gram) = self.gram else {
            return Ok(None);
        };
        let [d, _] = gram.dims();
        let scale = 2.0 / self.tokens as f32;
        let hessian = read(gram * scale).await?;
        Ok(Some(HostStats {
            d,
            tokens: self.tokens,
            hessian,
        }))
    }
}

/// Input statistics on the host.
#[derive(Debug, Clone)]
pub struct HostStats {
    /// Input width.
    pub d: usize,
    /// Calibration tokens seen.
    pub tokens: usize,
    /// `2/n sum x x^T`, row-major `[d, d]`.
    pub hessian: Vec<f32>,
}

impl HostStats {
    /// `||X_j||_2` over every calibration token, from the diagonal of `H`.
    pub fn input_norms(&self) -> Vec<f32> {
        let half_n = self.tokens as f32 / 2.0;
        (0..self.d)
            .map(|j| (self.hessian[j * self.d + j] * half_n).max(0.0).sqrt())
            .collect()
    }

    /// Relative output error of `compressed` against `original` on the calibration inputs:
    /// `sqrt(tr(D H D^T) / tr(W H W^T))` with `D = compressed - original`, i.e.
    /// `||X D^T||_F / ||X W^T||_F`.
    pub fn output_error(&self, original: &HostMatrix, compressed: &HostMatrix) -> f64 {
        let (rows, cols) = (original.rows, original.cols);
        let diff: Vec<f32> = compressed
            .data
            .iter()
            .zip(&original.data)
            .map(|(a, b)| a - b)
            .collect();
        let energy = |m: &[f32]| {
            let m = MatRef::from_row_major_slice(m, rows, cols);
            let h = MatRef::from_row_major_slice(&self.hessian, cols, cols);
            let mut mh = Mat::<f32>::zeros(rows, cols);
            matmul(
                mh.as_mut(),
                Accum::Replace,
                m,
                h,
                1.0f32,
                faer::get_global_parallelism(),
            );
            let mut total = 0.0f64;
            for r in 0..rows {
                for c in 0..cols {
                    total += f64::from(mh[(r, c)]) * f64::from(m[(r, c)]);
                }
            }
            total.max(0.0)
        };
        let base = energy(&original.data);
        if base == 0.0 {
            return 0.0;
        }
        (energy(&diff) / base).sqrt()
    }
}
