//! Matrices kept in memory as their GGML blocks, multiplied without an f32 copy of the weight.
//!
//! A few activation rows at a time (decoding) go through the integer kernels of
//! [`crate::gguf::dot`], which read the blocks directly. Many rows at a time (a prompt batch)
//! are multiplied in f32 against tiles of the matrix dequantized for that one product: there
//! the f32 matrix multiplication is several times faster than any integer dot product, the
//! cost of dequantizing is shared by every row, and only one tile (at most [`TILE_ELEMENTS`]
//! values) exists at a time, so memory stays at the size of the blocks. That path computes
//! exactly the float reference's product of the dequantized weights.
//!
//! The blocks are host memory: models keep them only on the CPU backend (see
//! [`super::weights::build`]).

use std::sync::Arc;

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::gguf::dot::{self, Isa};
use crate::gguf::quant::check_sizes;
use crate::gguf::{GgmlType, GgufError, dequantize_into};
use crate::threads::for_each_chunk;

/// Activation rows up to which the integer kernels are used; from here on the dequantized
/// tiles and f32 matrix multiplication are faster (measured on the 0.5B model's layers with
/// AVX-512: the two break even between 4 and 8 rows).
pub const INTEGER_ROWS: usize = 4;

/// The most values of a dequantized tile: 64 MiB of f32.
const TILE_ELEMENTS: usize = 1 << 24;

/// Rows dequantized per task.
const DEQUANT_ROWS: usize = 64;

/// A `[rows, cols]` matrix of GGML blocks, row-major as GGUF stores it (each row holds
/// `cols / block_size` blocks). Cloning shares the blocks.
#[derive(Debug, Clone)]
pub struct QuantizedMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// An `Arc<Vec>` rather than an `Arc<[u8]>`, whose conversion from the loader's `Vec` would
    /// copy the largest allocation of the model once more.
    bytes: Arc<Vec<u8>>,
}

impl QuantizedMatrix {
    /// Checks that `bytes` hold exactly `rows x cols` values of `ty` in whole rows of blocks,
    /// and that the kernels multiply `ty`.
    ///
    /// # Errors
    ///
    /// [`GgufError::UnsupportedKernel`] for a float type, [`GgufError::NotBlockMultiple`] for
    /// rows that are not whole blocks, [`GgufError::DataSizeMismatch`] for a wrong byte count.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: Vec<u8>) -> Result<Self, GgufError> {
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
            bytes: Arc::new(bytes),
        })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// `[rows, cols]`
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The blocks, as a GGUF file stores them.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
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

    /// Every value as f32, `[rows, cols]`: for edits of the weight and for export.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        self.dequantize_rows(0, &mut out);
        out
    }

    /// The dequantized matrix on `device`, `[rows, cols]`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.dequantize(), [self.rows, self.cols]),
            device,
        )
    }

    /// The rows `ids` dequantized (an embedding lookup).
    ///
    /// # Shapes
    /// - `ids`: `[n]` → `[n, cols]`
    pub fn select_rows(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        let device = ids.device();
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
        Tensor::from_data(TensorData::new(out, [ids.len(), self.cols]), &device)
    }

    /// `x · Wᵀ`.
    ///
    /// # Shapes
    /// - `x`: `[n, cols]` → `[n, rows]`
    pub fn matmul(&self, x: Tensor<2>) -> Tensor<2> {
        let [n, cols] = x.dims();
        assert_eq!(cols, self.cols, "input width of a {} matrix", self.ty);
        let device = x.device();
        if n > INTEGER_ROWS {
            return self.matmul_tiled(x, (TILE_ELEMENTS / self.cols).clamp(1, self.rows));
        }
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

    /// [`Self::matmul`] through dequantized tiles of rows and f32 matrix multiplication.
    fn matmul_tiled(&self, x: Tensor<2>, tile_rows: usize) -> Tensor<2> {
        let device = x.device();
        let parts: Vec<Tensor<2>> = (0..self.rows)
            .step_by(tile_rows)
            .map(|start| {
                let count = tile_rows.min(self.rows - start);
                let mut tile = vec![0.0f32; count * self.cols];
                self.dequantize_rows(start, &mut tile);
                let w = Tensor::<2>::from_data(TensorData::new(tile, [count, self.cols]), &device);
                x.clone().matmul(w.transpose())
            })
            .collect();
        Tensor::cat(parts, 1)
    }
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
            .add_formatted(&format!("{} [{}, {}]", self.ty, self.rows, self.cols))
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
        let dense = m.dequantize();
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
        let got = read_f32(m.matmul(tensor));
        let want = f32_product(&dense, m.dims(), &x, &device);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
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
    fn wrong_sizes_and_float_types_are_refused() {
        assert!(matches!(
            QuantizedMatrix::new(GgmlType::Q4_0, 2, 32, vec![0; 35]),
            Err(GgufError::DataSizeMismatch { .. })
        ));
        assert!(matches!(
            QuantizedMatrix::new(GgmlType::Q4K, 1, 96, vec![0; 144]),
            Err(GgufError::NotBlockMultiple { .. })
        ));
        assert!(matches!(
            QuantizedMatrix::new(GgmlType::F16, 1, 2, vec![0; 4]),
            Err(GgufError::UnsupportedKernel { .. })
        ));
    }
}
