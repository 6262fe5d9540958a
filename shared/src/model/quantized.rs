//! Matrices kept in memory as their GGML blocks, multiplied without an f32 copy of the weight.
//! A 16-bit float matrix (F16, BF16) is kept the same way, as blocks of one value.
//!
//! A few activation rows at a time (decoding) go through the kernels of [`crate::gguf::dot`],
//! which read the blocks directly (integer dot products for the block types, f32 ones for the
//! 16-bit floats), activations rounded to 8 bits as llama.cpp does. Many rows at a time (a
//! prompt batch) are multiplied as [`PromptProducts`] says: exactly, in f32 against tiles of the
//! matrix dequantized for that one product (the cost of dequantizing is shared by every row,
//! and only one tile, at most [`TILE_ELEMENTS`] values, exists at a time, so memory stays at
//! the size of the blocks), which computes the float reference's product of the dequantized
//! weights; or, for generation, through the kernels wherever they are faster, as llama.cpp
//! processes a prompt.
//!
//! An edit of the matrix (orthogonalization, AIRD's rank-one term) is kept beside the blocks
//! as exact rank-one terms `W + a bᵀ` in f32: re-quantizing the edited matrix would add the
//! block type's rounding error and, with it, a component along the very direction an
//! orthogonalization removed; dequantizing it for good would cost 4-8x its memory.
//!
//! The blocks are host memory: models keep them only on the CPU backend (see
//! [`super::weights::build`]).

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::tensor::{Device, Int, Tensor, TensorData};
use bytes::Bytes;

use crate::gguf::dot::{self, Isa};
use crate::gguf::quant::check_sizes;
use crate::gguf::{GgmlType, GgufError, dequantize_into};
use crate::threads::for_each_chunk;

/// Activation rows up to which every product goes through the kernels: a decoding step, or
/// one prompt's last position through the head. Beyond it, products that measure activations
/// ([`PromptProducts::Exact`]) use the exact tiles whatever their speed.
pub const KERNEL_ROWS: usize = 4;

/// The most rows of a generation's product ([`PromptProducts::Rounded`]) that go through the
/// kernels, for a `rows x cols` matrix. The kernels' time grows with every activation row; the
/// tiles' has a part shared by all rows (dequantizing, building each tile) that grows with the
/// matrix. With AVX-512 on 2 cores they broke even at about 16 rows on SmolLM2's 1536 x 576
/// Q4_1, 24 on Qwen's 4864 x 896 Q5_0 and 896 x 4864 Q4_K, and past 128 on Qwen's
/// 151936 x 896 Q8_0 head and a 7B-shaped 11008 x 4096 Q4_K (kernels 1.3-1.4x faster there at
/// 128 rows): 4 rows per million weights, at least 16 and at most 256, follows those.
fn generation_kernel_rows(rows: usize, cols: usize) -> usize {
    (4 * rows * cols / (1 << 20)).clamp(16, 256)
}

/// How a product of more than [`KERNEL_ROWS`] activation rows (a prompt, or a decoding step
/// of a larger batch) with the blocks is computed; fewer rows always go through the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromptProducts {
    /// In f32 against dequantized tiles: exactly the float reference's product. For what
    /// measures activations (directions, scores, calibration), whose agreement with the
    /// reference is tested to cosine 1.000000.
    #[default]
    Exact,
    /// For generation: activations rounded to 8 bits and multiplied through the integer
    /// kernels, as the decoding steps after a prompt are and as llama.cpp processes prompts,
    /// wherever that is faster than the exact tiles: on CPUs and types whose kernels multiply
    /// prompts ([`dot::multiplies_prompts`]), up to a number of rows that grows with the matrix
    /// ([`generation_kernel_rows`]).
    Rounded,
}

/// The most values of a dequantized tile: 64 MiB of f32.
const TILE_ELEMENTS: usize = 1 << 24;

/// Rows dequantized per task.
const DEQUANT_ROWS: usize = 64;

/// A `[rows, cols]` matrix of GGML blocks, row-major as GGUF stores it (each row holds
/// `cols / block_size` blocks), plus the rank-one terms edits added to it, in order. Cloning
/// shares the blocks.
#[derive(Debug, Clone)]
pub struct QuantizedMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// Shared, not copied: clones of the model, and a view into the file it was read from
    /// (see [`crate::load::gguf_model_viewing`]), hold the same bytes.
    bytes: Bytes,
    terms: Vec<Term>,
}

/// One rank-one term of an edit, `W <- W + a bᵀ`, on the CPU device.
#[derive(Debug, Clone)]
struct Term {
    /// `[rows]`
    a: Tensor<1>,
    /// `[cols]`
    b: Tensor<1>,
    /// The term removes the unit vector `r = -a` from every column, `W <- (I - r rᵀ) W`
    /// (`b = Wᵀ r` of the matrix before it): products apply it as that projection of their
    /// output, so the 8-bit rounding of decoding activations leaves nothing along `r` either.
    projects: bool,
}

impl QuantizedMatrix {
    /// Checks that `bytes` hold exactly `rows x cols` values of `ty` in whole rows of blocks,
    /// and that the kernels multiply `ty`.
    ///
    /// # Errors
    ///
    /// [`GgufError::UnsupportedKernel`] for F32, [`GgufError::NotBlockMultiple`] for
    /// rows that are not whole blocks, [`GgufError::DataSizeMismatch`] for a wrong byte count.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: impl Into<Bytes>,
    ) -> Result<Self, GgufError> {
        let bytes = bytes.into();
        if !dot::has_kernel(ty) {
            return Err(GgufError::UnsupportedKernel { ty: ty.name() });
        }
        if !cols.is_multiple_of(ty.block_size()) {
            return Err(GgufError::NotBlockMultiple {
                ty: ty.name(),
                n_elements: cols as u64,
                block_size: ty.block_size() as u64,
            });
        }
        check_sizes(ty, bytes.len(), rows.saturating_mul(cols))?;
        Ok(QuantizedMatrix {
            ty,
            rows,
            cols,
            bytes,
            terms: Vec::new(),
        })
    }

    /// The block type of the stored matrix (the terms beside it are f32).
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// The blocks as stored, without the terms of edits.
    pub fn blocks(&self) -> &Bytes {
        &self.bytes
    }

    /// How many rank-one terms edits have added to the blocks.
    pub fn rank_of_edits(&self) -> usize {
        self.terms.len()
    }

    /// Bytes kept: the blocks and the edits' terms.
    pub fn kept_bytes(&self) -> u64 {
        (self.bytes.len() + 4 * self.terms.len() * (self.rows + self.cols)) as u64
    }

    /// `[rows, cols]`
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// `W <- W + a bᵀ` (`a`: `[rows]`, `b`: `[cols]`), kept beside the blocks in f32.
    pub fn add_outer(&mut self, a: Tensor<1>, b: Tensor<1>) {
        self.push(a, b, false);
    }

    /// `W <- (I - r rᵀ) W` for a unit vector `r` (`[rows]`): every column loses its component
    /// along `r`, and so does every product's output.
    pub fn remove_from_columns(&mut self, r: Tensor<1>) {
        let [rows] = r.dims();
        let b = self.left_matmul_f32(r.clone().reshape([1, rows]));
        let [_, cols] = b.dims();
        self.push(-r, b.reshape([cols]), true);
    }

    /// `W <- W (I - r rᵀ)` for a unit vector `r` (`[cols]`): every row loses its component
    /// along `r`.
    pub fn remove_from_rows(&mut self, r: Tensor<1>) {
        let [cols] = r.dims();
        let a = self.matmul_f32(r.clone().reshape([1, cols]));
        let [_, rows] = a.dims();
        self.push(-a.reshape([rows]), r, false);
    }

    fn push(&mut self, a: Tensor<1>, b: Tensor<1>, projects: bool) {
        let ([rows], [cols]) = (a.dims(), b.dims());
        assert_eq!([rows, cols], self.dims(), "a term of the matrix's shape");
        self.terms.push(Term { a, b, projects });
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_size() * self.ty.type_size()
    }

    /// Rows `start..start + count` dequantized into `out` (`[count, cols]`), on every thread.
    fn dequantize_rows(&self, start: usize, out: &mut [f32]) {
        let (cols, row_bytes) = (self.cols, self.row_bytes());
        for_each_chunk(out, DEQUANT_ROWS * cols, |(t, o)| {
            let first = start + t * DEQUANT_ROWS;
            let count = o.len() / cols;
            let bytes = &self.bytes[first * row_bytes..(first + count) * row_bytes];
            dequantize_into(self.ty, bytes, o)
                .unwrap_or_else(|e| unreachable!("sizes checked by QuantizedMatrix::new: {e}"));
        });
    }

    /// Every value of the stored blocks as f32, `[rows, cols]`, without the edits.
    fn dequantize_blocks(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        self.dequantize_rows(0, &mut out);
        out
    }

    /// Every value as f32, edits included, `[rows, cols]`: for export and for measurements
    /// of the weight.
    pub fn to_tensor(&self, device: &Device) -> Tensor<2> {
        let blocks = Tensor::from_data(
            TensorData::new(self.dequantize_blocks(), [self.rows, self.cols]),
            device,
        );
        self.terms.iter().fold(blocks, |w, t| {
            w + column(&t.a).matmul(row(&t.b)).to_device(device)
        })
    }

    /// The rows `ids` dequantized (an embedding lookup).
    ///
    /// # Shapes
    /// - `ids`: `[n]` → `[n, cols]`
    pub fn select_rows(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        let device = ids.device();
        let edits: Vec<Tensor<2>> = self
            .terms
            .iter()
            .map(|t| column(&t.a.clone().select(0, ids.clone())).matmul(row(&t.b)))
            .collect();
        let ids = ids
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .unwrap_or_else(|e| unreachable!("token ids convert to i64: {e:?}"));
        let row_bytes = self.row_bytes();
        let mut out = vec![0.0f32; ids.len() * self.cols];
        for (&id, o) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            let r = usize::try_from(id)
                .ok()
                .filter(|r| *r < self.rows)
                .unwrap_or_else(|| panic!("token id {id} outside the {} rows", self.rows));
            dequantize_into(self.ty, &self.bytes[r * row_bytes..(r + 1) * row_bytes], o)
                .unwrap_or_else(|e| unreachable!("sizes checked by QuantizedMatrix::new: {e}"));
        }
        let rows = Tensor::from_data(TensorData::new(out, [ids.len(), self.cols]), &device);
        edits.into_iter().fold(rows, |rows, e| rows + e)
    }

    /// `x · Wᵀ`: decoding rows through the kernels (for block types, activations rounded to 8
    /// bits, as llama.cpp does), more rows as `prompts` says.
    ///
    /// # Shapes
    /// - `x`: `[n, cols]` → `[n, rows]`
    pub fn matmul(&self, x: Tensor<2>, prompts: PromptProducts) -> Tensor<2> {
        let [n, cols] = x.dims();
        assert_eq!(cols, self.cols, "input width of a {} matrix", self.ty);
        let kernels = n <= KERNEL_ROWS
            || (prompts == PromptProducts::Rounded
                && n <= generation_kernel_rows(self.rows, self.cols)
                && dot::multiplies_prompts(Isa::detect(), self.ty));
        let blocks = |x| {
            if kernels {
                self.matmul_kernels(x)
            } else {
                self.matmul_tiled(x, self.tile_rows())
            }
        };
        if self.terms.is_empty() {
            // No second handle on `x`: the kernels then take its buffer without a copy.
            return blocks(x);
        }
        let product = blocks(x.clone());
        self.with_terms(x, product)
    }

    /// `x · Wᵀ` in f32 arithmetic for any number of rows: what an edit computed from the
    /// weight needs to be exact.
    ///
    /// # Shapes
    /// - `x`: `[n, cols]` → `[n, rows]`
    pub fn matmul_f32(&self, x: Tensor<2>) -> Tensor<2> {
        let product = self.matmul_tiled(x.clone(), self.tile_rows());
        self.with_terms(x, product)
    }

    /// The blocks' product `y = x · Wᵀ` followed by each term in turn.
    fn with_terms(&self, x: Tensor<2>, y: Tensor<2>) -> Tensor<2> {
        self.terms.iter().fold(y, |y, t| {
            if t.projects {
                // `y - (y.r) rᵀ`, and `a = -r`.
                y.clone() - y.matmul(column(&t.a)).matmul(row(&t.a))
            } else {
                y + x.clone().matmul(column(&t.b)).matmul(row(&t.a))
            }
        })
    }

    /// `v · W` in f32, the product from the other side.
    ///
    /// # Shapes
    /// - `v`: `[n, rows]` → `[n, cols]`
    pub fn left_matmul_f32(&self, v: Tensor<2>) -> Tensor<2> {
        let [n, rows] = v.dims();
        assert_eq!(rows, self.rows, "output width of a {} matrix", self.ty);
        let device = v.device();
        let tile_rows = self.tile_rows();
        let mut product = Tensor::<2>::zeros([n, self.cols], &device);
        for start in (0..self.rows).step_by(tile_rows) {
            let count = tile_rows.min(self.rows - start);
            let w = self.tile(start, count, &device);
            product = product + v.clone().narrow(1, start, count).matmul(w);
        }
        self.terms.iter().fold(product, |p, t| {
            p + v.clone().matmul(column(&t.a)).matmul(row(&t.b))
        })
    }

    fn tile_rows(&self) -> usize {
        (TILE_ELEMENTS / self.cols).clamp(1, self.rows)
    }

    /// `x · Wᵀ` of the blocks through the kernels of [`dot`].
    fn matmul_kernels(&self, x: Tensor<2>) -> Tensor<2> {
        let [n, _] = x.dims();
        let device = x.device();
        let x = x
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_else(|e| unreachable!("f32 activations: {e:?}"));
        let mut out = vec![0.0f32; n * self.rows];
        dot::matmul(
            Isa::detect(),
            self.ty,
            &self.bytes,
            self.rows,
            self.cols,
            &x,
            &mut out,
        );
        Tensor::from_data(TensorData::new(out, [n, self.rows]), &device)
    }

    /// `x · Wᵀ` of the blocks through dequantized tiles of rows and f32 matrix multiplication.
    fn matmul_tiled(&self, x: Tensor<2>, tile_rows: usize) -> Tensor<2> {
        let device = x.device();
        // `tile · xᵀ`, transposed back: gemm then packs only the few activation rows, where
        // `x · tileᵀ` packed the whole transposed tile (3.6 → 1.0 ms for 16 rows of a
        // 3072 x 1024 matrix, most of what the tiles cost below a few hundred rows).
        let xt = x.transpose();
        let parts: Vec<Tensor<2>> = (0..self.rows)
            .step_by(tile_rows)
            .map(|start| {
                let count = tile_rows.min(self.rows - start);
                self.tile(start, count, &device).matmul(xt.clone())
            })
            .collect();
        Tensor::cat(parts, 0).transpose()
    }

    /// Rows `start..start + count` of the blocks dequantized, `[count, cols]` on `device`.
    fn tile(&self, start: usize, count: usize, device: &Device) -> Tensor<2> {
        let mut tile = vec![0.0f32; count * self.cols];
        self.dequantize_rows(start, &mut tile);
        Tensor::from_data(TensorData::new(tile, [count, self.cols]), device)
    }
}

/// `v` as a `[n, 1]` matrix.
fn column(v: &Tensor<1>) -> Tensor<2> {
    let [n] = v.dims();
    v.clone().reshape([n, 1])
}

/// `v` as a `[1, n]` matrix.
fn row(v: &Tensor<1>) -> Tensor<2> {
    let [n] = v.dims();
    v.clone().reshape([1, n])
}

// A quantized matrix holds no parameters Burn could train, move or save: to Burn it is a
// constant, like a configuration value.
impl Module for QuantizedMatrix {
    fn collect_devices(&self, devices: Devices) -> Devices {
        devices
    }

    fn fork(self, _: &Device) -> Self {
        self
    }

    fn to_device(self, _: &Device) -> Self {
        self
    }

    fn train(self) -> Self {
        self
    }

    fn valid(&self) -> Self {
        self.clone()
    }

    fn materialize(self) -> Self {
        self
    }

    fn visit<V: ModuleVisitor>(&self, _: &mut V) {}

    fn map<M: ModuleMapper>(self, _: &mut M) -> Self {
        self
    }
}

impl ModuleDisplayDefault for QuantizedMatrix {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .add_formatted(&format!(
                "{} [{}, {}] + {} rank-one terms",
                self.ty,
                self.rows,
                self.cols,
                self.terms.len()
            ))
            .optional()
    }
}

impl ModuleDisplay for QuantizedMatrix {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::quantize;
    use crate::model::read_f32;

    fn matrix(ty: GgmlType, rows: usize, cols: usize) -> (QuantizedMatrix, Vec<f32>) {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * (1.0 + (i % 13) as f32))
            .collect();
        let bytes = quantize(ty, &values).unwrap();
        let m = QuantizedMatrix::new(ty, rows, cols, bytes).unwrap();
        let dense = m.dequantize_blocks();
        (m, dense)
    }

    fn f32_product(w: &[f32], [rows, cols]: [usize; 2], x: &[f32], device: &Device) -> Vec<f32> {
        let n = x.len() / cols;
        let w = Tensor::<2>::from_data(TensorData::new(w.to_vec(), [rows, cols]), device);
        let x = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, cols]), device);
        read_f32(x.matmul(w.transpose()))
    }

    #[test]
    fn many_rows_equal_the_f32_product_of_the_dequantized_matrix() {
        let device = Device::flex();
        let (m, dense) = matrix(GgmlType::Q4K, 70, 512);
        let x: Vec<f32> = (0..9 * 512).map(|i| (i as f32 * 0.37).sin()).collect();
        let tensor = Tensor::<2>::from_data(TensorData::new(x.clone(), [9, 512]), &device);
        let got = read_f32(m.matmul(tensor, PromptProducts::Exact));
        let want = f32_product(&dense, m.dims(), &x, &device);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }

    /// A generation prompt's rows are each what a decoding step computes for that row alone
    /// (the kernels, whose error against the exact product `gguf::dot`'s tests bound), where
    /// the CPU's kernels multiply prompts and up to the matrix's row limit; past the limit, and
    /// elsewhere, they are the exact product.
    #[test]
    fn rounded_rows_are_each_the_decoding_product_up_to_the_limit() {
        let device = Device::flex();
        let limit = generation_kernel_rows(70, 512);
        assert_eq!(limit, 16);
        for ty in [GgmlType::Q4_0, GgmlType::Q5_1, GgmlType::Q4K, GgmlType::Q6K] {
            let (m, _) = matrix(ty, 70, 512);
            for n in [11, limit, limit + 1] {
                let x: Vec<f32> = (0..n * 512).map(|i| (i as f32 * 0.37).sin()).collect();
                let tensor = |x: &[f32]| {
                    let rows = x.len() / 512;
                    Tensor::<2>::from_data(TensorData::new(x.to_vec(), [rows, 512]), &device)
                };
                let got = read_f32(m.matmul(tensor(&x), PromptProducts::Rounded));
                let want: Vec<f32> = if n <= limit && dot::multiplies_prompts(Isa::detect(), ty) {
                    x.chunks_exact(512)
                        .flat_map(|row| read_f32(m.matmul(tensor(row), PromptProducts::Exact)))
                        .collect()
                } else {
                    read_f32(m.matmul(tensor(&x), PromptProducts::Exact))
                };
                assert_eq!(got, want, "{ty}, {n} rows");
            }
        }
    }

    #[test]
    fn edits_are_part_of_every_product_and_every_value() {
        let device = Device::flex();
        let (mut m, mut dense) = matrix(GgmlType::Q8_0, 6, 64);
        let close = |got: &[f32], want: &[f32], tol: f32| {
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{g} vs {w}");
            }
        };
        let vector =
            |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin()).collect() };
        let tensor1 =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), &device);
        for k in [0.3, 0.7] {
            let (a, b) = (vector(6, k), vector(64, k + 0.1));
            for (i, row) in dense.chunks_exact_mut(64).enumerate() {
                for (j, w) in row.iter_mut().enumerate() {
                    *w += a[i] * b[j];
                }
            }
            m.add_outer(tensor1(&a), tensor1(&b));
        }
        close(&read_f32(m.to_tensor(&device)), &dense, 1e-6);
        // Then a unit r out of every column, (I - r rᵀ) W, and a unit s out of every row,
        // W (I - s sᵀ).
        let unit = |n: usize, k: f32| {
            let v = vector(n, k);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect::<Vec<_>>()
        };
        let (r, s) = (unit(6, 1.3), unit(64, 0.2));
        for j in 0..64 {
            let along: f32 = (0..6).map(|i| dense[i * 64 + j] * r[i]).sum();
            for i in 0..6 {
                dense[i * 64 + j] -= along * r[i];
            }
        }
        m.remove_from_columns(tensor1(&r));
        close(&read_f32(m.to_tensor(&device)), &dense, 1e-6);
        for row in dense.chunks_exact_mut(64) {
            let along: f32 = row.iter().zip(&s).map(|(w, s)| w * s).sum();
            for (w, s) in row.iter_mut().zip(&s) {
                *w -= along * s;
            }
        }
        m.remove_from_rows(tensor1(&s));
        close(&read_f32(m.to_tensor(&device)), &dense, 1e-6);
        assert_eq!(m.rank_of_edits(), 4);
        assert_eq!(m.kept_bytes(), (m.bytes.len() + 4 * 4 * (6 + 64)) as u64);

        let tensor = |x: &[f32], n: usize, w: usize| {
            Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, w]), &device)
        };
        let x: Vec<f32> = (0..9 * 64).map(|i| (i as f32 * 0.37).cos()).collect();
        let want = f32_product(&dense, m.dims(), &x, &device);
        close(
            &read_f32(m.matmul(tensor(&x, 9, 64), PromptProducts::Exact)),
            &want,
            1e-5,
        );
        close(
            &read_f32(m.matmul_f32(tensor(&x[..64], 1, 64))),
            &want[..6],
            1e-5,
        );
        // Decoding rows round the activations to 8 bits, which moves the blocks' product by
        // up to 1 % of sum |x w| (the kernels' bound); the terms stay exact.
        let decoded = read_f32(m.matmul(tensor(&x[..2 * 64], 2, 64), PromptProducts::Exact));
        let blocks = m.dequantize_blocks();
        for (k, (g, w)) in decoded.iter().zip(&want).enumerate() {
            let (n, i) = (k / 6, k % 6);
            let bound: f32 = (0..64)
                .map(|j| (x[n * 64 + j] * blocks[i * 64 + j]).abs())
                .sum();
            assert!(
                (g - w).abs() <= 1e-2 * bound + 1e-5,
                "{g} vs {w} (bound {bound})"
            );
        }

        let v: Vec<f32> = (0..2 * 6).map(|i| (i as f32 * 0.9).sin()).collect();
        let mut left = vec![0.0f32; 2 * 64];
        for (r, out) in left.chunks_exact_mut(64).enumerate() {
            for (i, row) in dense.chunks_exact(64).enumerate() {
                for (o, w) in out.iter_mut().zip(row) {
                    *o += v[r * 6 + i] * w;
                }
            }
        }
        close(&read_f32(m.left_matmul_f32(tensor(&v, 2, 6))), &left, 1e-5);

        let ids = Tensor::<1, Int>::from_data(TensorData::new(vec![5i64, 0, 5], [3]), &device);
        let rows = read_f32(m.select_rows(ids));
        for (k, id) in [5usize, 0, 5].into_iter().enumerate() {
            close(&rows[k * 64..][..64], &dense[id * 64..][..64], 1e-6);
        }
    }

    #[test]
    fn decoded_outputs_have_nothing_along_a_removed_column_direction() {
        let device = Device::flex();
        let (mut m, _) = matrix(GgmlType::Q4_0, 8, 64);
        let r: Vec<f32> = (0..8).map(|i| if i < 2 { 0.6 } else { 0.2 }).collect();
        let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        let r: Vec<f32> = r.into_iter().map(|x| x / norm).collect();
        let x: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.21).sin()).collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [2, 64]), &device);
        let along = |y: Tensor<2>| {
            let y = read_f32(y);
            y.chunks_exact(8)
                .map(|row| row.iter().zip(&r).map(|(a, b)| a * b).sum::<f32>().abs())
                .fold(0.0f32, f32::max)
        };
        let before = along(m.matmul(x.clone(), PromptProducts::Exact));
        m.remove_from_columns(Tensor::from_data(TensorData::new(r.clone(), [8]), &device));
        let after = along(m.matmul(x, PromptProducts::Exact));
        // The integer kernels round x to 8 bits; the projection acts on what they computed.
        assert!(
            before > 0.1 && after <= 1e-6 * before,
            "{before} -> {after}"
        );
    }

    #[test]
    fn tiles_cover_every_row() {
        let device = Device::flex();
        let (m, dense) = matrix(GgmlType::Q8_0, 5, 64);
        let x: Vec<f32> = (0..6 * 64).map(|i| (i as f32 * 0.11).cos()).collect();
        let tensor = Tensor::<2>::from_data(TensorData::new(x.clone(), [6, 64]), &device);
        // Tiles of two rows: three tiles, the last one short.
        let got = read_f32(m.matmul_tiled(tensor, 2));
        let want = f32_product(&dense, m.dims(), &x, &device);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()));
        }
    }

    #[test]
    fn selected_rows_are_the_dequantized_rows() {
        let device = Device::flex();
        let (m, dense) = matrix(GgmlType::Q6K, 10, 256);
        let ids = Tensor::<1, Int>::from_data(TensorData::new(vec![7i64, 0, 7, 9], [4]), &device);
        let got = read_f32(m.select_rows(ids));
        for (k, &id) in [7usize, 0, 7, 9].iter().enumerate() {
            assert_eq!(got[k * 256..][..256], dense[id * 256..][..256]);
        }
    }

    #[test]
    fn wrong_sizes_and_f32_are_refused() {
        assert!(matches!(
            QuantizedMatrix::new(GgmlType::Q4_0, 2, 32, vec![0; 35]),
            Err(GgufError::DataSizeMismatch { .. })
        ));
        assert!(matches!(
            QuantizedMatrix::new(GgmlType::Q4K, 1, 96, vec![0; 144]),
            Err(GgufError::NotBlockMultiple { .. })
        ));
        assert!(matches!(
            QuantizedMatrix::new(GgmlType::F32, 1, 2, vec![0; 8]),
            Err(GgufError::UnsupportedKernel { .. })
        ));
    }
}
