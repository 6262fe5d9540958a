//! The x86-64 kernels: weight blocks unpacked into bytes in 256-bit registers and multiplied
//! with `vpmaddubsw` + `vpmaddwd` (AVX2), or `vpdpbusd` (AVX-512 VNNI) for the 32-element
//! types, as llama.cpp does. Each block's integer sum is exactly the portable kernels' sum, and
//! the float steps after it are the same expressions, so the results have the same bits.
//!
//! The row loops are written once in [`rows!`] and compiled for each feature set, because an
//! intrinsic only inlines into a function compiled with its feature.
//!
//! 16-bit float rows ([`float_rows`]) are widened eight values at a time (F16C's `vcvtph2ps`,
//! or a shift for BF16) and summed in the portable kernel's lanes. They are bound by memory
//! bandwidth, so both feature sets run the same 256-bit loop.

use std::arch::x86_64::*;

use super::{
    FLOAT_LANES, LANES, QK, SmallActs, SuperActs, float_lane_sum, lane_sum, widen_bf16, widen_f16,
};
use crate::gguf::quant::{
    Q4_0_BYTES, Q4_1_BYTES, Q4K_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q5K_BYTES, Q6K_BYTES, Q8_0_BYTES,
    QK_K, k_scales,
};

/// The f16 in bytes `lo, hi` as f32, with F16C's conversion (exact, as `half`'s is): `half`
/// calls its F16C path out of line, which made every block spill the kernel's registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(lo: u8, hi: u8) -> f32 {
    let bits = i32::from(u16::from_le_bytes([lo, hi]));
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// A 32-element block as signed bytes, with its scale and minimum: `value = d * v + m`.
struct SmallBlock {
    v: __m256i,
    d: f32,
    m: f32,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load(b: &[u8; 32]) -> __m256i {
    // SAFETY: `b` holds the 32 bytes read; unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// Low nibbles of the 16 bytes in bytes 0..16, high nibbles in bytes 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(b: &[u8; 16]) -> __m256i {
    // SAFETY: `b` holds the 16 bytes read; unaligned loads are allowed.
    let x = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(x, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), mask);
    _mm256_set_m128i(hi, lo)
}

/// Byte `i` is 0xFF where bit `i` of `bits` is set, 0 elsewhere.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_bytes(bits: u32) -> __m256i {
    let select = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), select);
    // Every bit but bit `i % 8` set in byte `i`: all ones exactly where that bit is set.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
}

fn sub<const S: usize, const N: usize>(b: &[u8; N], at: usize) -> &[u8; S] {
    b[at..at + S]
        .try_into()
        .unwrap_or_else(|_| unreachable!("{S} bytes at {at} of a {N}-byte block"))
}

fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0(b: &[u8; Q4_0_BYTES]) -> SmallBlock {
    SmallBlock {
        v: _mm256_sub_epi8(nibbles(sub(b, 2)), _mm256_set1_epi8(8)),
        d: f16_at(b[0], b[1]),
        m: 0.0,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1(b: &[u8; Q4_1_BYTES]) -> SmallBlock {
    SmallBlock {
        v: nibbles(sub(b, 4)),
        d: f16_at(b[0], b[1]),
        m: f16_at(b[2], b[3]),
    }
}

/// The low nibbles with bit `i` of `qh` as the fifth bit of element `i`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn five_bits(qs: &[u8; 16], qh: u32) -> __m256i {
    let high = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles(qs), high)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0(b: &[u8; Q5_0_BYTES]) -> SmallBlock {
    // `v - 16` is the nibble with 0xF0 over it where the fifth bit is clear (two's complement).
    let clear = _mm256_andnot_si256(bits_to_bytes(word(b, 2)), _mm256_set1_epi8(0xF0u8 as i8));
    SmallBlock {
        v: _mm256_or_si256(nibbles(sub(b, 6)), clear),
        d: f16_at(b[0], b[1]),
        m: 0.0,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1(b: &[u8; Q5_1_BYTES]) -> SmallBlock {
    SmallBlock {
        v: five_bits(sub(b, 8), word(b, 4)),
        d: f16_at(b[0], b[1]),
        m: f16_at(b[2], b[3]),
    }
}

/// [`q5_0`] with AVX-512's byte masks: 16 is taken away, in one masked subtraction, where the
/// fifth bit is clear. Building the bytes of the bits took most of the Q5_0 kernel's time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
fn q5_0_masked(b: &[u8; Q5_0_BYTES]) -> SmallBlock {
    let low = nibbles(sub(b, 6));
    SmallBlock {
        v: _mm256_mask_sub_epi8(low, !word(b, 2), low, _mm256_set1_epi8(16)),
        d: f16_at(b[0], b[1]),
        m: 0.0,
    }
}

/// [`q5_1`] with AVX-512's byte masks: the fifth bit added (to a nibble: set) in one masked add.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
fn q5_1_masked(b: &[u8; Q5_1_BYTES]) -> SmallBlock {
    let low = nibbles(sub(b, 8));
    SmallBlock {
        v: _mm256_mask_add_epi8(low, word(b, 4), low, _mm256_set1_epi8(0x10)),
        d: f16_at(b[0], b[1]),
        m: f16_at(b[2], b[3]),
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0(b: &[u8; Q8_0_BYTES]) -> SmallBlock {
    SmallBlock {
        v: load(sub(b, 2)),
        d: f16_at(b[0], b[1]),
        m: 0.0,
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// `Σ u·q` over 32 bytes in eight i32 lanes, `u` unsigned (at most 63 here, so the pairwise
/// i16 sums cannot saturate) and `q` signed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(u: __m256i, q: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1))
}

/// `Σ u·q` with each pair's i16 sum scaled by `scales` (i16 lanes) before the i32 sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scaled_dot(u: __m256i, q: __m256i, scales: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), scales)
}

/// A k-quant block's integer sums: `isum` = Σ (group scale · value · q), and the scalar
/// parts: `d`, `dmin`, and `msum` = Σ (group minimum · group sum of q).
struct SuperSums {
    isum: i32,
    msum: i32,
    d: f32,
    dmin: f32,
}

/// One activation row's 256-value block, as Q8_K quantized it: what a k-quant block is dotted
/// with.
#[derive(Clone, Copy)]
struct SuperAct<'a> {
    q: &'a [i8; QK_K],
    bsums: &'a [i16; QK_K / 16],
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k<const A: usize>(b: &[u8; Q4K_BYTES], acts: [SuperAct; A]) -> [SuperSums; A] {
    four_or_five_bits::<Q4K_BYTES, false, A>(b, acts)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_k<const A: usize>(b: &[u8; Q5K_BYTES], acts: [SuperAct; A]) -> [SuperSums; A] {
    four_or_five_bits::<Q5K_BYTES, true, A>(b, acts)
}

/// The eight 6-bit scales and eight minimums of a Q4_K/Q5_K block (its 12 scale bytes) as
/// bytes 0..8 and 8..16, unpacked with whole-word masks as llama.cpp does: what
/// `k_scale_min(s, j)` gives for every `j`, in a dozen instructions instead of a branch and
/// a few byte operations per group.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k_scales_and_mins(s: &[u8; 12]) -> __m128i {
    const LOW6: u32 = 0x3F3F_3F3F;
    const LOW4: u32 = 0x0F0F_0F0F;
    const LOW2: u32 = 0x0303_0303;
    let w = [word(s, 0), word(s, 4), word(s, 8)];
    let scales = [w[0] & LOW6, (w[2] & LOW4) | (((w[0] >> 6) & LOW2) << 4)];
    let mins = [
        w[1] & LOW6,
        ((w[2] >> 4) & LOW4) | (((w[1] >> 6) & LOW2) << 4),
    ];
    _mm_set_epi32(
        mins[1] as i32,
        mins[0] as i32,
        scales[1] as i32,
        scales[0] as i32,
    )
}

/// Every i16 lane of a 128-bit half set to lane `j` (`j < 8`) of `v`, in both halves.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn broadcast_i16(v: __m256i, j: usize) -> __m256i {
    let (lo, hi) = (2 * j as i8, 2 * j as i8 + 1);
    _mm256_shuffle_epi8(
        v,
        _mm256_set1_epi16(i16::from_le_bytes([lo as u8, hi as u8])),
    )
}

/// Q4_K, and Q5_K (`FIFTH`): eight groups of 32 with 6-bit scales and minimums; groups `2c`
/// and `2c + 1` are the low and high nibbles of 32 bytes, and Q5_K's fifth bit of group `j`
/// is bit `j` of every byte of `qh` (bytes 16..48, before the nibbles). The minimums' sum is
/// one multiply-add of the eight minimums with the activations' pairs of group sums.
///
/// The block is unpacked once for the `A` activation blocks it is dotted with (the rows of a
/// prompt side by side); each one's sums are those it would have alone.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn four_or_five_bits<const N: usize, const FIFTH: bool, const A: usize>(
    b: &[u8; N],
    acts: [SuperAct; A],
) -> [SuperSums; A] {
    let qs = if FIFTH { 48 } else { 16 };
    let packed = k_scales_and_mins(&k_scales(b));
    // Scales as i16 in both 128-bit halves, so each group's is one byte shuffle away.
    let scales16 = _mm_cvtepu8_epi16(packed);
    let scales = _mm256_set_m128i(scales16, scales16);
    let mins = _mm_cvtepu8_epi16(_mm_unpackhi_epi64(packed, packed));
    let msum = acts.map(|act| {
        // SAFETY: `bsums` holds 16 i16 (32 bytes); unaligned loads are allowed.
        let sums = unsafe { _mm256_loadu_si256(act.bsums.as_ptr().cast()) };
        let pairs = _mm_hadd_epi16(
            _mm256_castsi256_si128(sums),
            _mm256_extracti128_si256::<1>(sums),
        );
        let m = _mm_madd_epi16(mins, pairs);
        let m = _mm_add_epi32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
        let m = _mm_add_epi32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
        _mm_cvtsi128_si32(m)
    });
    let mask = _mm256_set1_epi8(0x0F);
    let qh = if FIFTH {
        load(sub(b, 16))
    } else {
        _mm256_setzero_si256()
    };
    let mut acc = [_mm256_setzero_si256(); A];
    for c in 0..4 {
        let x = load(sub(b, qs + 32 * c));
        let halves = [
            _mm256_and_si256(x, mask),
            _mm256_and_si256(_mm256_srli_epi16::<4>(x), mask),
        ];
        for (h, low) in halves.into_iter().enumerate() {
            let j = 2 * c + h;
            let v = if FIFTH {
                // Bit `j` of every byte (masked, so a 16-bit shift brings in no neighbour's
                // bit), moved to 0x10.
                let shifted = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32));
                let bit = _mm256_and_si256(shifted, _mm256_set1_epi8(1));
                _mm256_or_si256(low, _mm256_slli_epi16::<4>(bit))
            } else {
                low
            };
            let scale = broadcast_i16(scales, j);
            for (acc, act) in acc.iter_mut().zip(&acts) {
                let qv = load(sub_i8(act.q, 32 * j));
                *acc = _mm256_add_epi32(*acc, scaled_dot(v, qv, scale));
            }
        }
    }
    let (d, dmin) = (f16_at(b[0], b[1]), f16_at(b[2], b[3]));
    std::array::from_fn(|a| SuperSums {
        isum: hsum(acc[a]),
        msum: msum[a],
        d,
        dmin,
    })
}

/// Q6_K: the unsigned 6-bit values `v` (the stored `v - 32` is restored by subtracting
/// 32 · Σ scale · group sum, one multiply-add of the sixteen scales with the group sums).
/// Unpacked once for `A` activation blocks, as [`four_or_five_bits`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k<const A: usize>(b: &[u8; Q6K_BYTES], acts: [SuperAct; A]) -> [SuperSums; A] {
    const QH: usize = QK_K / 2;
    const SCALES: usize = QH + QK_K / 4;
    const D: usize = SCALES + QK_K / 16;
    // SAFETY: the block holds 16 scale bytes at SCALES; unaligned loads are allowed.
    let bytes = unsafe { _mm_loadu_si128(b[SCALES..].as_ptr().cast()) };
    let all = _mm256_cvtepi8_epi16(bytes);
    let offset = acts.map(|act| {
        // SAFETY: `bsums` holds 16 i16 (32 bytes); unaligned loads are allowed.
        let sums = unsafe { _mm256_loadu_si256(act.bsums.as_ptr().cast()) };
        hsum(_mm256_madd_epi16(all, sums))
    });
    let mask = _mm256_set1_epi8(0x0F);
    let three = _mm256_set1_epi8(3);
    let mut acc = [_mm256_setzero_si256(); A];
    for h in 0..2 {
        // Scales 8h..8h+8 as i16 in both halves: group `g` is in the low half of a product,
        // group `g + 1` in the high half.
        let half = if h == 0 {
            _mm256_castsi256_si128(all)
        } else {
            _mm256_extracti128_si256::<1>(all)
        };
        let scales8 = _mm256_set_m128i(half, half);
        let ql = [load(sub(b, 64 * h)), load(sub(b, 64 * h + 32))];
        let qh = load(sub(b, QH + 32 * h));
        for k in 0..4 {
            let low = if k < 2 {
                _mm256_and_si256(ql[k], mask)
            } else {
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql[k - 2]), mask)
            };
            let top =
                _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)), three);
            let v = _mm256_or_si256(low, _mm256_slli_epi16::<4>(top));
            let scales = _mm256_blend_epi32::<0b1111_0000>(
                broadcast_i16(scales8, 2 * k),
                broadcast_i16(scales8, 2 * k + 1),
            );
            for (acc, act) in acc.iter_mut().zip(&acts) {
                let qv = load(sub_i8(act.q, 128 * h + 32 * k));
                *acc = _mm256_add_epi32(*acc, scaled_dot(v, qv, scales));
            }
        }
    }
    let d = f16_at(b[D], b[D + 1]);
    std::array::from_fn(|a| SuperSums {
        isum: hsum(acc[a]) - 32 * offset[a],
        msum: 0,
        d,
        dmin: 0.0,
    })
}

fn sub_i8(q: &[i8; QK_K], at: usize) -> &[u8; 32] {
    let bytes: &[i8; 32] = q[at..at + 32]
        .try_into()
        .unwrap_or_else(|_| unreachable!("32 activations at {at}"));
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { &*(bytes as *const [i8; 32]).cast::<[u8; 32]>() }
}

/// How far ahead of the block in use weights are fetched into the cache: the hardware
/// prefetcher alone left the 32-element kernels waiting on memory for half their time.
const PREFETCH_BYTES: usize = 4096;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch<T>(block: &T) {
    let ahead = (block as *const T)
        .cast::<i8>()
        .wrapping_add(PREFETCH_BYTES);
    // Prefetching is a hint: an address past the weights is never dereferenced.
    _mm_prefetch::<_MM_HINT_T0>(ahead);
}

/// Rows of the 32-element types computed side by side (see the kernels' `rows`).
const ROWS: usize = 4;

/// A module of row loops compiled for one feature set, one function per block type:
/// `fn TYPE(w, blocks_per_row, acts, n, out)` computes `out` (`[rows, n]`) for the rows whose
/// blocks are `w`, against `n` activation rows. `$dot` is the dot product of 32 unsigned and
/// 32 signed bytes into eight i32 lanes; `$q5_0` and `$q5_1` unpack those blocks (with the
/// feature set's fastest instructions). A prompt's activation rows are taken `$small` (for the
/// 32-element types) or `$super` (k-quants) at a time, so that each weight block is unpacked
/// once for all of them; as many as the feature set's registers hold.
macro_rules! rows {
    ($m:ident, $features:literal, $dot:ident, $q5_0:ident, $q5_1:ident, $small:literal,
        $super:literal) => {
        pub(super) mod $m {
            use super::*;
            rows!(@small $features, $dot, $small, q4_0 q4_0 Q4_0_BYTES false,
                q4_1 q4_1 Q4_1_BYTES true, q5_0 $q5_0 Q5_0_BYTES false,
                q5_1 $q5_1 Q5_1_BYTES true, q8_0 q8_0 Q8_0_BYTES false);
            rows!(@super $features, $super, q4_k Q4K_BYTES, q5_k Q5K_BYTES, q6_k Q6K_BYTES);
        }
    };
    (@small $features:literal, $dot:ident, $acts:literal,
        $($ty:ident $unpack:ident $bytes:ident $min:literal),*) => {$(
        #[target_feature(enable = $features)]
        pub(in super::super) fn $ty(
            w: &[u8],
            blocks_per_row: usize,
            acts: &SmallActs,
            n: usize,
            out: &mut [f32],
        ) {
            let (blocks, _) = w.as_chunks::<$bytes>();
            let groups = blocks.chunks_exact(ROWS * blocks_per_row);
            let rest = groups.remainder();
            let mut outs = out.chunks_exact_mut(ROWS * n);
            for (group, o) in groups.zip(&mut outs) {
                $ty::rows::<ROWS>(group, blocks_per_row, acts, n, o);
            }
            let o = outs.into_remainder();
            for (row, o) in rest.chunks_exact(blocks_per_row).zip(o.chunks_exact_mut(n)) {
                $ty::rows::<1>(row, blocks_per_row, acts, n, o);
            }
        }

        mod $ty {
            use super::*;

            /// `R` consecutive rows (`blocks`, `out` `[R, n]`) against every activation row,
            /// `$acts` activation rows at a time and the rest one by one.
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) fn rows<const R: usize>(
                blocks: &[[u8; $bytes]],
                blocks_per_row: usize,
                acts: &SmallActs,
                n: usize,
                out: &mut [f32],
            ) {
                let rows: [&[[u8; $bytes]]; R] =
                    std::array::from_fn(|k| &blocks[k * blocks_per_row..][..blocks_per_row]);
                let whole = n - n % $acts;
                for i in (0..whole).step_by($acts) {
                    side_by_side::<R, $acts>(rows, blocks_per_row, acts, i, n, out);
                }
                for i in whole..n {
                    side_by_side::<R, 1>(rows, blocks_per_row, acts, i, n, out);
                }
            }

            /// Rows `rows` against activation rows `i..i + A`, into `out[k * n + i + a]`:
            /// each (row, activation) pair keeps its own accumulator and order of blocks, so
            /// its sum has the same bits as alone, and the pairs' independent additions
            /// overlap instead of waiting on one chain.
            #[inline]
            #[target_feature(enable = $features)]
            fn side_by_side<const R: usize, const A: usize>(
                rows: [&[[u8; $bytes]]; R],
                blocks_per_row: usize,
                acts: &SmallActs,
                i: usize,
                n: usize,
                out: &mut [f32],
            ) {
                let (qs, _) = acts.qs.as_chunks::<QK>();
                let mut acc = [[_mm256_setzero_ps(); A]; R];
                let mut min_sum = [[0.0f32; A]; R];
                for b in 0..blocks_per_row {
                    let at: [usize; A] = std::array::from_fn(|a| (i + a) * blocks_per_row + b);
                    // SAFETY: each chunk holds 32 bytes; unaligned loads are allowed.
                    let q = at.map(|a| unsafe { _mm256_loadu_si256(qs[a].as_ptr().cast()) });
                    for k in 0..R {
                        let block = &rows[k][b];
                        prefetch(block);
                        let u = super::super::$unpack(block);
                        // |v| with the sign moved onto q: the product stays v·q, and the
                        // unsigned operand that the byte multiplications need is |v|.
                        let magnitude = _mm256_sign_epi8(u.v, u.v);
                        for a in 0..A {
                            let lanes = $dot(magnitude, _mm256_sign_epi8(q[a], u.v));
                            let scale = _mm256_set1_ps(u.d * acts.d[at[a]]);
                            acc[k][a] = _mm256_add_ps(
                                acc[k][a],
                                _mm256_mul_ps(scale, _mm256_cvtepi32_ps(lanes)),
                            );
                            if $min {
                                min_sum[k][a] += u.m * acts.s[at[a]];
                            }
                        }
                    }
                }
                for k in 0..R {
                    for a in 0..A {
                        let mut lanes = [0.0f32; LANES];
                        // SAFETY: `lanes` holds eight f32; unaligned stores are allowed.
                        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[k][a]) };
                        out[k * n + i + a] = if $min {
                            lane_sum(&lanes) + min_sum[k][a]
                        } else {
                            lane_sum(&lanes)
                        };
                    }
                }
            }
        }
    )*};
    (@super $features:literal, $acts:literal, $($ty:ident $bytes:ident),*) => {$(
        #[target_feature(enable = $features)]
        pub(in super::super) fn $ty(
            w: &[u8],
            blocks_per_row: usize,
            acts: &SuperActs,
            n: usize,
            out: &mut [f32],
        ) {
            let (blocks, _) = w.as_chunks::<$bytes>();
            let whole = n - n % $acts;
            for (row, o) in blocks.chunks_exact(blocks_per_row).zip(out.chunks_exact_mut(n)) {
                for i in (0..whole).step_by($acts) {
                    $ty::side_by_side::<$acts>(row, acts, i, o);
                }
                for i in whole..n {
                    $ty::side_by_side::<1>(row, acts, i, o);
                }
            }
        }

        mod $ty {
            use super::*;

            /// One row (`row`: its blocks) against activation rows `i..i + A`, into
            /// `out[i + a]`; each pair sums its blocks in order, as alone.
            #[inline]
            #[target_feature(enable = $features)]
            pub(super) fn side_by_side<const A: usize>(
                row: &[[u8; $bytes]],
                acts: &SuperActs,
                i: usize,
                out: &mut [f32],
            ) {
                let (qs, _) = acts.qs.as_chunks::<QK_K>();
                let (bsums, _) = acts.bsums.as_chunks::<{ QK_K / 16 }>();
                let blocks_per_row = row.len();
                let mut acc = [0.0f32; A];
                for (b, block) in row.iter().enumerate() {
                    prefetch(block);
                    let at: [usize; A] = std::array::from_fn(|a| (i + a) * blocks_per_row + b);
                    let sums = super::super::$ty::<A>(
                        block,
                        at.map(|a| SuperAct {
                            q: &qs[a],
                            bsums: &bsums[a],
                        }),
                    );
                    for ((acc, s), a) in acc.iter_mut().zip(sums).zip(at) {
                        let da = acts.d[a];
                        *acc += s.d * da * s.isum as f32 - s.dmin * da * s.msum as f32;
                    }
                }
                out[i..i + A].copy_from_slice(&acc);
            }
        }
    )*};
}

/// [`dot_u8_i8`] in VNNI's one instruction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot_vnni(u: __m256i, q: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, q)
}

// AVX2 has 16 vector registers, AVX-512 32.
rows!(avx2, "avx2,fma,f16c", dot_u8_i8, q5_0, q5_1, 2, 4);
rows!(
    vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    dot_vnni,
    q5_0_masked,
    q5_1_masked,
    4,
    4
);

/// Eight 16-bit floats (`BF16`, else F16) widened to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn widen8<const BF16: bool>(b: &[u8]) -> __m256 {
    assert!(b.len() >= 16, "eight 16-bit values");
    // SAFETY: `b` holds the 16 bytes read; unaligned loads are allowed.
    let h = unsafe { _mm_loadu_si128(b.as_ptr().cast()) };
    if BF16 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    } else {
        _mm256_cvtph_ps(h)
    }
}

/// The portable `float_rows` (of `BF16` rows, else F16) with 256-bit vectors: lane `8q + l` of
/// the portable kernel is lane `l` of accumulator `q`, and the tail is added to the stored
/// lanes as the portable kernel adds it, so the sums have the same bits.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn float_rows<const BF16: bool>(
    w: &[u8],
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let widen = if BF16 { widen_bf16 } else { widen_f16 };
    for (row, o) in w.chunks_exact(2 * cols).zip(out.chunks_exact_mut(n)) {
        let (chunks, tail) = row.as_chunks::<{ 2 * FLOAT_LANES }>();
        for (i, out) in o.iter_mut().enumerate() {
            let (xc, xt) = x[i * cols..][..cols].as_chunks::<FLOAT_LANES>();
            let mut acc = [_mm256_setzero_ps(); FLOAT_LANES / 8];
            for (wb, xb) in chunks.iter().zip(xc) {
                for (q, acc) in acc.iter_mut().enumerate() {
                    let wv = widen8::<BF16>(&wb[16 * q..]);
                    // SAFETY: `xb` holds 32 f32 and `q < 4`; unaligned loads are allowed.
                    let xv = unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * q)) };
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(wv, xv));
                }
            }
            let mut lanes = [0.0f32; FLOAT_LANES];
            for (q, acc) in acc.iter().enumerate() {
                // SAFETY: `lanes` holds 32 f32 and `q < 4`; unaligned stores are allowed.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * q), *acc) };
            }
            for (k, (b, x)) in tail.as_chunks::<2>().0.iter().zip(xt).enumerate() {
                lanes[k] += widen(*b) * x;
            }
            *out = float_lane_sum(&lanes);
        }
    }
}
