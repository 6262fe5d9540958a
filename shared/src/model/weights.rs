//! Building a [`Llama`] from host-side weights, whatever format they came from.
//!
//! Loaders (GGUF, safetensors, random init) implement [`WeightSource`] for the format-neutral
//! [`WeightName`]s; [`build`] checks every shape against the config before anything reaches the
//! device, so a wrong file fails with the tensor's name rather than a panic mid-forward.
//!
//! A 16-bit checkpoint (f16, bf16) keeps its large matrices in 16 bits on the device (see
//! [`WeightStorage`]): a 7-8B model then needs about the bytes of its files, not twice that.
//! Weights are read, converted and placed one at a time, so loading needs the model plus one
//! tensor.

use burn::module::Param;
use burn::tensor::{DType, Device, Tensor, TensorData};
use bytes::Bytes;
use half::{bf16, f16};
use thiserror::Error;

use super::config::ModelConfig;
use super::llama::{Attention, Block, Linear, Llama, Mlp, RmsNorm, Weight};
use super::quantized::QuantizedMatrix;
use crate::gguf::{GgmlType, dequantize};

/// A weight of the decoder, named independently of any file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightName {
    TokenEmbedding,
    FinalNorm,
    OutputHead,
    Block(usize, BlockWeight),
}

/// A weight inside decoder block `l`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockWeight {
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    O,
    MlpNorm,
    Gate,
    Up,
    Down,
}

impl BlockWeight {
    pub const ALL: [BlockWeight; 12] = [
        BlockWeight::AttnNorm,
        BlockWeight::Q,
        BlockWeight::K,
        BlockWeight::V,
        BlockWeight::QBias,
        BlockWeight::KBias,
        BlockWeight::VBias,
        BlockWeight::O,
        BlockWeight::MlpNorm,
        BlockWeight::Gate,
        BlockWeight::Up,
        BlockWeight::Down,
    ];
}

impl WeightName {
    /// Row-major shape the weight must have: matrices are `[d_out, d_in]` as both GGUF and
    /// Hugging Face store them.
    pub fn expected_shape(self, c: &ModelConfig) -> Vec<usize> {
        let q_width = c.n_heads * c.head_dim;
        let kv_width = c.n_kv_heads * c.head_dim;
        match self {
            WeightName::TokenEmbedding | WeightName::OutputHead => vec![c.vocab_size, c.d_model],
            WeightName::FinalNorm => vec![c.d_model],
            WeightName::Block(_, w) => match w {
                BlockWeight::AttnNorm | BlockWeight::MlpNorm => vec![c.d_model],
                BlockWeight::Q => vec![q_width, c.d_model],
                BlockWeight::K | BlockWeight::V => vec![kv_width, c.d_model],
                BlockWeight::QBias => vec![q_width],
                BlockWeight::KBias | BlockWeight::VBias => vec![kv_width],
                BlockWeight::O => vec![c.d_model, q_width],
                BlockWeight::Gate | BlockWeight::Up => vec![c.d_ff, c.d_model],
                BlockWeight::Down => vec![c.d_model, c.d_ff],
            },
        }
    }
}

/// One weight in host memory, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A weight's values in the type its file stores them, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredValues {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    /// GGML blocks of a block type (GGUF's Q4_0, Q4_K, ...), as the file stores them; the
    /// byte count has been checked against the tensor's shape.
    Blocks(GgmlType, Bytes),
}

impl StoredValues {
    pub fn len(&self) -> usize {
        match self {
            StoredValues::F32(v) => v.len(),
            StoredValues::F16(v) => v.len(),
            StoredValues::BF16(v) => v.len(),
            StoredValues::Blocks(ty, bytes) => bytes.len() / ty.type_size() * ty.block_size(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to f32 (exactly: every f16 and bf16 is an f32, and blocks are
    /// dequantized as gguf-py does).
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            StoredValues::F32(v) => v,
            StoredValues::F16(v) => v.into_iter().map(f16::to_f32).collect(),
            StoredValues::BF16(v) => v.into_iter().map(bf16::to_f32).collect(),
            StoredValues::Blocks(ty, bytes) => {
                let n = bytes.len() / ty.type_size() * ty.block_size();
                dequantize(ty, &bytes, n)
                    .unwrap_or_else(|e| unreachable!("whole blocks, by construction: {e}"))
            }
        }
    }

    /// The device type of dense values; blocks are widened to f32 when made dense.
    fn dtype(&self) -> DType {
        match self {
            StoredValues::F32(_) | StoredValues::Blocks(..) => DType::F32,
            StoredValues::F16(_) => DType::F16,
            StoredValues::BF16(_) => DType::BF16,
        }
    }

    /// `[rows, cols]` → `[cols, rows]`, in the stored type.
    fn transposed(self, rows: usize, cols: usize) -> StoredValues {
        match self {
            StoredValues::F32(v) => StoredValues::F32(transpose(&v, rows, cols)),
            StoredValues::F16(v) => StoredValues::F16(transpose(&v, rows, cols)),
            StoredValues::BF16(v) => StoredValues::BF16(transpose(&v, rows, cols)),
            blocks @ StoredValues::Blocks(..) => {
                StoredValues::F32(transpose(&blocks.into_f32(), rows, cols))
            }
        }
    }

    fn into_data(self, shape: [usize; 2]) -> TensorData {
        match self {
            StoredValues::F32(v) => TensorData::new(v, shape),
            StoredValues::F16(v) => TensorData::new(v, shape),
            StoredValues::BF16(v) => TensorData::new(v, shape),
            blocks @ StoredValues::Blocks(..) => TensorData::new(blocks.into_f32(), shape),
        }
    }
}

/// One weight as its file stores it: what [`build`] reads, so 16-bit values need not pass
/// through f32.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub values: StoredValues,
}

impl From<HostTensor> for StoredTensor {
    fn from(t: HostTensor) -> Self {
        StoredTensor {
            shape: t.shape,
            values: StoredValues::F32(t.data),
        }
    }
}

/// In which type the large matrices (token embedding, output head and the seven linear layers
/// of every block) are kept. Norm gains and biases are always f32, and every forward pass
/// computes in f32: on the CPU a quantized or 16-bit matrix is multiplied from its stored
/// values (see [`super::quantized`]); on a GPU a 16-bit matrix is widened to f32 where it is
/// used (one matrix at a time).
///
/// Edits of a 16-bit matrix on a GPU (orthogonalization, compression, AIRD) are computed in
/// f32 and rounded to the matrix's type when written back. On the CPU, orthogonalization and
/// AIRD keep the stored values and add exact rank-one terms beside them, and compression
/// stores its result in the source's type where that type holds it (in 16 bits otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightStorage {
    /// The checkpoint's type: GGML blocks stay blocks on the CPU backend (other devices get
    /// them dequantized to f32), f16 and bf16 stay 16-bit on the CPU and on devices that
    /// support that type, f32 stays f32.
    #[default]
    AsStored,
    /// f32 whatever the checkpoint stores: the reference for numerical checks, at four times
    /// the memory of a 16-bit checkpoint and about eight times that of a 4-bit one.
    F32,
}

/// Why weights could not be assembled into a model.
#[derive(Debug, Error)]
pub enum WeightError {
    #[error("tensor `{tensor}` is missing")]
    Missing { tensor: String },
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape {
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{tensor}`: {source}")]
    Source {
        tensor: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Where weights come from.
pub trait WeightSource {
    /// The format's own name for a weight, used in error messages.
    fn describe(&self, name: WeightName) -> String;

    /// The weight's values as f32, or `None` if the file does not have it (optional weights
    /// such as biases and an untied head are asked for too).
    fn read(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError>;

    /// The weight in the type the file stores it in; what [`build`] calls. Formats that hold
    /// 16-bit floats override it; the default is [`WeightSource::read`]'s f32 values.
    fn read_stored(&mut self, name: WeightName) -> Result<Option<StoredTensor>, WeightError> {
        Ok(self.read(name)?.map(StoredTensor::from))
    }
}

/// Reads weights in order, checks their shapes and reports progress.
struct Fetcher<'a> {
    source: &'a mut dyn WeightSource,
    config: &'a ModelConfig,
    progress: &'a mut dyn FnMut(usize, usize),
    done: usize,
    total: usize,
}

impl Fetcher<'_> {
    fn optional(&mut self, name: WeightName) -> Result<Option<StoredTensor>, WeightError> {
        let found = self.source.read_stored(name)?;
        self.done += 1;
        (self.progress)(self.done, self.total);
        let Some(t) = found else { return Ok(None) };
        let expected = name.expected_shape(self.config);
        if t.shape != expected || t.values.len() != expected.iter().product::<usize>() {
            return Err(WeightError::Shape {
                tensor: self.source.describe(name),
                found: t.shape,
                expected,
            });
        }
        Ok(Some(t))
    }

    fn required(&mut self, name: WeightName) -> Result<StoredTensor, WeightError> {
        self.optional(name)?.ok_or_else(|| WeightError::Missing {
            tensor: self.source.describe(name),
        })
    }
}

/// Assembles a model, keeping its large matrices as `storage` says and calling
/// `progress(done, total)` after each weight. Each weight is on the device before the next is
/// read.
pub fn build(
    config: ModelConfig,
    source: &mut dyn WeightSource,
    device: &Device,
    storage: WeightStorage,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Llama, WeightError> {
    let head_count = usize::from(!config.tied_embeddings);
    let mut f = Fetcher {
        source,
        config: &config,
        progress,
        done: 0,
        total: 2 + head_count + config.n_layers * BlockWeight::ALL.len(),
    };
    let norm = |t: StoredTensor| RmsNorm {
        weight: Param::from_tensor(vector(t, device)),
        eps: config.rms_norm_eps,
    };
    let linear = |w: StoredTensor, b: Option<StoredTensor>| Linear {
        weight: match quantized(w, device, storage) {
            Ok(q) => Weight::Quantized(q),
            Err(w) => Weight::Dense(Param::from_tensor(transposed_stored(w, device, storage))),
        },
        bias: b.map(|b| Param::from_tensor(vector(b, device))),
    };

    let embedding = matrix(f.required(WeightName::TokenEmbedding)?, device, storage);
    let mut blocks = Vec::with_capacity(config.n_layers);
    for l in 0..config.n_layers {
        let w = |b: BlockWeight| WeightName::Block(l, b);
        let attn_norm = norm(f.required(w(BlockWeight::AttnNorm))?);
        let (q, k, v) = (
            f.required(w(BlockWeight::Q))?,
            f.required(w(BlockWeight::K))?,
            f.required(w(BlockWeight::V))?,
        );
        let mut bias = |b: BlockWeight| {
            if config.qkv_bias {
                f.required(w(b)).map(Some)
            } else {
                f.optional(w(b))
            }
        };
        let (qb, kb, vb) = (
            bias(BlockWeight::QBias)?,
            bias(BlockWeight::KBias)?,
            bias(BlockWeight::VBias)?,
        );
        let o = f.required(w(BlockWeight::O))?;
        let mlp_norm = norm(f.required(w(BlockWeight::MlpNorm))?);
        let (gate, up, down) = (
            f.required(w(BlockWeight::Gate))?,
            f.required(w(BlockWeight::Up))?,
            f.required(w(BlockWeight::Down))?,
        );
        blocks.push(Block {
            attn_norm,
            attn: Attention {
                q: linear(q, qb),
                k: linear(k, kb),
                v: linear(v, vb),
                o: linear(o, None),
                n_heads: config.n_heads,
                n_kv_heads: config.n_kv_heads,
                head_dim: config.head_dim,
            },
            mlp_norm,
            mlp: Mlp {
                gate: linear(gate, None),
                up: linear(up, None),
                down: linear(down, None),
            },
        });
    }
    let final_norm = norm(f.required(WeightName::FinalNorm)?);
    let head = if config.tied_embeddings {
        None
    } else {
        Some(matrix(f.required(WeightName::OutputHead)?, device, storage))
    };
    Ok(Llama {
        embedding,
        blocks,
        norm: final_norm,
        head,
        config,
    })
}

/// Norm gains and biases: always f32.
fn vector(t: StoredTensor, device: &Device) -> Tensor<1> {
    let data = t.values.into_f32();
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), device)
}

/// The blocks of a GGML-typed or 16-bit float matrix (`[d_out, d_in]`) if `storage` keeps
/// them, which it does only on the CPU backend, whose kernels read host memory; otherwise `t`
/// back.
fn quantized(
    t: StoredTensor,
    device: &Device,
    storage: WeightStorage,
) -> Result<QuantizedMatrix, StoredTensor> {
    let keep = storage == WeightStorage::AsStored && *device == Device::flex();
    let (ty, bytes) = match t.values {
        StoredValues::Blocks(ty, bytes) if keep && t.shape[1].is_multiple_of(ty.block_size()) => {
            (ty, bytes)
        }
        StoredValues::F16(v) if keep => (GgmlType::F16, le_bytes(v)),
        StoredValues::BF16(v) if keep => (GgmlType::BF16, le_bytes(v)),
        values => {
            return Err(StoredTensor {
                shape: t.shape,
                values,
            });
        }
    };
    // The value count was checked against the shape when the tensor was read.
    QuantizedMatrix::new(ty, t.shape[0], t.shape[1], bytes)
        .map_err(|e| unreachable!("values checked against their shape: {e}"))
}

/// 16-bit values as the little-endian bytes GGUF stores them in. On a little-endian target
/// (x86-64, aarch64, wasm32) that is the vector's own memory, taken over without a copy: a
/// copy would double the largest tensor's bytes while the model loads.
fn le_bytes<T: bytemuck::Pod + Send>(values: Vec<T>) -> Bytes {
    struct Values<T>(Vec<T>);
    impl<T: bytemuck::Pod> AsRef<[u8]> for Values<T> {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(&self.0)
        }
    }
    if cfg!(target_endian = "little") {
        Bytes::from_owner(Values(values))
    } else {
        bytemuck::cast_slice::<T, u16>(&values)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into()
    }
}

/// The values a matrix keeps on the device: 16-bit ones stay 16-bit if `storage` and the device
/// allow it.
fn kept(values: StoredValues, device: &Device, storage: WeightStorage) -> StoredValues {
    let keep = match &values {
        StoredValues::F32(_) => true,
        StoredValues::F16(_) | StoredValues::BF16(_) => {
            storage == WeightStorage::AsStored && device.supports_dtype(values.dtype())
        }
        StoredValues::Blocks(..) => false,
    };
    if keep {
        values
    } else {
        StoredValues::F32(values.into_f32())
    }
}

/// A device matrix in the type of `values`.
fn placed(values: StoredValues, shape: [usize; 2], device: &Device) -> Tensor<2> {
    let dtype = values.dtype();
    Tensor::from_data(values.into_data(shape), (device, dtype))
}

/// A matrix kept in file layout (the embedding and the head).
fn matrix(t: StoredTensor, device: &Device, storage: WeightStorage) -> Weight {
    match quantized(t, device, storage) {
        Ok(q) => Weight::Quantized(q),
        Err(t) => {
            let shape = [t.shape[0], t.shape[1]];
            Weight::Dense(Param::from_tensor(placed(
                kept(t.values, device, storage),
                shape,
                device,
            )))
        }
    }
}

/// `[d_out, d_in]` as files store it → `[d_in, d_out]` as [`Linear`] multiplies it. Done once
/// on the host, in the stored type, so no forward pass pays for a transposed layout.
fn transposed_stored(t: StoredTensor, device: &Device, storage: WeightStorage) -> Tensor<2> {
    let [rows, cols] = [t.shape[0], t.shape[1]];
    let values = kept(t.values, device, storage).transposed(rows, cols);
    placed(values, [cols, rows], device)
}

/// [`transposed_stored`] for f32 values, as compression writes them back.
pub(crate) fn transposed(t: HostTensor, device: &Device) -> Tensor<2> {
    transposed_stored(StoredTensor::from(t), device, WeightStorage::F32)
}

fn transpose<T: Copy + Default>(data: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); data.len()];
    for (r, row) in data.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}
