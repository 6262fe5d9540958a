//! Building a [`Llama`] from host-side weights, whatever format they came from.
//!
//! Loaders (GGUF, safetensors, random init) implement [`WeightSource`] for the format-neutral
//! [`WeightName`]s; [`build`] checks every shape against the config before anything reaches the
//! device, so a wrong file fails with the tensor's name rather than a panic mid-forward.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use thiserror::Error;

use super::config::ModelConfig;
use super::llama::{Attention, Block, Linear, Llama, Mlp, RmsNorm};

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

    /// The weight as stored, or `None` if the file does not have it (optional weights such as
    /// biases and an untied head are asked for too).
    fn read(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError>;
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
    fn optional(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError> {
        let found = self.source.read(name)?;
        self.done += 1;
        (self.progress)(self.done, self.total);
        let Some(t) = found else { return Ok(None) };
        let expected = name.expected_shape(self.config);
        if t.shape != expected || t.data.len() != expected.iter().product::<usize>() {
            return Err(WeightError::Shape {
                tensor: self.source.describe(name),
                found: t.shape,
                expected,
            });
        }
        Ok(Some(t))
    }

    fn required(&mut self, name: WeightName) -> Result<HostTensor, WeightError> {
        self.optional(name)?.ok_or_else(|| WeightError::Missing {
            tensor: self.source.describe(name),
        })
    }
}

/// Assembles a model, calling `progress(done, total)` after each weight.
pub fn build(
    config: ModelConfig,
    source: &mut dyn WeightSource,
    device: &Device,
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
    let norm = |t: HostTensor| RmsNorm {
        weight: Param::from_tensor(vector(t, device)),
        eps: config.rms_norm_eps,
    };
    let linear = |w: HostTensor, b: Option<HostTensor>| Linear {
        weight: Param::from_tensor(transposed(w, device)),
        bias: b.map(|b| Param::from_tensor(vector(b, device))),
    };

    let embedding = Param::from_tensor(matrix(f.required(WeightName::TokenEmbedding)?, device));
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
        Some(Param::from_tensor(matrix(
            f.required(WeightName::OutputHead)?,
            device,
        )))
    };
    Ok(Llama {
        embedding,
        blocks,
        norm: final_norm,
        head,
        config,
    })
}

fn vector(t: HostTensor, device: &Device) -> Tensor<1> {
    let n = t.data.len();
    Tensor::from_data(TensorData::new(t.data, [n]), device)
}

fn matrix(t: HostTensor, device: &Device) -> Tensor<2> {
    let [rows, cols] = [t.shape[0], t.shape[1]];
    Tensor::from_data(TensorData::new(t.data, [rows, cols]), device)
}

/// `[d_out, d_in]` as files store it → `[d_in, d_out]` as [`Linear`] multiplies it. Done once
/// on the host, so no forward pass pays for a transposed layout.
pub(crate) fn transposed(t: HostTensor, device: &Device) -> Tensor<2> {
    let [rows, cols] = [t.shape[0], t.shape[1]];
    let mut out = vec![0.0f32; t.data.len()];
    for (r, row) in t.data.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    Tensor::from_data(TensorData::new(out, [cols, rows]), device)
}
