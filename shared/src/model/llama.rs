//! The Llama-family decoder (METHOD §1), in the order data flows:
//! batch → cache → linear/norm → attention → MLP → block → model.
//!
//! Weights live in Burn modules with no backend type parameter: the backend is whatever
//! [`Device`] the tensors were created on (flex CPU, wgpu/WebGPU, CUDA). The large matrices may
//! be stored in f16 or bf16, or on the CPU as GGML blocks (see
//! [`super::weights::WeightStorage`]); every computation is f32, so a 16-bit matrix is widened
//! where it is used and a quantized one multiplied from its blocks.

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::module::linear;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use super::cached_attention::{HostKv, HostRope, attend};
use super::config::{ModelConfig, RopePairing};
use super::hooks::{Hook, HookContext, HookPoint};
use super::quantized::{PromptProducts, QuantizedMatrix};
use super::swiglu::swiglu;
use crate::gguf::GgmlType;
use crate::threads::on_pool;

/// A finite "minus infinity" for masked attention scores. A true `-inf` would turn the
/// softmax of a fully masked row (a padding query) into NaN, and NaN times the zero weight a
/// real query gives that position is still NaN.
const MASKED: f32 = -1.0e30;

/// Rows of a dense 16-bit output head (on a GPU) widened to f32 at a time: 64 MiB of f32 at
/// d_model 4096, rather than a whole f32 copy of the largest matrix next to the model.
const HEAD_ROWS: usize = 4096;

/// Token ids of a left-padded batch: every prompt ends at the last column, so position `-k`
/// is aligned across prompts (METHOD §2).
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[batch, seq]`
    ids: Tensor<2, Int>,
    /// Left padding of each row.
    pad: Vec<usize>,
}

impl TokenBatch {
    /// Left-pads `prompts` to the longest with `pad_id` (the padding is masked out, so its value
    /// only has to be a valid id).
    pub fn left_padded(prompts: &[Vec<u32>], pad_id: u32, device: &Device) -> TokenBatch {
        let seq = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = Vec::with_capacity(prompts.len() * seq);
        let mut pad = Vec::with_capacity(prompts.len());
        for p in prompts {
            let n_pad = seq - p.len().min(seq);
            pad.push(n_pad);
            flat.extend(std::iter::repeat_n(pad_id as i64, n_pad));
            flat.extend(p.iter().map(|&t| t as i64));
        }
        let ids = Tensor::from_data(TensorData::new(flat, [prompts.len(), seq]), device);
        TokenBatch { ids, pad }
    }

    /// One new token per row, for decoding with a [`KvCache`].
    pub fn next_tokens(tokens: &[u32], device: &Device) -> TokenBatch {
        let flat: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let ids = Tensor::from_data(TensorData::new(flat, [tokens.len(), 1]), device);
        TokenBatch {
            ids,
            pad: vec![0; tokens.len()],
        }
    }

    pub fn dims(&self) -> [usize; 2] {
        self.ids.dims()
    }

    pub fn padding(&self) -> &[usize] {
        &self.pad
    }
}

/// Keys and values of every layer for the positions seen so far (run state, not weights).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    /// Left padding of each row, fixed by the first (prompt) call.
    pad: Vec<usize>,
    /// Number of cached positions, padding included.
    len: usize,
    /// How the prompt's products with block weights are computed.
    prompts: PromptProducts,
}

/// One layer's cached keys and values.
// One per layer, replaced in place: the two tensors' size is no reason for a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Default)]
enum LayerKv {
    #[default]
    Empty,
    /// Rotated keys and values, `[batch, n_kv_heads, cached, head_dim]`, on the model's device.
    Tensors(Tensor<4>, Tensor<4>),
    /// On the host, for the CPU backend's decoding steps (see [`super::cached_attention`]).
    Host(HostKv),
}

impl KvCache {
    /// A cache whose prompt is computed exactly (see [`PromptProducts::Exact`]): for passes
    /// that measure activations.
    pub fn new() -> Self {
        KvCache::default()
    }

    /// A cache for generation: its products round activations to 8 bits wherever the kernels
    /// are faster, prompt rows included (see [`PromptProducts::Rounded`]).
    pub fn generating() -> Self {
        KvCache {
            prompts: PromptProducts::Rounded,
            ..KvCache::default()
        }
    }

    /// Positions cached so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One of the model's large matrices: a device tensor, or GGML blocks on the CPU.
#[derive(Module, Debug)]
pub enum Weight {
    /// f32, or f16 or bf16 on a GPU (widened to f32 for each use, a transient copy), in the
    /// layout its holder documents.
    Dense(Param<Tensor<2>>),
    /// `[rows, cols]` as the file stores it (`[d_out, d_in]`), multiplied from its blocks (or
    /// its 16-bit floats).
    Quantized(QuantizedMatrix),
}

impl Weight {
    /// The device the model runs on (quantized matrices only exist on the CPU backend).
    pub fn device(&self) -> Device {
        match self {
            Weight::Dense(w) => w.val().device(),
            Weight::Quantized(_) => Device::flex(),
        }
    }

    /// The type the values are kept in, as GGUF names it (`F32`, `BF16`, `Q4_K`, ...), with
    /// `+rankK` for blocks that carry K rank-one f32 terms of edits.
    pub fn type_name(&self) -> String {
        match self {
            Weight::Dense(w) => match w.val().dtype() {
                DType::F16 => "F16",
                DType::BF16 => "BF16",
                _ => "F32",
            }
            .to_string(),
            Weight::Quantized(q) => match q.rank_of_edits() {
                0 => q.ty().name().to_string(),
                k => format!("{}+rank{k}", q.ty().name()),
            },
        }
    }

    /// Values and bytes as kept: blocks as stored (and the edits' terms), dense tensors at
    /// their type's size.
    fn size(&self) -> (u64, u64) {
        match self {
            Weight::Dense(w) => {
                let w = w.val();
                let n = w.shape().num_elements() as u64;
                (n, n * w.dtype().size() as u64)
            }
            Weight::Quantized(q) => {
                let [rows, cols] = q.dims();
                ((rows * cols) as u64, q.kept_bytes())
            }
        }
    }

    /// The values in file layout `[rows, cols]` for a matrix kept that way (the embedding and
    /// the head): the stored tensor, or the blocks' values (see [`stored_values`]).
    fn file_layout(&self) -> Tensor<2> {
        match self {
            Weight::Dense(w) => w.val(),
            Weight::Quantized(q) => stored_values(q),
        }
    }

    /// `M <- M (I - r rᵀ)` for a matrix kept in file layout and a unit vector `r` (`[cols]`):
    /// every row loses its component along `r`.
    fn remove_from_file_rows(&mut self, r: Tensor<1>) {
        match self {
            Weight::Dense(w) => *w = dense_without_row_component(w, r),
            Weight::Quantized(q) => q.remove_from_rows(r),
        }
    }
}

/// The values of a matrix kept as blocks, `[rows, cols]`, edits included: 16-bit floats in
/// their type (what a dense 16-bit matrix gives, so exports keep them 16-bit; rounded where
/// an edit's terms were added), block types dequantized to f32.
fn stored_values(q: &QuantizedMatrix) -> Tensor<2> {
    let values = q.to_tensor(&Device::flex());
    match q.ty() {
        GgmlType::F16 => values.cast(FloatDType::F16),
        GgmlType::BF16 => values.cast(FloatDType::BF16),
        _ => values,
    }
}

/// `M + a bᵀ` computed in f32 and stored back in `M`'s type (a 16-bit matrix is rounded to it).
fn dense_plus_outer(m: &Param<Tensor<2>>, a: Tensor<1>, b: Tensor<1>) -> Param<Tensor<2>> {
    let ([rows], [cols]) = (a.dims(), b.dims());
    let m = m.val();
    let dtype = m.dtype();
    let outer = a.reshape([rows, 1]).matmul(b.reshape([1, cols]));
    Param::from_tensor((m.cast(FloatDType::F32) + outer).cast(dtype))
}

/// `M - (M r) rᵀ` (every row of `M` without its component along the unit `r`), as
/// [`dense_plus_outer`] computes and stores it.
fn dense_without_row_component(m: &Param<Tensor<2>>, r: Tensor<1>) -> Param<Tensor<2>> {
    let [cols] = r.dims();
    let along = m
        .val()
        .cast(FloatDType::F32)
        .matmul(r.clone().reshape([cols, 1]));
    let [rows, _] = along.dims();
    dense_plus_outer(m, -along.reshape([rows]), r)
}

/// `y = x W + b`, with `W` `[d_in, d_out]` when dense.
#[derive(Module, Debug)]
pub struct Linear {
    /// Dense: `[d_in, d_out]`. Quantized: `[d_out, d_in]` blocks.
    pub weight: Weight,
    /// `[d_out]`
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// # Shapes
    /// - `x`: `[..., d_in]` → `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_with(x, PromptProducts::Exact)
    }

    /// [`Linear::forward`] with many-row products of block weights computed as `prompts` says.
    ///
    /// # Shapes
    /// - `x`: `[..., d_in]` → `[..., d_out]`
    pub fn forward_with<const D: usize>(&self, x: Tensor<D>, prompts: PromptProducts) -> Tensor<D> {
        let bias = self.bias.as_ref().map(Param::val);
        match &self.weight {
            // The cast is a no-op for f32 weights.
            Weight::Dense(w) => linear(x, w.val().cast(FloatDType::F32), bias),
            Weight::Quantized(q) => {
                let dims = x.dims();
                let [d_out, d_in] = q.dims();
                let rows = dims[..D - 1].iter().product();
                let mut out_dims = dims;
                out_dims[D - 1] = d_out;
                let y: Tensor<D> = q.matmul(x.reshape([rows, d_in]), prompts).reshape(out_dims);
                match bias {
                    Some(b) => y + b.unsqueeze(),
                    None => y,
                }
            }
        }
    }

    /// The weight's values, `[d_in, d_out]`: the stored tensor, or the blocks' values with the
    /// edits' terms added (see [`stored_values`]).
    pub fn weight_values(&self) -> Tensor<2> {
        match &self.weight {
            Weight::Dense(w) => w.val(),
            Weight::Quantized(q) => stored_values(q).transpose(),
        }
    }

    /// Replaces the weight by dense values `[d_in, d_out]`.
    pub fn set_weight(&mut self, values: Tensor<2>) {
        self.weight = Weight::Dense(Param::from_tensor(values));
    }

    /// `W <- W (I - r rᵀ)` for a unit vector `r` (`[d_out]`): no input can write along `r`
    /// any more. Computed in f32: a dense weight is stored back in its type, quantized blocks
    /// stay as they are and keep the edit beside them.
    pub fn remove_from_outputs(&mut self, r: Tensor<1>) {
        match &mut self.weight {
            // `[d_in, d_out]`: each row is what one input writes.
            Weight::Dense(w) => *w = dense_without_row_component(w, r),
            // `[d_out, d_in]`: each column is.
            Weight::Quantized(q) => q.remove_from_columns(r),
        }
    }

    /// `W <- W + a bᵀ` exactly (`a`: `[d_in]`, `b`: `[d_out]`): a dense weight is updated in
    /// f32 and stored back in its type; quantized blocks stay as they are and keep the term
    /// beside them (in their layout, `b aᵀ`).
    pub fn add_outer(&mut self, a: Tensor<1>, b: Tensor<1>) {
        match &mut self.weight {
            Weight::Dense(w) => *w = dense_plus_outer(w, a, b),
            Weight::Quantized(q) => q.add_outer(b, a),
        }
    }
}

/// Root-mean-square normalisation with a learned gain.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[d_model]`
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [d] = self.weight.dims();
        let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt();
        (x / rms) * self.weight.val().reshape([1, 1, d])
    }
}

/// Rotary position embedding for the positions of one call: cos and sin of every rotated pair.
struct Rope {
    /// `[batch, 1, seq, head_dim/2]`
    cos: Tensor<4>,
    sin: Tensor<4>,
    /// The same values on the host, `[batch, seq, head_dim/2]`, for attention over a host cache.
    host_cos: Vec<f32>,
    host_sin: Vec<f32>,
    pairing: RopePairing,
}

impl Rope {
    /// Positions count from each row's first real token, so left padding does not shift them.
    fn new(
        config: &ModelConfig,
        pad: &[usize],
        offset: usize,
        seq: usize,
        device: &Device,
    ) -> Rope {
        let inv_freq = config.rope_inv_freq();
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(pad.len() * seq * half);
        let mut sin = Vec::with_capacity(pad.len() * seq * half);
        for &p in pad {
            for i in 0..seq {
                let pos = (offset + i).saturating_sub(p) as f64;
                for f in &inv_freq {
                    let (s, c) = (pos * f).sin_cos();
                    cos.push(c as f32);
                    sin.push(s as f32);
                }
            }
        }
        let shape = [pad.len(), 1, seq, half];
        Rope {
            cos: Tensor::from_data(TensorData::new(cos.clone(), shape), device),
            sin: Tensor::from_data(TensorData::new(sin.clone(), shape), device),
            host_cos: cos,
            host_sin: sin,
            pairing: config.rope_pairing,
        }
    }

    fn host(&self) -> HostRope<'_> {
        HostRope {
            cos: &self.host_cos,
            sin: &self.host_sin,
            pairing: self.pairing,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, heads, seq, head_dim]` → same
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, heads, seq, head_dim] = x.dims();
        let half = head_dim / 2;
        let (a, b) = match self.pairing {
            RopePairing::Halves => (x.clone().narrow(3, 0, half), x.narrow(3, half, half)),
            RopePairing::Interleaved => {
                let pairs = x.reshape([batch, heads, seq, half, 2]);
                (
                    pairs
                        .clone()
                        .narrow(4, 0, 1)
                        .reshape([batch, heads, seq, half]),
                    pairs.narrow(4, 1, 1).reshape([batch, heads, seq, half]),
                )
            }
        };
        let ra = a.clone() * self.cos.clone() - b.clone() * self.sin.clone();
        let rb = a * self.sin.clone() + b * self.cos.clone();
        match self.pairing {
            RopePairing::Halves => Tensor::cat(vec![ra, rb], 3),
            RopePairing::Interleaved => {
                Tensor::stack::<5>(vec![ra, rb], 4).reshape([batch, heads, seq, head_dim])
            }
        }
    }
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl Attention {
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` (normalised stream) → `[batch, seq, d_model]`
    /// - `bias`: `[batch, 1, seq, cached + seq]`, 0 where attending is allowed
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        bias: Tensor<4>,
        cache: &mut LayerKv,
        prompts: PromptProducts,
    ) -> Tensor<3> {
        let heads = self.heads(x, rope, bias, cache, prompts);
        self.o.forward_with(heads, prompts)
    }

    /// The attended values of every head, concatenated: the input of the output projection.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → `[batch, seq, n_heads * head_dim]`
    fn heads(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        bias: Tensor<4>,
        cache: &mut LayerKv,
        prompts: PromptProducts,
    ) -> Tensor<3> {
        let project = |w: &Linear, x| w.forward_with(x, prompts);
        if let LayerKv::Host(kv) = cache {
            let projections = (
                project(&self.q, x.clone()),
                project(&self.k, x.clone()),
                project(&self.v, x),
            );
            return attend(projections, self.n_heads, &rope.host(), kv);
        }
        let [batch, seq, _] = x.dims();
        let heads =
            |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, self.head_dim]).swap_dims(1, 2);
        let q = rope.apply(heads(project(&self.q, x.clone()), self.n_heads));
        let k = rope.apply(heads(project(&self.k, x.clone()), self.n_kv_heads));
        let v = heads(project(&self.v, x), self.n_kv_heads);
        let (k, v) = match std::mem::take(cache) {
            LayerKv::Tensors(ck, cv) => (Tensor::cat(vec![ck, k], 2), Tensor::cat(vec![cv, v], 2)),
            _ => (k, v),
        };
        *cache = LayerKv::Tensors(k.clone(), v.clone());

        let group = self.n_heads / self.n_kv_heads;
        let expand = |t: Tensor<4>| {
            if group == 1 {
                return t;
            }
            let [b, kv, s, d] = t.dims();
            t.reshape([b, kv, 1, s, d])
                .expand([b, kv, group, s, d])
                .reshape([b, kv * group, s, d])
        };
        let (k, v) = (expand(k), expand(v));
        let scale = (self.head_dim as f64).sqrt().recip();
        let scores = q.matmul(k.swap_dims(2, 3)) * scale + bias;
        let out = softmax(scores, 3).matmul(v); // [batch, heads, seq, head_dim]
        out.swap_dims(1, 2)
            .reshape([batch, seq, self.n_heads * self.head_dim])
    }
}

/// SwiGLU feed-forward: `down(silu(gate(h)) * up(h))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → same
    pub fn forward(&self, x: Tensor<3>, prompts: PromptProducts) -> Tensor<3> {
        self.down.forward_with(self.activation(x, prompts), prompts)
    }

    /// `silu(gate(h)) * up(h)`: the input of the down projection.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → `[batch, seq, d_ff]`
    pub fn activation(&self, x: Tensor<3>, prompts: PromptProducts) -> Tensor<3> {
        swiglu(
            self.gate.forward_with(x.clone(), prompts),
            self.up.forward_with(x, prompts),
        )
    }
}

/// One decoder block: `x += attn(norm(x))`, then `x += mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub mlp_norm: RmsNorm,
    pub mlp: Mlp,
}

/// The inputs of every linear layer of one block on one batch: what calibrated compression
/// (GPTQ, Wanda, SparseGPT) and AIRD measure.
#[derive(Debug, Clone)]
pub struct LinearInputs {
    /// Normalised stream entering q, k and v. `[batch, seq, d_model]`
    pub attn: Tensor<3>,
    /// Concatenated heads entering o. `[batch, seq, n_heads * head_dim]`
    pub o: Tensor<3>,
    /// Normalised stream entering gate and up. `[batch, seq, d_model]`
    pub mlp: Tensor<3>,
    /// `silu(gate) * up` entering down. `[batch, seq, d_ff]`
    pub down: Tensor<3>,
}

/// What a block needs besides its input to run on one whole prompt batch (no cache): the
/// rotary tables and the attention mask.
pub struct BlockContext {
    rope: Rope,
    bias: Tensor<4>,
}

impl Block {
    /// Runs the block on a whole prompt batch and returns its output with the inputs of its
    /// linear layers.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → same
    pub fn forward_observed(&self, x: Tensor<3>, ctx: &BlockContext) -> (Tensor<3>, LinearInputs) {
        on_pool(|| {
            let attn_in = self.attn_norm.forward(x.clone());
            let o_in = self.attn.heads(
                attn_in.clone(),
                &ctx.rope,
                ctx.bias.clone(),
                &mut LayerKv::Empty,
                PromptProducts::Exact,
            );
            let x = x + self.attn.o.forward(o_in.clone());
            let mlp_in = self.mlp_norm.forward(x.clone());
            let down_in = self.mlp.activation(mlp_in.clone(), PromptProducts::Exact);
            let out = x + self.mlp.down.forward(down_in.clone());
            let inputs = LinearInputs {
                attn: attn_in,
                o: o_in,
                mlp: mlp_in,
                down: down_in,
            };
            (out, inputs)
        })
    }

    /// Runs the block on a whole prompt batch.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` → same
    pub fn forward_prompt(&self, x: Tensor<3>, ctx: &BlockContext) -> Tensor<3> {
        on_pool(|| {
            let attn = self.attn.forward(
                self.attn_norm.forward(x.clone()),
                &ctx.rope,
                ctx.bias.clone(),
                &mut LayerKv::Empty,
                PromptProducts::Exact,
            );
            let x = x + attn;
            let mlp = self
                .mlp
                .forward(self.mlp_norm.forward(x.clone()), PromptProducts::Exact);
            x + mlp
        })
    }
}

/// A Llama-family decoder.
#[derive(Module, Debug)]
pub struct Llama {
    /// `[vocab, d_model]`; f32, f16, bf16 or blocks (the rows looked up are widened to f32).
    pub embedding: Weight,
    pub blocks: Vec<Block>,
    pub norm: RmsNorm,
    /// Output head, `[vocab, d_model]`; `None` when tied to the embedding.
    pub head: Option<Weight>,
    #[module(skip)]
    pub config: ModelConfig,
}

impl Llama {
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.embedding.device()
    }

    /// The matrices as they are kept, and how many of each type, e.g. `[("F32", 2),
    /// ("Q5_0", 133), ...]` (sorted by name): what `bench` and the server report.
    pub fn weight_types(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for w in self.matrices() {
            *counts.entry(w.type_name()).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }

    /// Bytes the weights take in memory as kept: blocks as stored, dense matrices at their
    /// type's size, norm gains and biases in f32.
    pub fn weight_bytes(&self) -> u64 {
        let (values, bytes) = self
            .matrices()
            .map(Weight::size)
            .fold((0, 0), |(v, b), (n, s)| (v + n, b + s));
        bytes + 4 * self.config.n_params().saturating_sub(values)
    }

    /// Whether any matrix is kept as GGML blocks or 16-bit floats for the kernels (a quantized
    /// or 16-bit model on the CPU).
    pub fn has_quantized_weights(&self) -> bool {
        self.matrices().any(|w| matches!(w, Weight::Quantized(_)))
    }

    fn matrices(&self) -> impl Iterator<Item = &Weight> {
        let blocks = self.blocks.iter().flat_map(|b| {
            [
                &b.attn.q,
                &b.attn.k,
                &b.attn.v,
                &b.attn.o,
                &b.mlp.gate,
                &b.mlp.up,
                &b.mlp.down,
            ]
            .map(|l| &l.weight)
        });
        std::iter::once(&self.embedding)
            .chain(self.head.as_ref())
            .chain(blocks)
    }

    /// The token embedding's values, `[vocab, d_model]` (dequantized to f32 if quantized).
    pub fn embedding_values(&self) -> Tensor<2> {
        self.embedding.file_layout()
    }

    /// Every token embedding loses its component along the unit vector `r` (`[d_model]`), as
    /// [`Linear::remove_from_outputs`] computes and keeps it. A head tied to the embedding
    /// changes with it.
    pub fn remove_from_embedding(&mut self, r: Tensor<1>) {
        self.embedding.remove_from_file_rows(r);
    }

    /// The untied head's values, `[vocab, d_model]`; `None` when tied to the embedding.
    pub fn head_values(&self) -> Option<Tensor<2>> {
        self.head.as_ref().map(Weight::file_layout)
    }

    /// Runs the prompt (or the next tokens, when `cache` already holds a prefix) through every
    /// block and the final norm, calling `hook` at each hook point.
    ///
    /// # Shapes
    /// - `batch`: `[batch, seq]` → `[batch, seq, d_model]`
    pub fn hidden<H: Hook + ?Sized>(
        &self,
        batch: &TokenBatch,
        cache: &mut KvCache,
        hook: &mut H,
    ) -> Tensor<3> {
        let [n, seq] = batch.dims();
        let device = self.device();
        if cache.layers.is_empty() {
            cache.layers = vec![LayerKv::Empty; self.blocks.len()];
            cache.pad = batch.pad.clone();
        }
        // The prompt's keys go to the host once, when the first step after it runs on the CPU.
        if device == Device::flex() {
            for layer in &mut cache.layers {
                if let LayerKv::Tensors(k, v) = layer {
                    let host = HostKv::from_tensors(k.clone(), v.clone(), &cache.pad);
                    *layer = LayerKv::Host(host);
                }
            }
        }
        let offset = cache.len;
        let rope = Rope::new(&self.config, &cache.pad, offset, seq, &device);
        let bias = attention_bias(&cache.pad, offset, seq, &device);

        let ids = batch.ids.clone().reshape([n * seq]);
        let mut x = self.embed_tokens(ids, [n, seq]);

        let mut call = |layer: usize, point: HookPoint, x: Tensor<3>| {
            if hook.wants(layer, point) {
                hook.at(
                    &HookContext {
                        layer,
                        point,
                        offset,
                    },
                    x,
                )
            } else {
                x
            }
        };
        for (l, (block, kv)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
            x = call(l, HookPoint::ResidPre, x);
            let attn = block.attn.forward(
                block.attn_norm.forward(x.clone()),
                &rope,
                bias.clone(),
                kv,
                cache.prompts,
            );
            x = x + call(l, HookPoint::AttnOut, attn);
            let mlp = block
                .mlp
                .forward(block.mlp_norm.forward(x.clone()), cache.prompts);
            x = x + call(l, HookPoint::MlpOut, mlp);
            x = call(l, HookPoint::ResidPost, x);
        }
        cache.len += seq;
        self.norm.forward(x)
    }

    /// The token embeddings of a whole prompt batch (block 0's input) and the context every
    /// block needs to run on it: for passes that go block by block, such as calibration.
    ///
    /// # Shapes
    /// - `batch`: `[batch, seq]` → `[batch, seq, d_model]`
    pub fn embed(&self, batch: &TokenBatch) -> (Tensor<3>, BlockContext) {
        let [n, seq] = batch.dims();
        let device = self.device();
        let ids = batch.ids.clone().reshape([n * seq]);
        let x = self.embed_tokens(ids, [n, seq]);
        let ctx = BlockContext {
            rope: Rope::new(&self.config, &batch.pad, 0, seq, &device),
            bias: attention_bias(&batch.pad, 0, seq, &device),
        };
        (x, ctx)
    }

    /// The f32 embeddings of flattened token ids.
    ///
    /// # Shapes
    /// - `ids`: `[batch * seq]` → `[batch, seq, d_model]`
    fn embed_tokens(&self, ids: Tensor<1, Int>, [n, seq]: [usize; 2]) -> Tensor<3> {
        let rows = match &self.embedding {
            Weight::Dense(e) => e.val().select(0, ids).cast(FloatDType::F32),
            Weight::Quantized(q) => q.select_rows(ids),
        };
        rows.reshape([n, seq, self.config.d_model])
    }

    /// Vocabulary logits of final hidden states.
    ///
    /// # Shapes
    /// - `hidden`: `[rows, d_model]` → `[rows, vocab]`
    pub fn logits(&self, hidden: Tensor<2>) -> Tensor<2> {
        self.logits_with(hidden, PromptProducts::Exact)
    }

    /// [`Llama::logits`] with many-row products of block weights computed as `prompts` says.
    fn logits_with(&self, hidden: Tensor<2>, prompts: PromptProducts) -> Tensor<2> {
        // `head @ hidden^T` reads the `[vocab, d_model]` matrix as stored, so a tied embedding
        // needs no transposed copy of the largest matrix in the model.
        let head = match self.head.as_ref().unwrap_or(&self.embedding) {
            Weight::Dense(head) => head.val(),
            Weight::Quantized(q) => return q.matmul(hidden, prompts),
        };
        if head.dtype() == DType::F32 {
            return head.matmul(hidden.transpose()).transpose();
        }
        let [vocab, _] = head.dims();
        let hidden = hidden.transpose();
        let parts = (0..vocab)
            .step_by(HEAD_ROWS)
            .map(|start| {
                head.clone()
                    .narrow(0, start, HEAD_ROWS.min(vocab - start))
                    .cast(FloatDType::F32)
                    .matmul(hidden.clone())
            })
            .collect();
        Tensor::cat(parts, 0).transpose()
    }

    /// Logits at the last position of every row, appending the batch to `cache`. Only the last
    /// position goes through the vocabulary head.
    ///
    /// # Shapes
    /// - `batch`: `[batch, seq]` → `[batch, vocab]`
    pub fn forward<H: Hook + ?Sized>(
        &self,
        batch: &TokenBatch,
        cache: &mut KvCache,
        hook: &mut H,
    ) -> Tensor<2> {
        on_pool(|| {
            let hidden = self.hidden(batch, cache, hook);
            let [n, seq, d] = hidden.dims();
            self.logits_with(hidden.narrow(1, seq - 1, 1).reshape([n, d]), cache.prompts)
        })
    }

    /// Last-position logits of a whole prompt batch, without keeping a cache.
    pub fn last_logits<H: Hook + ?Sized>(&self, batch: &TokenBatch, hook: &mut H) -> Tensor<2> {
        self.forward(batch, &mut KvCache::new(), hook)
    }
}

/// Additive attention bias: 0 where a query may attend, [`MASKED`] for future positions and
/// for each row's left padding.
///
/// # Shapes
/// → `[batch, 1, seq, offset + seq]`
fn attention_bias(pad: &[usize], offset: usize, seq: usize, device: &Device) -> Tensor<4> {
    let total = offset + seq;
    let mut bias = Vec::with_capacity(pad.len() * seq * total);
    for &p in pad {
        for i in 0..seq {
            let query = offset + i;
            bias.extend((0..total).map(|key| if key < p || key > query { MASKED } else { 0.0 }));
        }
    }
    Tensor::from_data(TensorData::new(bias, [pad.len(), 1, seq, total]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hooks::{ActivationAddition, Capture, DirectionalAblation, NoHook};
    use crate::model::random::RandomWeights;
    use crate::model::weights::{
        self, BlockWeight, HostTensor, WeightError, WeightName, WeightSource,
    };

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 data")
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn tiny() -> (Llama, Device) {
        let device = Device::flex();
        (Llama::random(&ModelConfig::tiny(), 7, &device), device)
    }

    /// Decodes `steps` tokens one at a time with the cache and returns every step's logits.
    fn cached_logits(
        model: &Llama,
        prompts: &[Vec<u32>],
        steps: &[Vec<u32>],
        hook: &mut dyn Hook,
        device: &Device,
    ) -> Vec<Vec<f32>> {
        let mut cache = KvCache::new();
        let mut out = vec![host(model.forward(
            &TokenBatch::left_padded(prompts, 0, device),
            &mut cache,
            hook,
        ))];
        for step in steps {
            out.push(host(model.forward(
                &TokenBatch::next_tokens(step, device),
                &mut cache,
                hook,
            )));
        }
        out
    }

    /// The same logits recomputed from scratch over the whole sequence at each step.
    fn recomputed_logits(
        model: &Llama,
        prompts: &[Vec<u32>],
        steps: &[Vec<u32>],
        hook: &mut dyn Hook,
        device: &Device,
    ) -> Vec<Vec<f32>> {
        let mut seqs = prompts.to_vec();
        let mut out = vec![host(
            model.last_logits(&TokenBatch::left_padded(&seqs, 0, device), hook),
        )];
        for step in steps {
            for (s, &t) in seqs.iter_mut().zip(step) {
                s.push(t);
            }
            out.push(host(
                model.last_logits(&TokenBatch::left_padded(&seqs, 0, device), hook),
            ));
        }
        out
    }

    // f32 sums in a different order (one position vs a whole sequence) differ by rounding only.
    const TOL: f32 = 1e-4;

    #[test]
    fn block_by_block_passes_equal_the_whole_forward() {
        let (model, device) = tiny();
        let n_layers = model.config().n_layers;
        let batch = TokenBatch::left_padded(&[vec![1, 5, 9, 2, 7], vec![3, 4]], 0, &device);
        let mut capture = Capture::every_layer(n_layers, HookPoint::AttnOut, vec![]);
        let whole = host(model.hidden(&batch, &mut KvCache::new(), &mut capture));
        let (mut x, ctx) = model.embed(&batch);
        for (l, block) in model.blocks.iter().enumerate() {
            let (out, inputs) = block.forward_observed(x.clone(), &ctx);
            let attn_out = host(block.attn.o.forward(inputs.o));
            let captured = host(capture.get(l, HookPoint::AttnOut).unwrap().clone());
            assert!(max_abs_diff(&attn_out, &captured) <= 1e-5);
            assert!(max_abs_diff(&host(block.forward_prompt(x, &ctx)), &host(out.clone())) <= 1e-6);
            x = out;
        }
        assert!(max_abs_diff(&host(model.norm.forward(x)), &whole) <= 1e-5);
    }

    #[test]
    fn kv_cache_decoding_equals_full_recomputation() {
        let (model, device) = tiny();
        let prompts = vec![vec![5, 9, 17, 3, 44], vec![8, 1, 2]];
        let steps = vec![vec![11, 12], vec![13, 14], vec![15, 16]];
        let a = cached_logits(&model, &prompts, &steps, &mut NoHook, &device);
        let b = recomputed_logits(&model, &prompts, &steps, &mut NoHook, &device);
        for (x, y) in a.iter().zip(&b) {
            assert!(max_abs_diff(x, y) < TOL, "diff {}", max_abs_diff(x, y));
        }
    }

    /// The CPU backend's host cache rotates keys itself: with GGUF's interleaved pairs too.
    #[test]
    fn kv_cache_decoding_equals_full_recomputation_with_interleaved_pairs() {
        let device = Device::flex();
        let config = ModelConfig {
            rope_pairing: RopePairing::Interleaved,
            ..ModelConfig::tiny()
        };
        let model = Llama::random(&config, 7, &device);
        let prompts = vec![vec![5, 9, 17, 3, 44], vec![8, 1, 2]];
        let steps = vec![vec![11, 12], vec![13, 14]];
        let a = cached_logits(&model, &prompts, &steps, &mut NoHook, &device);
        let b = recomputed_logits(&model, &prompts, &steps, &mut NoHook, &device);
        for (x, y) in a.iter().zip(&b) {
            assert!(max_abs_diff(x, y) < TOL, "diff {}", max_abs_diff(x, y));
        }
    }

    #[test]
    fn kv_cache_decoding_equals_full_recomputation_with_editing_hooks() {
        let (model, device) = tiny();
        let d = model.config().d_model;
        let dir: Vec<f32> = (0..d).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
        let dir = Tensor::<1>::from_data(TensorData::new(dir, [d]), &device);
        let prompts = vec![vec![5, 9, 17, 3, 44], vec![8, 1, 2]];
        let steps = vec![vec![11, 12], vec![13, 14]];
        let mut hook = (
            DirectionalAblation::new(dir.clone()),
            ActivationAddition::new(1, dir, 0.5),
        );
        let a = cached_logits(&model, &prompts, &steps, &mut hook, &device);
        let b = recomputed_logits(&model, &prompts, &steps, &mut hook, &device);
        let plain = recomputed_logits(&model, &prompts, &steps, &mut NoHook, &device);
        for ((x, y), p) in a.iter().zip(&b).zip(&plain) {
            assert!(max_abs_diff(x, y) < TOL, "diff {}", max_abs_diff(x, y));
            assert!(max_abs_diff(x, p) > 1e-3, "the hooks must change something");
        }
    }

    #[test]
    fn left_padding_does_not_change_last_position_logits() {
        let (model, device) = tiny();
        let short = vec![4, 8, 15];
        let alone = host(model.last_logits(
            &TokenBatch::left_padded(std::slice::from_ref(&short), 0, &device),
            &mut NoHook,
        ));
        let batch = TokenBatch::left_padded(&[vec![1, 2, 3, 4, 5, 6, 7], short], 0, &device);
        let padded = host(model.last_logits(&batch, &mut NoHook));
        let vocab = model.config().vocab_size;
        assert!(max_abs_diff(&alone, &padded[vocab..]) < TOL);
    }

    /// Wants every point and returns it untouched.
    struct Identity(usize);
    impl Hook for Identity {
        fn at(&mut self, _: &HookContext, x: Tensor<3>) -> Tensor<3> {
            self.0 += 1;
            x
        }
    }

    #[test]
    fn a_no_op_hook_changes_nothing() {
        let (model, device) = tiny();
        let batch = TokenBatch::left_padded(&[vec![3, 1, 4, 1, 5]], 0, &device);
        let plain = host(model.last_logits(&batch, &mut NoHook));
        let mut identity = Identity(0);
        let hooked = host(model.last_logits(&batch, &mut identity));
        assert_eq!(plain, hooked);
        assert_eq!(identity.0, 4 * model.config().n_layers);
    }

    #[test]
    fn ablation_removes_the_direction_from_the_stream() {
        let (model, device) = tiny();
        let d = model.config().d_model;
        let raw: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
        let dir = Tensor::<1>::from_data(TensorData::new(raw.clone(), [d]), &device);
        let n_layers = model.config().n_layers;
        let mut hook = (
            DirectionalAblation::new(dir),
            Capture::every_layer(n_layers, HookPoint::ResidPost, vec![]),
        );
        let batch = TokenBatch::left_padded(&[vec![3, 1, 4, 1, 5], vec![9, 2]], 0, &device);
        model.last_logits(&batch, &mut hook);
        let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
        for l in 0..n_layers {
            let x = host(
                hook.1
                    .get(l, HookPoint::ResidPost)
                    .expect("captured")
                    .clone(),
            );
            for row in x.chunks_exact(d) {
                let along: f32 = row.iter().zip(&raw).map(|(a, b)| a * b / norm).sum();
                let len = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!(
                    along.abs() <= 1e-4 * len.max(1.0),
                    "layer {l}: {along} vs {len}"
                );
            }
        }
    }

    /// Random weights with q/k rows permuted the way llama.cpp's converter does for Llama GGUFs.
    struct Permuted(RandomWeights, ModelConfig);
    impl WeightSource for Permuted {
        fn describe(&self, name: WeightName) -> String {
            self.0.describe(name)
        }
        fn read(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError> {
            let t = self.0.read(name)?;
            let heads = match name {
                WeightName::Block(_, BlockWeight::Q | BlockWeight::QBias) => self.1.n_heads,
                WeightName::Block(_, BlockWeight::K | BlockWeight::KBias) => self.1.n_kv_heads,
                _ => return Ok(t),
            };
            Ok(t.map(|t| {
                let hd = self.1.head_dim;
                let row = t.data.len() / (heads * hd);
                let mut data = vec![0.0; t.data.len()];
                for h in 0..heads {
                    for i in 0..hd / 2 {
                        for s in 0..2 {
                            let new = h * hd + 2 * i + s;
                            let old = h * hd + s * hd / 2 + i;
                            data[new * row..(new + 1) * row]
                                .copy_from_slice(&t.data[old * row..(old + 1) * row]);
                        }
                    }
                }
                HostTensor {
                    shape: t.shape,
                    data,
                }
            }))
        }
    }

    #[test]
    fn interleaved_rope_on_permuted_weights_equals_halves_rope() {
        let device = Device::flex();
        let halves = ModelConfig::tiny();
        let model = Llama::random(&halves, 3, &device);
        let interleaved = ModelConfig {
            rope_pairing: RopePairing::Interleaved,
            ..halves.clone()
        };
        let mut source = Permuted(RandomWeights::new(halves.clone(), 3), halves);
        let permuted = weights::build(
            interleaved,
            &mut source,
            &device,
            weights::WeightStorage::AsStored,
            &mut |_, _| {},
        )
        .expect("builds");
        let batch = TokenBatch::left_padded(&[vec![3, 1, 4, 1, 5, 9, 2, 6]], 0, &device);
        let a = host(model.last_logits(&batch, &mut NoHook));
        let b = host(permuted.last_logits(&batch, &mut NoHook));
        assert!(max_abs_diff(&a, &b) < TOL);
        // And the wrong pairing really is wrong, so this test can fail.
        let wrong = Llama::random(
            &ModelConfig {
                rope_pairing: RopePairing::Interleaved,
                ..ModelConfig::tiny()
            },
            3,
            &device,
        );
        assert!(max_abs_diff(&a, &host(wrong.last_logits(&batch, &mut NoHook))) > 1e-3);
    }
}
