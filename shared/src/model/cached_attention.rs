//! Attention of the next tokens over the key-value cache, on the CPU backend.
//!
//! With Burn's tensors every decoding step copied each layer's whole cache to append one
//! position (`cat`), then copied it again to repeat the key-value heads for grouped-query
//! attention, and ran some thirty small ops per layer: a seventh of a 135M model's step at 300
//! tokens, growing with the length. On the CPU backend the cache is instead kept on the host,
//! each row and key-value head in a vector that grows in place, and the step's queries attend to
//! it in one pass per head, without repeating the keys. Other devices keep Burn's kernels.
//!
//! The arithmetic is the tensor path's (rotation, `q·k` scaled, softmax, weighted sum of values)
//! in a fixed order, so the wide and narrow loops give the same bits, and the browser's CPU
//! fallback agrees with the native server; only the order of the sums differs from Burn's
//! matmul.

use burn::tensor::{Tensor, TensorData};

use super::config::RopePairing;
use crate::gguf::dot::float_dot;
use crate::threads::for_each_chunk;

/// Keys and values of one layer, per batch row and key-value head, appended in place.
#[derive(Debug, Clone)]
pub struct HostKv {
    n_kv_heads: usize,
    head_dim: usize,
    /// Left padding of each row.
    pad: Vec<usize>,
    /// `[batch * n_kv_heads]` vectors of `[len, head_dim]` (rotated keys).
    keys: Vec<Vec<f32>>,
    /// Same layout as `keys`.
    values: Vec<Vec<f32>>,
}

impl HostKv {
    /// The cache of a first (prompt) call, kept by the tensor path.
    ///
    /// # Shapes
    /// - `keys`, `values`: `[batch, n_kv_heads, len, head_dim]`
    pub fn from_tensors(keys: Tensor<4>, values: Tensor<4>, pad: &[usize]) -> HostKv {
        let [batch, n_kv_heads, len, head_dim] = keys.dims();
        assert_eq!(batch, pad.len(), "a cache row per padded row");
        let split = |t: Tensor<4>| -> Vec<Vec<f32>> {
            super::read_f32(t)
                .chunks_exact(len * head_dim)
                .map(<[f32]>::to_vec)
                .collect()
        };
        HostKv {
            n_kv_heads,
            head_dim,
            pad: pad.to_vec(),
            keys: split(keys),
            values: split(values),
        }
    }

    /// Positions cached, padding included.
    fn len(&self) -> usize {
        self.keys.first().map_or(0, |k| k.len() / self.head_dim)
    }

    /// Appends `seq` positions of every row: `keys` and `values` are `[batch, seq,
    /// n_kv_heads, head_dim]` (the projections' layout).
    fn append(&mut self, keys: &[f32], values: &[f32], seq: usize) {
        let d = self.head_dim;
        for (r, (k, v)) in self.keys.iter_mut().zip(&mut self.values).enumerate() {
            let (b, h) = (r / self.n_kv_heads, r % self.n_kv_heads);
            for i in 0..seq {
                let at = ((b * seq + i) * self.n_kv_heads + h) * d;
                k.extend_from_slice(&keys[at..at + d]);
                v.extend_from_slice(&values[at..at + d]);
            }
        }
    }
}

/// The rotary angles of one call's positions, on the host.
pub struct HostRope<'a> {
    /// `[batch, seq, head_dim/2]`
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    pub pairing: RopePairing,
}

impl HostRope<'_> {
    /// Rotates `x`, `[batch, seq, heads, head_dim]`, in place: `a cos - b sin`, `a sin + b cos`
    /// for each pair `(a, b)`, as the tensor path computes it.
    fn apply(&self, x: &mut [f32], heads: usize, head_dim: usize) {
        let half = head_dim / 2;
        for (position, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let cos = &self.cos[position * half..][..half];
            let sin = &self.sin[position * half..][..half];
            for head in row.chunks_exact_mut(head_dim) {
                for f in 0..half {
                    let (ia, ib) = match self.pairing {
                        RopePairing::Halves => (f, f + half),
                        RopePairing::Interleaved => (2 * f, 2 * f + 1),
                    };
                    let (a, b) = (head[ia], head[ib]);
                    head[ia] = a * cos[f] - b * sin[f];
                    head[ib] = a * sin[f] + b * cos[f];
                }
            }
        }
    }
}

/// The step's projections (`[batch, seq, heads * head_dim]` tensors, before rotation) after
/// attending over the cache, which they are appended to: `[batch, seq, n_heads * head_dim]`,
/// the output projection's input. Each query attends to its row's real positions up to its
/// own, as the tensor path's mask allows.
pub fn attend(
    (q, k, v): (Tensor<3>, Tensor<3>, Tensor<3>),
    n_heads: usize,
    rope: &HostRope,
    cache: &mut HostKv,
) -> Tensor<3> {
    let device = q.device();
    let [batch, seq, _] = q.dims();
    let (n_kv, d) = (cache.n_kv_heads, cache.head_dim);
    let (mut q, mut k, v) = (super::read_f32(q), super::read_f32(k), super::read_f32(v));
    rope.apply(&mut q, n_heads, d);
    rope.apply(&mut k, n_kv, d);
    let offset = cache.len();
    cache.append(&k, &v, seq);

    let group = n_heads / n_kv;
    let scale = (d as f64).sqrt().recip() as f32;
    let mut out = vec![0.0f32; batch * seq * n_heads * d];
    let cache = &*cache;
    // One task per (row, position, key-value head): the `group` query heads that share it.
    for_each_chunk(&mut out, group * d, |(task, out)| {
        let kv = task % n_kv;
        let (b, i) = (task / n_kv / seq, task / n_kv % seq);
        let keys = (cache.pad[b], offset + i + 1);
        let row = b * n_kv + kv;
        let queries = &q[((b * seq + i) * n_heads + kv * group) * d..][..group * d];
        heads(
            queries,
            (&cache.keys[row], &cache.values[row]),
            keys,
            (d, scale),
            out,
        );
    });
    Tensor::from_data(TensorData::new(out, [batch, seq, n_heads * d]), &device)
}

/// The heads sharing one key-value head, with the widest vectors this CPU has.
fn heads(
    queries: &[f32],
    cached: (&[f32], &[f32]),
    keys: (usize, usize),
    (d, scale): (usize, f32),
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { heads_avx2(queries, cached, keys, (d, scale), out) };
        return;
    }
    heads_portable(queries, cached, keys, (d, scale), out);
}

/// [`heads_portable`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn heads_avx2(
    queries: &[f32],
    cached: (&[f32], &[f32]),
    keys: (usize, usize),
    (d, scale): (usize, f32),
    out: &mut [f32],
) {
    heads_portable(queries, cached, keys, (d, scale), out);
}

/// Each query (`[group, d]`) attends to the keys `keys.0..keys.1` of `cached` (`[len, d]`
/// keys and values); `out` is `[group, d]`. No key to attend to (never the case for a real
/// position) leaves zeros.
#[inline(always)]
fn heads_portable(
    queries: &[f32],
    (k, v): (&[f32], &[f32]),
    (first, end): (usize, usize),
    (d, scale): (usize, f32),
    out: &mut [f32],
) {
    let mut weights = vec![0.0f32; end.saturating_sub(first)];
    for (query, out) in queries.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        for (w, key) in weights
            .iter_mut()
            .zip(k[first * d..end * d].chunks_exact(d))
        {
            *w = float_dot(query, key) * scale;
        }
        let max = weights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for w in &mut weights {
            *w = (*w - max).exp();
            sum += *w;
        }
        for (w, value) in weights.iter().zip(v[first * d..end * d].chunks_exact(d)) {
            let p = w / sum;
            for (o, x) in out.iter_mut().zip(value) {
                *o += p * x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Softmax attention written out from its definition, in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], d: usize) -> Vec<f64> {
        let scores: Vec<f64> = k
            .chunks_exact(d)
            .map(|key| {
                let s: f64 = q
                    .iter()
                    .zip(key)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                s / (d as f64).sqrt()
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..d)
            .map(|j| {
                e.iter()
                    .zip(v.chunks_exact(d))
                    .map(|(w, value)| w / sum * f64::from(value[j]))
                    .sum()
            })
            .collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn heads_are_softmax_attention_over_the_allowed_keys() {
        let (d, len, group) = (20, 9, 3);
        let (q, k, v) = (values(group * d, 1), values(len * d, 2), values(len * d, 3));
        let (first, end) = (2, 7);
        let mut out = vec![0.0; group * d];
        heads(
            &q,
            (&k, &v),
            (first, end),
            (d, (d as f32).sqrt().recip()),
            &mut out,
        );
        for (query, got) in q.chunks_exact(d).zip(out.chunks_exact(d)) {
            let want = reference(query, &k[first * d..end * d], &v[first * d..end * d], d);
            for (g, w) in got.iter().zip(&want) {
                assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
            }
        }
    }

    #[test]
    fn wide_and_portable_loops_give_the_same_bits() {
        let (d, len, group) = (64, 37, 2);
        let (q, k, v) = (values(group * d, 4), values(len * d, 5), values(len * d, 6));
        let mut wide = vec![0.0; group * d];
        let mut narrow = vec![0.0; group * d];
        heads(&q, (&k, &v), (0, len), (d, 0.125), &mut wide);
        heads_portable(&q, (&k, &v), (0, len), (d, 0.125), &mut narrow);
        assert_eq!(wide, narrow);
    }

    #[test]
    fn no_key_leaves_zeros() {
        let mut out = vec![0.0; 8];
        heads(&values(8, 7), (&[], &[]), (0, 0), (8, 1.0), &mut out);
        assert_eq!(out, vec![0.0; 8]);
    }
}
