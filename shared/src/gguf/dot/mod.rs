//! `x · Wᵀ` straight from GGML blocks, with the activations quantized to 8 bits as llama.cpp
//! does: per 32 values (Q8_0, with Q8_1's block sum) for the 32-element types, per 256 (Q8_K,
//! with sums per 16) for the k-quants. Each weight block is unpacked once into small integers
//! (and, for k-quants, their group scales folded in) and dotted with every activation row in
//! integers; only the per-block scales are floats.
//!
//! The portable loops here are plain Rust (what the wasm build runs, vectorised by the compiler
//! where it can with SIMD128); on x86-64 the kernels of [`x86`] unpack blocks into bytes and
//! multiply them with AVX2, or with AVX-512 VNNI's byte dot product, picked at run time. Q2_K
//! and Q3_K, rare in checkpoints, always take the portable loops. Integer sums are exact and
//! the float steps are the same expressions in every variant, so all give the same bits.
//!
//! Accuracy: the weights are used exactly; the error is the activations' 8-bit rounding, as in
//! llama.cpp (relative error of a dot product about 1e-2 / sqrt(block) at worst, in practice
//! far smaller than the weights' own quantization error).
//!
//! 16-bit float weights (F16, BF16) are widened to f32 as they are read and dotted with the
//! activations unrounded: every product is exact, and the only error is that of summing in f32
//! (each row in [`FLOAT_LANES`] lanes). Widening a whole matrix to f32 for every product, as a
//! dense 16-bit tensor is used, made decoding about ten times slower than f32 weights.

use half::f16;

#[cfg(target_arch = "x86_64")]
mod x86;

use super::GgmlType;
use super::quant::{
    Q2K_BYTES, Q3K_BYTES, Q4_0_BYTES, Q4_1_BYTES, Q4K_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q5K_BYTES,
    Q6K_BYTES, Q8_0_BYTES, QK_K, f16_at, k_scale_min, k_scales, two_bit_group,
};
use crate::threads::for_each_chunk;

/// Elements per block of the 32-element types.
const QK: usize = 32;

/// Whether [`matmul`] multiplies values of this type directly: every block type this crate
/// reads, and the 16-bit floats; f32 matrices are multiplied as dense tensors.
pub const fn has_kernel(ty: GgmlType) -> bool {
    !matches!(ty, GgmlType::F32)
}

/// Whether the kernels on `isa` can multiply a prompt's activation rows by `ty` faster than
/// f32 matrix multiplication against dequantized weights, up to a number of rows the caller
/// bounds: the x86 byte dot products, which unpack each weight block once for several
/// activation rows. The portable loops (wasm) and the 16-bit floats (re-widened for every row)
/// cannot.
pub fn multiplies_prompts(isa: Isa, ty: GgmlType) -> bool {
    isa != Isa::Portable
        && has_kernel(ty)
        && !matches!(
            ty,
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::F16 | GgmlType::BF16
        )
}

/// Instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// [`Isa::Avx2`] with AVX-512 VNNI (F/BW/VL/VNNI) for the byte dot products.
    Avx512Vnni,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// No extension: plain loops (wasm SIMD128 where the compiler vectorises them).
    Portable,
}

impl Isa {
    /// The widest this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            if avx2
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every variant this CPU runs, widest first (for tests that compare them).
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512Vnni, Isa::Avx2, Isa::Portable]
            .into_iter()
            .filter(|isa| *isa as u8 >= Isa::detect() as u8)
            .collect()
    }
}

/// One 32-element weight block unpacked: `value = d * vals + m`.
struct Small {
    vals: [i16; QK],
    d: f32,
    m: f32,
}

/// One 256-element k-quant block unpacked: `value = d * w - dmin * mins[group of 16]`, the
/// group scales already multiplied into `w`.
struct Super {
    w: [i16; QK_K],
    mins: [i16; QK_K / 16],
    d: f32,
    dmin: f32,
}

/// Activation rows quantized per 32 values: `x ≈ d * qs`, and `s = d * Σ qs` (Q8_1's sum,
/// which the types with a minimum need).
struct SmallActs {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// Activation rows quantized per 256 values (Q8_K): `x ≈ d * qs`, with the sum of every 16.
struct SuperActs {
    qs: Vec<i8>,
    d: Vec<f32>,
    bsums: Vec<i16>,
}

fn f16_round(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// llama.cpp's `quantize_row_q8_1_ref` (and Q8_0, which is the same without the sum).
fn quantize_small(x: &[f32]) -> SmallActs {
    let n = x.len() / QK;
    let mut acts = SmallActs {
        qs: vec![0; x.len()],
        d: Vec::with_capacity(n),
        s: Vec::with_capacity(n),
    };
    for (xb, qb) in x.chunks_exact(QK).zip(acts.qs.chunks_exact_mut(QK)) {
        let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
            sum += i32::from(*q);
        }
        acts.d.push(f16_round(d));
        acts.s.push(f16_round(sum as f32 * d));
    }
    acts
}

/// llama.cpp's `quantize_row_q8_K_ref`: the scale is signed so that the largest magnitude maps
/// to -127 exactly, and values are rounded to nearest, ties to even.
fn quantize_super(x: &[f32]) -> SuperActs {
    let n = x.len() / QK_K;
    let mut acts = SuperActs {
        qs: vec![0; x.len()],
        d: Vec::with_capacity(n),
        bsums: Vec::with_capacity(n * QK_K / 16),
    };
    for (xb, qb) in x.chunks_exact(QK_K).zip(acts.qs.chunks_exact_mut(QK_K)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            acts.d.push(0.0);
            acts.bsums.extend([0; QK_K / 16]);
            continue;
        }
        let iscale = -127.0 / max;
        for (q, v) in qb.iter_mut().zip(xb) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for g in qb.chunks_exact(16) {
            acts.bsums.push(g.iter().map(|&q| i16::from(q)).sum());
        }
        acts.d.push(1.0 / iscale);
    }
    acts
}

#[inline(always)]
fn unpack_q4_0(b: &[u8; Q4_0_BYTES], u: &mut Small) {
    u.d = f16_at(b[0], b[1]);
    u.m = 0.0;
    for j in 0..16 {
        let q = b[2 + j];
        u.vals[j] = i16::from(q & 0x0F) - 8;
        u.vals[j + 16] = i16::from(q >> 4) - 8;
    }
}

#[inline(always)]
fn unpack_q4_1(b: &[u8; Q4_1_BYTES], u: &mut Small) {
    u.d = f16_at(b[0], b[1]);
    u.m = f16_at(b[2], b[3]);
    for j in 0..16 {
        let q = b[4 + j];
        u.vals[j] = i16::from(q & 0x0F);
        u.vals[j + 16] = i16::from(q >> 4);
    }
}

#[inline(always)]
fn unpack_q5_0(b: &[u8; Q5_0_BYTES], u: &mut Small) {
    u.d = f16_at(b[0], b[1]);
    u.m = 0.0;
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = u32::from(b[6 + j]);
        let lo = (q & 0x0F) | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) | ((qh >> (j + 16)) & 1) << 4;
        u.vals[j] = lo as i16 - 16;
        u.vals[j + 16] = hi as i16 - 16;
    }
}

#[inline(always)]
fn unpack_q5_1(b: &[u8; Q5_1_BYTES], u: &mut Small) {
    u.d = f16_at(b[0], b[1]);
    u.m = f16_at(b[2], b[3]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = u32::from(b[8 + j]);
        let lo = (q & 0x0F) | ((qh >> j) & 1) << 4;
        let hi = (q >> 4) | ((qh >> (j + 16)) & 1) << 4;
        u.vals[j] = lo as i16;
        u.vals[j + 16] = hi as i16;
    }
}

#[inline(always)]
fn unpack_q8_0(b: &[u8; Q8_0_BYTES], u: &mut Small) {
    u.d = f16_at(b[0], b[1]);
    u.m = 0.0;
    for j in 0..QK {
        u.vals[j] = i16::from(b[2 + j] as i8);
    }
}

#[inline(always)]
fn unpack_q2_k(b: &[u8; Q2K_BYTES], u: &mut Super) {
    const QS: usize = QK_K / 16;
    const D: usize = QS + QK_K / 4;
    u.d = f16_at(b[D], b[D + 1]);
    u.dmin = f16_at(b[D + 2], b[D + 3]);
    for g in 0..16 {
        let sc = i16::from(b[g] & 0x0F);
        u.mins[g] = i16::from(b[g] >> 4);
        let (start, shift) = two_bit_group(g);
        for l in 0..16 {
            u.w[16 * g + l] = i16::from((b[QS + start + l] >> shift) & 3) * sc;
        }
    }
}

#[inline(always)]
fn unpack_q3_k(b: &[u8; Q3K_BYTES], u: &mut Super) {
    const QS: usize = QK_K / 8;
    const SCALES: usize = QS + QK_K / 4;
    const D: usize = SCALES + 12;
    u.d = f16_at(b[D], b[D + 1]);
    u.dmin = 0.0;
    u.mins = [0; QK_K / 16];
    for g in 0..16 {
        let lo = if g < 8 {
            b[SCALES + g] & 0x0F
        } else {
            b[SCALES + g - 8] >> 4
        };
        let hi = (b[SCALES + 8 + g % 4] >> (2 * (g / 4))) & 3;
        let sc = i16::from(lo | hi << 4) - 32;
        let (start, shift) = two_bit_group(g);
        let hshift = g / 2;
        for l in 0..16 {
            let low = i16::from((b[QS + start + l] >> shift) & 3);
            let high_set = (b[(g % 2) * 16 + l] >> hshift) & 1 != 0;
            let q = if high_set { low } else { low - 4 };
            u.w[16 * g + l] = q * sc;
        }
    }
}

#[inline(always)]
fn unpack_q4_k(b: &[u8; Q4K_BYTES], u: &mut Super) {
    unpack_four_or_five_bits::<Q4K_BYTES, false>(b, u);
}

#[inline(always)]
fn unpack_q5_k(b: &[u8; Q5K_BYTES], u: &mut Super) {
    unpack_four_or_five_bits::<Q5K_BYTES, true>(b, u);
}

/// Q4_K, and Q5_K (`FIFTH`, whose bit `j` of `qh[l]` is the fifth bit of element `l` of
/// group `j`); the nibbles follow `qh` in Q5_K.
#[inline(always)]
fn unpack_four_or_five_bits<const N: usize, const FIFTH: bool>(b: &[u8; N], u: &mut Super) {
    const QH: usize = 16;
    let qs = if FIFTH { QH + QK_K / 8 } else { 16 };
    u.d = f16_at(b[0], b[1]);
    u.dmin = f16_at(b[2], b[3]);
    let scales = k_scales(b);
    for j in 0..8 {
        let (sc, m) = k_scale_min(&scales, j);
        let sc = i16::from(sc);
        u.mins[2 * j] = i16::from(m);
        u.mins[2 * j + 1] = i16::from(m);
        let base = qs + 32 * (j / 2);
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let low = (b[base + l] >> shift) & 0x0F;
            let q = if FIFTH {
                low | ((b[QH + l] >> j) & 1) << 4
            } else {
                low
            };
            u.w[32 * j + l] = i16::from(q) * sc;
        }
    }
}

#[inline(always)]
fn unpack_q6_k(b: &[u8; Q6K_BYTES], u: &mut Super) {
    const QH: usize = QK_K / 2;
    const SCALES: usize = QH + QK_K / 4;
    const D: usize = SCALES + QK_K / 16;
    u.d = f16_at(b[D], b[D + 1]);
    u.dmin = 0.0;
    u.mins = [0; QK_K / 16];
    for g in 0..16 {
        let sc = i16::from(b[SCALES + g] as i8);
        let h = g / 8;
        let r0 = (g % 8) * 16;
        let ql_base = 64 * h + r0 % 64;
        let ql_shift = 4 * (r0 / 64);
        let qh_base = QH + 32 * h + r0 % 32;
        let qh_shift = 2 * (r0 / 32);
        for l in 0..16 {
            let low = (b[ql_base + l] >> ql_shift) & 0x0F;
            let high = (b[qh_base + l] >> qh_shift) & 3;
            u.w[16 * g + l] = (i16::from(low | high << 4) - 32) * sc;
        }
    }
}

#[inline(always)]
fn dot_i16_i8<const N: usize>(w: &[i16; N], q: &[i8; N]) -> i32 {
    let mut sum = 0i32;
    for i in 0..N {
        sum += i32::from(w[i]) * i32::from(q[i]);
    }
    sum
}

/// The eight lanes a 32-element block's integer dot product is split into: lane `k` sums
/// elements `4k..4k + 4`, as the x86 byte dot products do.
const LANES: usize = 8;

/// The sum of a row's lane accumulators, in the order every kernel uses.
#[inline(always)]
fn lane_sum(acc: &[f32; LANES]) -> f32 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Lanes a row of 16-bit float weights is summed in: element `j` of the row adds its product
/// into lane `j % FLOAT_LANES` (a multiplication, then an addition, as in [`small_rows`]), and
/// [`float_lane_sum`] adds the lanes. Thirty-two lanes are four independent 256-bit chains.
const FLOAT_LANES: usize = 32;

/// The sum of a row's float lanes, in the order every kernel uses.
#[inline(always)]
fn float_lane_sum(acc: &[f32; FLOAT_LANES]) -> f32 {
    let mut half = [0.0f32; LANES];
    for (k, h) in half.iter_mut().enumerate() {
        *h = (acc[k] + acc[k + 8]) + (acc[k + 16] + acc[k + 24]);
    }
    lane_sum(&half)
}

/// One little-endian F16 weight as f32 (exact).
#[inline(always)]
fn widen_f16(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// One little-endian BF16 weight as f32 (exact: a bf16 is the top half of an f32).
#[inline(always)]
fn widen_bf16(b: [u8; 2]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
}

/// The dot product of a row of widened weights with one activation row (or of any two f32
/// rows), in [`FLOAT_LANES`] summed in a fixed order: the same bits at every vector width.
#[inline(always)]
pub(crate) fn float_dot(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; FLOAT_LANES];
    let (wc, wt) = w.as_chunks::<FLOAT_LANES>();
    let (xc, xt) = x.as_chunks::<FLOAT_LANES>();
    for (w, x) in wc.iter().zip(xc) {
        for k in 0..FLOAT_LANES {
            acc[k] += w[k] * x[k];
        }
    }
    for (k, (w, x)) in wt.iter().zip(xt).enumerate() {
        acc[k] += w * x;
    }
    float_lane_sum(&acc)
}

/// Output rows of a matrix of 16-bit floats (`w`: those rows' bytes, `cols` values each)
/// against the `n` f32 activation rows `x`; `out` is `[rows, n]`. Each row is widened once,
/// into a buffer that stays in the cache while every activation row is dotted with it.
#[inline(always)]
fn float_rows(
    w: &[u8],
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    widen: impl Fn([u8; 2]) -> f32,
) {
    let mut wide = vec![0.0f32; cols];
    for (row, o) in w.chunks_exact(2 * cols).zip(out.chunks_exact_mut(n)) {
        for (v, b) in wide.iter_mut().zip(row.as_chunks::<2>().0) {
            *v = widen(*b);
        }
        for (i, out) in o.iter_mut().enumerate() {
            *out = float_dot(&wide, &x[i * cols..][..cols]);
        }
    }
}

/// Output rows `out.len() / n` of a matrix of 32-element blocks (`w`: those rows' bytes),
/// against `n` activation rows; `out` is `[rows, n]`.
///
/// Each (row, activation) pair sums its blocks in eight float lanes, `acc[k] += (d_w d_a) ·
/// lane_k` (a multiplication, then an addition: no fused multiply-add, which not every target
/// has), then [`lane_sum`]; types with a minimum (`MIN`) add `Σ m_w s_a` last.
#[inline(always)]
fn small_rows<const N: usize, const MIN: bool>(
    w: &[u8],
    blocks_per_row: usize,
    acts: &SmallActs,
    n: usize,
    out: &mut [f32],
    unpack: impl Fn(&[u8; N], &mut Small),
) {
    let mut u = Small {
        vals: [0; QK],
        d: 0.0,
        m: 0.0,
    };
    let (qs, _) = acts.qs.as_chunks::<QK>();
    let (blocks, _) = w.as_chunks::<N>();
    for (row, o) in blocks
        .chunks_exact(blocks_per_row)
        .zip(out.chunks_exact_mut(n))
    {
        for (i, out) in o.iter_mut().enumerate() {
            let mut acc = [0.0f32; LANES];
            let mut min_sum = 0.0f32;
            for (b, block) in row.iter().enumerate() {
                unpack(block, &mut u);
                let a = i * blocks_per_row + b;
                let scale = u.d * acts.d[a];
                for (k, lane) in acc.iter_mut().enumerate() {
                    let isum: i32 = (4 * k..4 * k + 4)
                        .map(|j| i32::from(u.vals[j]) * i32::from(qs[a][j]))
                        .sum();
                    *lane += scale * isum as f32;
                }
                if MIN {
                    min_sum += u.m * acts.s[a];
                }
            }
            *out = if MIN {
                lane_sum(&acc) + min_sum
            } else {
                lane_sum(&acc)
            };
        }
    }
}

/// [`small_rows`] for k-quant blocks.
#[inline(always)]
fn super_rows<const N: usize>(
    w: &[u8],
    blocks_per_row: usize,
    acts: &SuperActs,
    n: usize,
    out: &mut [f32],
    unpack: impl Fn(&[u8; N], &mut Super),
) {
    let mut u = Super {
        w: [0; QK_K],
        mins: [0; QK_K / 16],
        d: 0.0,
        dmin: 0.0,
    };
    let (qs, _) = acts.qs.as_chunks::<QK_K>();
    let (bsums, _) = acts.bsums.as_chunks::<{ QK_K / 16 }>();
    let (blocks, _) = w.as_chunks::<N>();
    for (row, o) in blocks
        .chunks_exact(blocks_per_row)
        .zip(out.chunks_exact_mut(n))
    {
        for (i, acc) in o.iter_mut().enumerate() {
            *acc = 0.0;
            for (b, block) in row.iter().enumerate() {
                unpack(block, &mut u);
                let a = i * blocks_per_row + b;
                let isum = dot_i16_i8(&u.w, &qs[a]);
                let msum: i32 = u
                    .mins
                    .iter()
                    .zip(&bsums[a])
                    .map(|(&m, &s)| i32::from(m) * i32::from(s))
                    .sum();
                let da = acts.d[a];
                *acc += u.d * da * isum as f32 - u.dmin * da * msum as f32;
            }
        }
    }
}

/// The activations of one call, in the format the weight type is dotted with.
enum Acts<'x> {
    Small(SmallActs),
    Super(SuperActs),
    /// As they are, for 16-bit float weights.
    Float(&'x [f32]),
}

/// One chunk of output rows: `w` holds exactly those rows' blocks, `out` is `[rows, n]`.
#[inline(always)]
fn chunk(ty: GgmlType, w: &[u8], cols: usize, acts: &Acts, n: usize, out: &mut [f32]) {
    let bpr = cols / ty.block_size();
    match (ty, acts) {
        (GgmlType::Q4_0, Acts::Small(a)) => small_rows::<_, false>(w, bpr, a, n, out, unpack_q4_0),
        (GgmlType::Q4_1, Acts::Small(a)) => small_rows::<_, true>(w, bpr, a, n, out, unpack_q4_1),
        (GgmlType::Q5_0, Acts::Small(a)) => small_rows::<_, false>(w, bpr, a, n, out, unpack_q5_0),
        (GgmlType::Q5_1, Acts::Small(a)) => small_rows::<_, true>(w, bpr, a, n, out, unpack_q5_1),
        (GgmlType::Q8_0, Acts::Small(a)) => small_rows::<_, false>(w, bpr, a, n, out, unpack_q8_0),
        (GgmlType::Q2K, Acts::Super(a)) => super_rows(w, bpr, a, n, out, unpack_q2_k),
        (GgmlType::Q3K, Acts::Super(a)) => super_rows(w, bpr, a, n, out, unpack_q3_k),
        (GgmlType::Q4K, Acts::Super(a)) => super_rows(w, bpr, a, n, out, unpack_q4_k),
        (GgmlType::Q5K, Acts::Super(a)) => super_rows(w, bpr, a, n, out, unpack_q5_k),
        (GgmlType::Q6K, Acts::Super(a)) => super_rows(w, bpr, a, n, out, unpack_q6_k),
        (GgmlType::F16, Acts::Float(x)) => float_rows(w, cols, x, n, out, widen_f16),
        (GgmlType::BF16, Acts::Float(x)) => float_rows(w, cols, x, n, out, widen_bf16),
        _ => unreachable!("{ty} weights with {} activations", acts.kind()),
    }
}

impl Acts<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Acts::Small(_) => "Q8_0",
            Acts::Super(_) => "Q8_K",
            Acts::Float(_) => "f32",
        }
    }
}

/// One chunk of output rows on `isa`; see [`chunk`].
fn chunk_on(
    // Only x86-64 has kernels other than the portable ones.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] isa: Isa,
    ty: GgmlType,
    w: &[u8],
    cols: usize,
    acts: &Acts,
    n: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: `Isa::detect` (or `available`) found `isa`'s features on this CPU.
        if unsafe { chunk_x86(isa, ty, w, cols / ty.block_size(), acts, n, out) } {
            return;
        }
    }
    chunk(ty, w, cols, acts, n, out);
}

/// [`chunk`] with the x86 kernels; `false` for the types they do not cover.
///
/// # Safety
///
/// The CPU must have `isa`'s features.
#[cfg(target_arch = "x86_64")]
unsafe fn chunk_x86(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    bpr: usize,
    acts: &Acts,
    n: usize,
    out: &mut [f32],
) -> bool {
    macro_rules! on {
        ($m:ident) => {
            match (ty, acts) {
                (GgmlType::Q4_0, Acts::Small(a)) => x86::$m::q4_0(w, bpr, a, n, out),
                (GgmlType::Q4_1, Acts::Small(a)) => x86::$m::q4_1(w, bpr, a, n, out),
                (GgmlType::Q5_0, Acts::Small(a)) => x86::$m::q5_0(w, bpr, a, n, out),
                (GgmlType::Q5_1, Acts::Small(a)) => x86::$m::q5_1(w, bpr, a, n, out),
                (GgmlType::Q8_0, Acts::Small(a)) => x86::$m::q8_0(w, bpr, a, n, out),
                (GgmlType::Q4K, Acts::Super(a)) => x86::$m::q4_k(w, bpr, a, n, out),
                (GgmlType::Q5K, Acts::Super(a)) => x86::$m::q5_k(w, bpr, a, n, out),
                (GgmlType::Q6K, Acts::Super(a)) => x86::$m::q6_k(w, bpr, a, n, out),
                (GgmlType::F16, Acts::Float(x)) => x86::float_rows::<false>(w, bpr, x, n, out),
                (GgmlType::BF16, Acts::Float(x)) => x86::float_rows::<true>(w, bpr, x, n, out),
                _ => return false,
            }
        };
    }
    // SAFETY: the caller guarantees the features each module is compiled for.
    unsafe {
        match isa {
            Isa::Avx512Vnni => on!(vnni),
            Isa::Avx2 => on!(avx2),
            Isa::Portable => return false,
        }
    }
    true
}

/// Weight bytes per task: long runs of consecutive rows keep the hardware prefetcher
/// streaming (16-row tasks of a 576-wide Q4_1 matrix, 6 KB each, decoded SmolLM2 at 0.36x
/// llama.cpp), and a matrix smaller than this runs on the calling thread, without waking
/// another for a few microseconds of work.
const TASK_BYTES: usize = 64 * 1024;

/// `out = x · Wᵀ`: `w` is a `[rows, cols]` matrix of `ty` blocks (row-major, as GGUF stores
/// it), `x` is `[n, cols]` and `out` `[n, rows]`. Runs on every thread of the pool natively.
///
/// The caller guarantees the sizes (a [`crate::model::QuantizedMatrix`] checks them once), and
/// that `ty` [`has_kernel`]; `cols` is a multiple of the block size.
pub fn matmul(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
) {
    let n = x.len() / cols;
    assert!(
        has_kernel(ty) && cols.is_multiple_of(ty.block_size()),
        "{ty} rows of {cols}"
    );
    assert_eq!(
        w.len(),
        rows * cols / ty.block_size() * ty.type_size(),
        "{ty} bytes"
    );
    assert_eq!(out.len(), n * rows, "output size");
    let acts = match ty {
        GgmlType::F16 | GgmlType::BF16 => Acts::Float(x),
        _ if ty.block_size() == QK_K => Acts::Super(quantize_super(x)),
        _ => Acts::Small(quantize_small(x)),
    };
    let row_bytes = cols / ty.block_size() * ty.type_size();
    let rows_per_task = TASK_BYTES.div_ceil(row_bytes).clamp(1, rows);
    let task = |(t, o): (usize, &mut [f32])| {
        let first = t * rows_per_task;
        let count = o.len() / n;
        let bytes = &w[first * row_bytes..(first + count) * row_bytes];
        chunk_on(isa, ty, bytes, cols, &acts, n, o);
    };
    if n == 1 {
        for_each_chunk(out, rows_per_task, task);
        return;
    }
    // Computed `[rows, n]` so that each task writes one contiguous piece.
    let mut by_row = vec![0.0f32; rows * n];
    for_each_chunk(&mut by_row, rows_per_task * n, task);
    for (r, row) in by_row.chunks_exact(n).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            out[i * rows + r] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::test_values as values;
    use crate::gguf::{dequantize, quantize};

    const ALL: [GgmlType; 10] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// `x · Wᵀ` in f64 over the dequantized weights: the reference the kernels approximate.
    fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f64> {
        let n = x.len() / cols;
        let mut out = vec![0.0; n * rows];
        for i in 0..n {
            for r in 0..rows {
                out[i * rows + r] = (0..cols)
                    .map(|c| f64::from(x[i * cols + c]) * f64::from(w[r * cols + c]))
                    .sum();
            }
        }
        out
    }

    fn case(ty: GgmlType, rows: usize, cols: usize, n: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
        let packed = quantize(ty, &values(rows * cols, 1)).expect("quantizes");
        let dense = dequantize(ty, &packed, rows * cols).expect("dequantizes");
        (packed, dense, values(n * cols, 2))
    }

    /// The kernels against the dequantized matrix times the f32 activations. The error is the
    /// activations' 8-bit rounding: each dot product is within 1% of the size of its terms
    /// (`Σ |x_i w_i|`), which bounds the rounding of every element by half a step, 1/254 of the
    /// block's largest value, with room for the blocks' f16 scales.
    #[test]
    fn every_type_matches_the_dequantized_product() {
        for ty in ALL {
            let (rows, cols, n) = (37, 512, 3);
            let (packed, dense, x) = case(ty, rows, cols, n);
            let want = reference(&dense, rows, cols, &x);
            let mut got = vec![0.0f32; n * rows];
            matmul(Isa::detect(), ty, &packed, rows, cols, &x, &mut got);
            let abs: Vec<f64> = reference(
                &dense.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                rows,
                cols,
                &x.iter().map(|v| v.abs()).collect::<Vec<_>>(),
            );
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-2 * abs[k],
                    "{ty} element {k}: {g} vs {w} (scale {})",
                    abs[k]
                );
            }
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        for ty in ALL {
            let (rows, cols, n) = (19, 768, 7);
            let (packed, _, x) = case(ty, rows, cols, n);
            let runs: Vec<Vec<u32>> = Isa::available()
                .into_iter()
                .map(|isa| {
                    let mut out = vec![0.0f32; n * rows];
                    matmul(isa, ty, &packed, rows, cols, &x, &mut out);
                    out.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            assert!(runs.windows(2).all(|w| w[0] == w[1]), "{ty}");
        }
    }

    /// 16-bit weights are used exactly and the activations unrounded: the only error is the
    /// f32 summation, at most a few units of f32 rounding (2^-24) times the lanes' depth on the
    /// size of the terms; 4e-6 is that bound for 1000 values in 32 lanes. Widths with a tail
    /// (not a multiple of the lanes) and every instruction set are covered, the sets bit for bit.
    #[test]
    fn float_weights_match_the_exact_product_on_every_instruction_set() {
        for ty in [GgmlType::F16, GgmlType::BF16] {
            for (rows, cols, n) in [(23, 1000, 3), (5, 20, 1), (9, 64, 2)] {
                let (packed, dense, x) = case(ty, rows, cols, n);
                let want = reference(&dense, rows, cols, &x);
                let abs = reference(
                    &dense.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                    rows,
                    cols,
                    &x.iter().map(|v| v.abs()).collect::<Vec<_>>(),
                );
                let runs: Vec<Vec<f32>> = Isa::available()
                    .into_iter()
                    .map(|isa| {
                        let mut out = vec![0.0f32; n * rows];
                        matmul(isa, ty, &packed, rows, cols, &x, &mut out);
                        out
                    })
                    .collect();
                for (k, (g, w)) in runs[0].iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(*g) - w).abs() <= 4e-6 * abs[k],
                        "{ty} [{rows}, {cols}] element {k}: {g} vs {w} (scale {})",
                        abs[k]
                    );
                }
                let bits = |r: &Vec<f32>| r.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert!(
                    runs.windows(2).all(|w| bits(&w[0]) == bits(&w[1])),
                    "{ty} [{rows}, {cols}]"
                );
            }
        }
    }

    /// Also the prompts' loops, which take several activation rows side by side: 11 rows are
    /// whole groups of 2 and 4 and a remainder.
    #[test]
    fn each_row_of_a_batch_equals_that_row_alone() {
        for isa in Isa::available() {
            for ty in ALL {
                let (rows, cols, n) = (40, 256, 11);
                let (packed, _, x) = case(ty, rows, cols, n);
                let mut batch = vec![0.0f32; n * rows];
                matmul(isa, ty, &packed, rows, cols, &x, &mut batch);
                for i in 0..n {
                    let mut alone = vec![0.0f32; rows];
                    let row = &x[i * cols..][..cols];
                    matmul(isa, ty, &packed, rows, cols, row, &mut alone);
                    assert_eq!(alone, batch[i * rows..][..rows], "{isa:?} {ty} row {i}");
                }
            }
        }
    }

    /// Prints how fast each kernel reads its weights for one activation row (a decoding step)
    /// on a matrix of Llama-2-7B's `ffn_down` shape (11008 inputs, 4096 outputs), on every
    /// thread. A measurement, not a check: run with `--ignored --nocapture` (the crate is
    /// optimised in the test profile too).
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn kernel_read_bandwidth() {
        let (rows, cols) = (4096, 11008);
        let x = values(cols, 2);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q6K,
            GgmlType::F16,
        ] {
            let packed = quantize(ty, &values(rows * cols, 1)).expect("quantizes");
            let mut out = vec![0.0f32; rows];
            let runs = 20;
            let start = std::time::Instant::now();
            for _ in 0..runs {
                matmul(Isa::detect(), ty, &packed, rows, cols, &x, &mut out);
            }
            let seconds = start.elapsed().as_secs_f64() / f64::from(runs);
            println!(
                "{ty}: {:.1} GB/s ({:.2} ms per product)",
                packed.len() as f64 / seconds / 1e9,
                seconds * 1e3
            );
        }
    }

    #[test]
    fn activations_follow_llama_cpp() {
        // A block whose largest magnitude is negative: Q8_K maps it to -127 exactly.
        let mut x = vec![0.25f32; QK_K];
        x[3] = -2.0;
        x[4] = 1.0;
        let a = quantize_super(&x);
        assert_eq!(a.qs[3], -127);
        assert_eq!(a.d[0], 1.0 / (127.0 / 2.0));
        // 0.25 * 63.5 = 15.875 rounds to 16; 1.0 * 63.5 = 63.5 rounds to even, 64.
        assert_eq!((a.qs[0], a.qs[4]), (16, 64));
        assert_eq!(a.bsums[0], 16 * 3 - 127 + 64 + 16 * 11);
        let zero = quantize_super(&[0.0; QK_K]);
        assert_eq!((zero.d[0], zero.qs.iter().all(|&q| q == 0)), (0.0, true));

        let mut x = vec![0.5f32; QK];
        x[0] = -1.27;
        let a = quantize_small(&x);
        assert_eq!(a.qs[0], -127);
        // 0.5 / 0.01 = 50 (ties never arise here); s = d * Σq with d rounded to f16 after.
        assert_eq!(a.qs[1], 50);
        assert_eq!(a.d[0], f16_round(0.01));
        assert_eq!(a.s[0], f16_round((31 * 50 - 127) as f32 * 0.01));
    }
}
