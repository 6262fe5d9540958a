//! GGML block quantization: `f32` values to the stored bytes of a [`GgmlType`], the inverse of
//! [`dequantize`](super::dequantize).
//!
//! Each type follows one reference, operation for operation:
//!
//! - **F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: gguf-py** (`gguf-py/gguf/quants.py`,
//!   numpy float32), bit for bit. That means numpy's first-index `argmax` for the largest
//!   magnitude, its float-to-`uint8` cast, and for Q4_0/Q5_0 the float64 `x * id + offset`
//!   that gguf-py uses to stand in for the FMA the C reference gets from its compiler.
//!   (gguf-py 0.19.0 on PyPI still does that sum in float32. The two agree on the test
//!   fixture. On 1.7 million mixed test values they differed in 17 Q4_0 levels and no
//!   Q5_0 level.)
//! - **Q2_K, Q3_K, Q4_K, Q5_K, Q6_K: llama.cpp's reference quantizers**
//!   (`quantize_row_q*_K_ref` in `ggml-quants.c`, what `llama-quantize` does without an
//!   importance matrix). gguf-py has no quantizer for these. Every float operation here is
//!   a separate, unfused f32 operation in C's left-to-right order, which is llama.cpp built
//!   without FMA contraction. A build that contracts `a * b + c` into FMAs (GCC does by
//!   default with `-march=native`) rounds some sums differently and now and then picks
//!   another level or scale. Both are valid encodings of the same values.
//!
//! # Non-finite input
//!
//! No input panics, NaN and infinities included. A block holding one gets a meaningless
//! encoding, but its neighbours are untouched. For the gguf-py types the result is what
//! numpy gives on x86-64. NaN reaches the block's scale, which is stored as an f16 NaN, and
//! every level cast from a NaN or an out-of-range value is 0. An infinity makes the scale
//! infinite. The one exception is NaN payload bits, which can come out different. The
//! k-quants do what llama.cpp's C does, with its float-to-integer trick (`nearest_int`)
//! reproduced bit for bit.
//!
//! Blocks are read and written as fixed-size arrays (`as_chunks`), as in the dequantizer.
//! Every index is a loop counter with constant bounds, so no input can push one out of range.

use half::f16;

use super::GgufError;
use super::quant::GgmlType;

/// Elements per block of the k-quants (ggml's `QK_K`).
const QK_K: usize = 256;

const Q4_0_BYTES: usize = GgmlType::Q4_0.type_size();
const Q4_1_BYTES: usize = GgmlType::Q4_1.type_size();
const Q5_0_BYTES: usize = GgmlType::Q5_0.type_size();
const Q5_1_BYTES: usize = GgmlType::Q5_1.type_size();
const Q8_0_BYTES: usize = GgmlType::Q8_0.type_size();
const Q2K_BYTES: usize = GgmlType::Q2K.type_size();
const Q3K_BYTES: usize = GgmlType::Q3K.type_size();
const Q4K_BYTES: usize = GgmlType::Q4K.type_size();
const Q5K_BYTES: usize = GgmlType::Q5K.type_size();
const Q6K_BYTES: usize = GgmlType::Q6K.type_size();

/// Whether rows of `row_len` values can be stored as `ty`, that is, whether the row is a
/// whole number of `ty`'s blocks. An empty row fits. GGML stores blocks within rows, so this
/// is the check to make per row before quantizing a matrix.
pub fn fits_rows(ty: GgmlType, row_len: usize) -> bool {
    row_len.is_multiple_of(ty.block_size())
}

/// A changed matrix that was of type `source`, in 16 bits: BF16 for a BF16 matrix (it keeps
/// its type and range), F16 for any other (its mantissa is 3 bits longer, and weights never
/// approach its range), with the bytes. `None` when a value is not finite in that type (out of
/// F16's range, or not finite to begin with): such a matrix stays f32.
pub fn in_sixteen_bits(source: GgmlType, values: &[f32]) -> Option<(GgmlType, Vec<u8>)> {
    let (ty, exponent) = match source {
        GgmlType::BF16 => (GgmlType::BF16, 0x7F80),
        _ => (GgmlType::F16, 0x7C00),
    };
    let bytes = quantize(ty, values)
        .unwrap_or_else(|e| unreachable!("16-bit floats hold any number of values: {e}"));
    // All exponent bits set: an infinity or a NaN.
    let finite = bytes
        .as_chunks::<2>()
        .0
        .iter()
        .all(|b| u16::from_le_bytes(*b) & exponent != exponent);
    finite.then_some((ty, bytes))
}

/// Quantizes `values` (row-major, a whole number of `ty`'s blocks) into the stored bytes of
/// `ty`, in the layout [`dequantize`](super::dequantize) reads.
///
/// See the [module docs](self) for which reference each type matches and what happens to
/// non-finite values.
///
/// # Errors
///
/// [`GgufError::NotBlockMultiple`] (naming the type and the length) if `values.len()` is not
/// a multiple of `ty.block_size()`.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, GgufError> {
    let block_size = ty.block_size();
    if !values.len().is_multiple_of(block_size) {
        return Err(GgufError::NotBlockMultiple {
            ty: ty.name(),
            n_elements: values.len() as u64,
            block_size: block_size as u64,
        });
    }
    // No type takes more than 4 bytes per value, and the f32 input already occupies that
    // much memory, so this cannot overflow.
    let mut out = vec![0u8; values.len() / block_size * ty.type_size()];
    match ty {
        GgmlType::F32 => blocks(values, &mut out, |x: &[f32; 1], o: &mut [u8; 4]| {
            *o = x[0].to_le_bytes();
        }),
        GgmlType::F16 => blocks(values, &mut out, |x: &[f32; 1], o: &mut [u8; 2]| {
            *o = f16_bytes(x[0]);
        }),
        GgmlType::BF16 => blocks(values, &mut out, |x: &[f32; 1], o: &mut [u8; 2]| {
            *o = bf16_bytes(x[0]);
        }),
        GgmlType::Q4_0 => blocks(values, &mut out, q4_0),
        GgmlType::Q4_1 => blocks(values, &mut out, q4_1),
        GgmlType::Q5_0 => blocks(values, &mut out, q5_0),
        GgmlType::Q5_1 => blocks(values, &mut out, q5_1),
        GgmlType::Q8_0 => blocks(values, &mut out, q8_0),
        GgmlType::Q2K => blocks(values, &mut out, q2_k),
        GgmlType::Q3K => blocks(values, &mut out, q3_k),
        GgmlType::Q4K => blocks(values, &mut out, q4_k),
        GgmlType::Q5K => blocks(values, &mut out, q5_k),
        GgmlType::Q6K => blocks(values, &mut out, q6_k),
    }
    Ok(out)
}

/// Runs `f` over every (input block, output block) pair. The caller sized `out` for exactly
/// the blocks in `values`, so no remainder is left over.
#[inline(always)]
fn blocks<const IN: usize, const OUT: usize>(
    values: &[f32],
    out: &mut [u8],
    f: impl Fn(&[f32; IN], &mut [u8; OUT]),
) {
    let (inputs, _) = values.as_chunks::<IN>();
    let (outputs, _) = out.as_chunks_mut::<OUT>();
    for (x, o) in inputs.iter().zip(outputs) {
        f(x, o);
    }
}

// ---------------------------------------------------------------------------------------------
// Float conversions and numpy's casts
// ---------------------------------------------------------------------------------------------

/// numpy's `astype(np.float16)`: round to nearest even, overflowing to infinity (`half` does
/// exactly this for numbers). numpy's software conversion keeps a NaN's sign and the top 10
/// payload bits, setting the lowest one if all are zero. `half` would quiet the NaN instead.
#[inline(always)]
fn f16_bytes(v: f32) -> [u8; 2] {
    let bits = if v.is_nan() {
        let b = v.to_bits();
        let payload = ((b & 0x007F_FFFF) >> 13) as u16;
        ((b >> 16) as u16 & 0x8000) | 0x7C00 | payload.max(1)
    } else {
        f16::from_f32(v).to_bits()
    };
    bits.to_le_bytes()
}

/// The value an f16 stored as `b` holds.
#[inline(always)]
fn f16_value(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// gguf-py's (and ggml's) f32 to bfloat16. A NaN keeps its upper half with the quiet bit
/// forced on. Everything else rounds to nearest even on the upper 16 bits, so the largest
/// finite values round up to infinity.
#[inline(always)]
fn bf16_bytes(v: f32) -> [u8; 2] {
    let mut n = v.to_bits();
    if n & 0x7FFF_FFFF > 0x7F80_0000 {
        n = (n & 0xFFFF_0000) | 0x0040_0000;
    }
    // At most 0xFFFF_0000 + 0x8000 after the NaN rule, so u32 does not overflow.
    let rounded = (n + 0x7FFF + ((n >> 16) & 1)) >> 16;
    (rounded as u16).to_le_bytes()
}

/// numpy's float32 to `uint8`/`int8` cast (`astype`) on x86-64, measured with numpy 2.4:
/// truncate toward zero to an i32 (`cvttss2si`) and keep the low byte. NaN and values outside
/// the i32 range give `i32::MIN`, whose low byte is 0. (C leaves this cast undefined; gguf-py
/// only reaches it out of range for non-finite input or a subnormal block scale.)
#[inline(always)]
fn numpy_cast_byte(v: f32) -> u8 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        v as i32 as u8
    } else {
        0
    }
}

/// numpy's `max(abs(block))`: NaN if the block holds one.
#[inline(always)]
fn abs_max<const N: usize>(x: &[f32; N]) -> f32 {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a.is_nan() {
            return a;
        }
        amax = amax.max(a);
    }
    amax
}

/// The element of largest magnitude, sign kept, picked as numpy's `argmax(abs(block))` picks:
/// the first on ties, and the first NaN if there is one.
#[inline(always)]
fn signed_abs_max<const N: usize>(x: &[f32; N]) -> f32 {
    let mut best = 0.0f32;
    let mut best_abs = -1.0f32;
    for &v in x {
        let a = v.abs();
        if a.is_nan() {
            return v;
        }
        if a > best_abs {
            best_abs = a;
            best = v;
        }
    }
    best
}

/// numpy's `block.min()` and `block.max()`: both NaN if the block holds one. Among equal
/// values the last one wins, which only shows for zeros of both signs. numpy's SIMD
/// reduction order decides that sign and agrees with this in all but about one block in
/// 10^4 that mixes +0 and -0. (Only the stored sign of a zero minimum can differ, never a
/// dequantized value.)
#[inline(always)]
fn min_max<const N: usize>(x: &[f32; N]) -> (f32, f32) {
    let mut min = f32::INFINITY;
    let mut max = f32::NEG_INFINITY;
    for &v in x {
        if v.is_nan() {
            return (v, v);
        }
        if v <= min {
            min = v;
        }
        if v >= max {
            max = v;
        }
    }
    (min, max)
}

/// gguf-py's `np.where(d == 0, 0, 1 / d)`.
#[inline(always)]
fn inverse_or_zero(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

// ---------------------------------------------------------------------------------------------
// gguf-py's block quantizers
// ---------------------------------------------------------------------------------------------

/// Q8_0: `d = max|x| / 127`, levels `x / d` rounded half away from zero (gguf-py's
/// `np_roundf`, which `f32::round` equals) and stored as `i8`.
#[inline(always)]
fn q8_0(x: &[f32; 32], o: &mut [u8; Q8_0_BYTES]) {
    let d = abs_max(x) / 127.0;
    let id = inverse_or_zero(d);
    [o[0], o[1]] = f16_bytes(d);
    for j in 0..32 {
        o[2 + j] = numpy_cast_byte((x[j] * id).round());
    }
}

/// The level of `v` for Q4_0 (`offset` 8.5, `top` 15) and Q5_0 (16.5, 31).
/// `trunc(f64(v) * f64(id) + offset)` is evaluated in float64, where the product is exact,
/// then rounded to float32 before the truncation (numpy's `trunc(..., dtype=float32)`
/// casts its input first), cast to `uint8` and clipped.
#[inline(always)]
fn symmetric_level(v: f32, id: f32, offset: f64, top: u8) -> u8 {
    let t = (f64::from(v) * f64::from(id) + offset) as f32;
    numpy_cast_byte(t.trunc()).min(top)
}

/// Q4_0: `d = max / -8` for the element of largest magnitude, levels `x / d + 8` in 0..=15.
/// Byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble.
#[inline(always)]
fn q4_0(x: &[f32; 32], o: &mut [u8; Q4_0_BYTES]) {
    let d = signed_abs_max(x) / -8.0;
    let id = inverse_or_zero(d);
    [o[0], o[1]] = f16_bytes(d);
    nibbles(&x.map(|v| symmetric_level(v, id, 8.5, 15)), &mut o[2..]);
}

/// Q5_0: Q4_0 with `d = max / -16` and levels in 0..=31. The fifth bits go into a
/// little-endian u32, bit `j` for element `j`.
#[inline(always)]
fn q5_0(x: &[f32; 32], o: &mut [u8; Q5_0_BYTES]) {
    let d = signed_abs_max(x) / -16.0;
    let id = inverse_or_zero(d);
    let q = x.map(|v| symmetric_level(v, id, 16.5, 31));
    [o[0], o[1]] = f16_bytes(d);
    [o[2], o[3], o[4], o[5]] = high_bits(&q);
    nibbles(&q, &mut o[6..]);
}

/// The level of `v` for Q4_1 (`top` 15) and Q5_1 (31): `trunc((v - min) * id + 0.5)`, all
/// in float32, cast to `uint8` and clipped.
#[inline(always)]
fn affine_level(v: f32, min: f32, id: f32, top: u8) -> u8 {
    numpy_cast_byte(((v - min) * id + 0.5).trunc()).min(top)
}

/// Q4_1: `d = (max - min) / 15`, `m = min`, levels `(x - min) / d` in 0..=15, packed as
/// Q4_0's.
#[inline(always)]
fn q4_1(x: &[f32; 32], o: &mut [u8; Q4_1_BYTES]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse_or_zero(d);
    [o[0], o[1]] = f16_bytes(d);
    [o[2], o[3]] = f16_bytes(min);
    nibbles(&x.map(|v| affine_level(v, min, id, 15)), &mut o[4..]);
}

/// Q5_1: Q4_1 with `d = (max - min) / 31` and levels in 0..=31, fifth bits as in Q5_0.
#[inline(always)]
fn q5_1(x: &[f32; 32], o: &mut [u8; Q5_1_BYTES]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse_or_zero(d);
    let q = x.map(|v| affine_level(v, min, id, 31));
    [o[0], o[1]] = f16_bytes(d);
    [o[2], o[3]] = f16_bytes(min);
    [o[4], o[5], o[6], o[7]] = high_bits(&q);
    nibbles(&q, &mut o[8..]);
}

/// Blocks of a 32-element type whose scales and levels were chosen elsewhere (a GPTQ or
/// round-to-nearest grid that matches the type, see `compress::grid`): for each block its
/// scale `d`, its offset `m` (Q4_1 and Q5_1; ignored otherwise) and 32 levels, which
/// dequantize as `d (l - 8)` (Q4_0), `d (l - 16)` (Q5_0), `d (l - 128)` (Q8_0) or `d l + m`
/// (Q4_1, Q5_1). `d` and `m` are stored as f16.
///
/// # Panics
///
/// For another type, a level above the type's range, or `levels` not 32 per block.
pub fn pack_levels(ty: GgmlType, scales: &[(f32, f32)], levels: &[u8]) -> Vec<u8> {
    assert_eq!(levels.len(), 32 * scales.len(), "32 levels per block");
    let top = match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => 15,
        GgmlType::Q5_0 | GgmlType::Q5_1 => 31,
        GgmlType::Q8_0 => 255,
        _ => panic!("{ty} is not a 32-element type with levels"),
    };
    assert!(
        levels.iter().all(|&l| l <= top),
        "levels of {ty} are 0..={top}"
    );
    let size = ty.type_size();
    let mut out = vec![0u8; scales.len() * size];
    let (levels, _) = levels.as_chunks::<32>();
    for ((&(d, m), q), o) in scales.iter().zip(levels).zip(out.chunks_exact_mut(size)) {
        [o[0], o[1]] = f16_bytes(d);
        match ty {
            GgmlType::Q4_0 => nibbles(q, &mut o[2..]),
            GgmlType::Q5_0 => {
                [o[2], o[3], o[4], o[5]] = high_bits(q);
                nibbles(q, &mut o[6..]);
            }
            GgmlType::Q4_1 => {
                [o[2], o[3]] = f16_bytes(m);
                nibbles(q, &mut o[4..]);
            }
            GgmlType::Q5_1 => {
                [o[2], o[3]] = f16_bytes(m);
                [o[4], o[5], o[6], o[7]] = high_bits(q);
                nibbles(q, &mut o[8..]);
            }
            // `l - 128` as an i8 is `l` with its top bit flipped.
            _ => {
                for j in 0..32 {
                    o[2 + j] = q[j] ^ 0x80;
                }
            }
        }
    }
    out
}

/// The low four bits of 32 levels in 16 bytes: byte `j` holds level `j` in its low nibble and
/// level `j + 16` in its high nibble.
#[inline(always)]
fn nibbles(q: &[u8; 32], o: &mut [u8]) {
    for j in 0..16 {
        o[j] = (q[j] & 0x0F) | (q[j + 16] & 0x0F) << 4;
    }
}

/// Bit 4 of each of 32 levels, packed into a little-endian u32 (numpy's
/// `packbits(q >> 4, bitorder="little")`).
#[inline(always)]
fn high_bits(q: &[u8; 32]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &l) in q.iter().enumerate() {
        qh |= u32::from((l >> 4) & 1) << j;
    }
    qh.to_le_bytes()
}

// ---------------------------------------------------------------------------------------------
// llama.cpp's k-quant reference quantizers
// ---------------------------------------------------------------------------------------------

/// llama.cpp's `nearest_int`. Adding 1.5 * 2^23 leaves `v` rounded half to even in the low
/// mantissa bits. That is exact for |v| < 2^22. Larger values, infinities and NaN give some
/// value in [-2^22, 2^22), the same one the C gets, which every caller then clamps.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    let shifted = v + 12_582_912.0;
    (shifted.to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// The search of llama.cpp's `make_qkx2_quants` for one group. The candidate inverse scales
/// are `(nmax + rmin + rdelta * step) / (max - min)` for `step` in `0..=steps`. Each candidate's
/// levels get a weighted least-squares scale and offset, and the fit with the least weighted
/// squared (or, with `abs_error`, absolute) error wins.
struct AffineSearch {
    nmax: u8,
    rmin: f32,
    rdelta: f32,
    steps: u8,
    abs_error: bool,
}

/// The settings `quantize_row_q2_K_ref` passes.
const Q2K_SEARCH: AffineSearch = AffineSearch {
    nmax: 3,
    rmin: -0.5,
    rdelta: 0.1,
    steps: 15,
    abs_error: true,
};

/// The settings `quantize_row_q4_K_ref` passes.
const Q4K_SEARCH: AffineSearch = AffineSearch {
    nmax: 15,
    rmin: -1.0,
    rdelta: 0.1,
    steps: 20,
    abs_error: false,
};

/// The settings `quantize_row_q5_K_ref` passes.
const Q5K_SEARCH: AffineSearch = AffineSearch {
    nmax: 31,
    rmin: -0.5,
    rdelta: 0.1,
    steps: 15,
    abs_error: false,
};

/// Fits `x[i] ≈ scale * levels[i] - offset` with levels in `0..=nmax` and `offset >= 0`, by
/// llama.cpp's `make_qkx2_quants` with weights `w`. Returns `(scale, offset)`. The first
/// candidate is the plain range split (minimum clamped to at most 0). It keeps its rounding
/// scale unless a least-squares refit of one of the searched candidates does better. As in
/// the C, the candidates are scanned in order, and each one rounds against the minimum of
/// the best fit so far, so they cannot be evaluated independently.
fn fit_affine<const N: usize>(
    x: &[f32; N],
    w: &[f32; N],
    levels: &mut [u8; N],
    search: &AffineSearch,
) -> (f32, f32) {
    let top = i32::from(search.nmax);
    let nmax = f32::from(search.nmax);
    let error = |diff: f32| {
        if search.abs_error {
            diff.abs()
        } else {
            diff * diff
        }
    };

    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *levels = [0; N];
        return (0.0, -min);
    }

    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, top);
        levels[i] = l as u8;
        best_error += w[i] * error(scale * l as f32 + min - x[i]);
    }

    let mut candidate = [0u8; N];
    for step in 0..=search.steps {
        iscale = (search.rmin + search.rdelta * f32::from(step) + nmax) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..N {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, top);
            candidate[i] = l as u8;
            let l = l as f32;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut this_error = 0.0f32;
            for i in 0..N {
                this_error += w[i] * error(this_scale * f32::from(candidate[i]) + this_min - x[i]);
            }
            if this_error < best_error {
                *levels = candidate;
                best_error = this_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// llama.cpp's `GROUP_MAX_EPS`: groups whose largest magnitude is below it count as zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// The first element of largest magnitude (with its sign) and that magnitude, as llama.cpp's
/// symmetric fits scan for it.
fn largest_magnitude(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    (max, amax)
}

/// Fits `x[i] ≈ scale * (levels[i] - nmax)` with levels in `0..2 * nmax` by llama.cpp's
/// `make_qx_quants` with `rmse_type` 1 (weights `x^2`). It tries the inverse scales
/// `-(nmax + 0.1 * k) / max` for `k` in -9..=9 (`max` being the element of largest
/// magnitude) and keeps the one whose least-squares scale explains the most weighted energy.
/// Returns the scale. For a zero group it returns 0 with every level 0: that is the C's choice,
/// not the midpoint `nmax`.
fn fit_symmetric<const N: usize>(x: &[f32; N], nmax: i32, levels: &mut [u8; N]) -> f32 {
    let (max, amax) = largest_magnitude(x);
    if amax < GROUP_MAX_EPS {
        *levels = [0; N];
        return 0.0;
    }

    let nmaxf = nmax as f32;
    // The sums of (x^2 * x * l, x^2 * l * l) for the levels at inverse scale `iscale`.
    let fit = |iscale: f32, levels: &mut [u8; N]| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for i in 0..N {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            levels[i] = (l + nmax) as u8;
            let w = x[i] * x[i];
            let l = l as f32;
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };

    let (sumlx, suml2) = fit(-nmaxf / max, levels);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut candidate = [0u8; N];
    for k in -9i8..=9 {
        if k == 0 {
            continue;
        }
        let (sumlx, suml2) = fit(-(nmaxf + 0.1 * f32::from(k)) / max, &mut candidate);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            *levels = candidate;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Fits `x[i] ≈ scale * (levels[i] - 4)` with levels in 0..=7 by llama.cpp's
/// `make_q3_quants` with `do_rmse`. After rounding at `-4 / max`, it makes up to five passes
/// moving single levels to their least-squares optimum while that raises the fit.
fn fit_q3(x: &[f32; 16], levels: &mut [u8; 16]) -> f32 {
    const NMAX: i32 = 4;
    let (max, amax) = largest_magnitude(x);
    if amax < GROUP_MAX_EPS {
        *levels = [0; 16];
        return 0.0;
    }
    let iscale = -(NMAX as f32) / max;
    let mut l = [0i32; 16];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..16 {
        l[i] = nearest_int(iscale * x[i]).clamp(-NMAX, NMAX - 1);
        let w = x[i] * x[i];
        sumlx += w * x[i] * l[i] as f32;
        suml2 += w * l[i] as f32 * l[i] as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for i in 0..16 {
            let w = x[i] * x[i];
            let mut slx = sumlx - w * x[i] * l[i] as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l[i] as f32 * l[i] as f32;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-NMAX, NMAX - 1);
                if new_l != l[i] {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (out, l) in levels.iter_mut().zip(l) {
        *out = (l + NMAX) as u8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// Packs 256 two-bit levels as Q2_K and Q3_K store them: element `128*h + 32*s + l` goes to
/// bits `2s..2s+2` of byte `32*h + l`.
#[inline(always)]
fn pack_two_bit(levels: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for h in 0..2 {
        for l in 0..32 {
            let e = 128 * h + l;
            qs[32 * h + l] = (levels[e] & 3)
                | (levels[e + 32] & 3) << 2
                | (levels[e + 64] & 3) << 4
                | (levels[e + 96] & 3) << 6;
        }
    }
}

/// Q2_K (`quantize_row_q2_K_ref`). Each group of 16 gets an affine fit weighted by |x|
/// and judged by absolute error. Group scales and offsets are stored as 4-bit multiples of
/// the largest of each (`d`, `dmin`), then every level is re-rounded against the stored
/// scale. A group whose stored scale is 0 keeps its fitted levels.
fn q2_k(x: &[f32; QK_K], o: &mut [u8; Q2K_BYTES]) {
    const QS: usize = QK_K / 16;
    const D: usize = QS + QK_K / 4;
    let (groups, _) = x.as_chunks::<16>();
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let mut mins = [0.0f32; 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, (g, lv)) in groups
        .iter()
        .zip(levels.as_chunks_mut::<16>().0)
        .enumerate()
    {
        let w = g.map(f32::abs);
        (scales[j], mins[j]) = fit_affine(g, &w, lv, &Q2K_SEARCH);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let mut sc = [0u8; 16];
    let d = if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (s, &scale) in sc.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * scale) as u8;
        }
        f16_bytes(max_scale / 15.0)
    } else {
        f16_bytes(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (s, &min) in sc.iter_mut().zip(&mins) {
            *s |= (nearest_int(iscale * min) << 4) as u8;
        }
        f16_bytes(max_min / 15.0)
    } else {
        f16_bytes(0.0)
    };

    let (df, dminf) = (f16_value(d), f16_value(dmin));
    for (j, (g, lv)) in groups
        .iter()
        .zip(levels.as_chunks_mut::<16>().0)
        .enumerate()
    {
        let dl = df * f32::from(sc[j] & 0x0F);
        if dl == 0.0 {
            continue;
        }
        let ml = dminf * f32::from(sc[j] >> 4);
        for (l, &v) in lv.iter_mut().zip(g) {
            *l = nearest_int((v + ml) / dl).clamp(0, 3) as u8;
        }
    }

    o[..QS].copy_from_slice(&sc);
    let mut qs = [0u8; QK_K / 4];
    pack_two_bit(&levels, &mut qs);
    o[QS..D].copy_from_slice(&qs);
    [o[D], o[D + 1]] = d;
    [o[D + 2], o[D + 3]] = dmin;
}

/// Q3_K (`quantize_row_q3_K_ref`). Each group of 16 gets a symmetric 3-bit fit. The signed
/// group scales are stored as 6-bit multiples of the largest-magnitude one (`d`), and every
/// level is re-rounded against its stored scale. Bit 2 of element `i`'s level goes to bit
/// `i / 32` of `hmask[i % 32]`, the low two bits to the two-bit planes.
fn q3_k(x: &[f32; QK_K], o: &mut [u8; Q3K_BYTES]) {
    const QS: usize = QK_K / 8;
    const SCALES: usize = QS + QK_K / 4;
    const D: usize = SCALES + 12;
    let (groups, _) = x.as_chunks::<16>();
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for (j, (g, lv)) in groups
        .iter()
        .zip(levels.as_chunks_mut::<16>().0)
        .enumerate()
    {
        scales[j] = fit_q3(g, lv);
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }

    // Stored scales, biased by 32 into 0..=63. They are left at 32 (a scale of 0) when the
    // block is zero; the C reads back -32 there instead, but d is 0 either way.
    let mut stored = [32u8; 16];
    let mut packed = [0u8; 12];
    // C's `if (max_scale)`, which NaN passes.
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (j, (s, &scale)) in stored.iter_mut().zip(&scales).enumerate() {
            // The C stores the rounded value in an int8_t before clamping it.
            let l = i32::from(nearest_int(iscale * scale) as i8);
            *s = (l.clamp(-32, 31) + 32) as u8;
            if j < 8 {
                packed[j] = *s & 0x0F;
            } else {
                packed[j - 8] |= (*s & 0x0F) << 4;
            }
            packed[8 + j % 4] |= (*s >> 4) << (2 * (j / 4));
        }
        f16_bytes(1.0 / iscale)
    } else {
        f16_bytes(0.0)
    };

    let df = f16_value(d);
    for (j, (g, lv)) in groups
        .iter()
        .zip(levels.as_chunks_mut::<16>().0)
        .enumerate()
    {
        let dl = df * (i32::from(stored[j]) - 32) as f32;
        if dl == 0.0 {
            continue;
        }
        for (l, &v) in lv.iter_mut().zip(g) {
            *l = (nearest_int(v / dl).clamp(-4, 3) + 4) as u8;
        }
    }

    let mut hmask = [0u8; QK_K / 8];
    for (i, l) in levels.iter_mut().enumerate() {
        if *l > 3 {
            hmask[i % 32] |= 1 << (i / 32);
            *l -= 4;
        }
    }
    let mut qs = [0u8; QK_K / 4];
    pack_two_bit(&levels, &mut qs);
    o[..QS].copy_from_slice(&hmask);
    o[QS..SCALES].copy_from_slice(&qs);
    o[SCALES..D].copy_from_slice(&packed);
    [o[D], o[D + 1]] = d;
}

/// The part Q4_K and Q5_K share (`quantize_row_q4_K_ref` / `q5_K_ref`). Each group of 32
/// gets an affine fit weighted by `rms(group) + |x|`. Scales and offsets are stored as 6-bit
/// multiples of the largest of each (`d`, `dmin`), and every level is re-rounded against the
/// stored values (a group whose stored scale is 0 keeps its fitted levels). Returns the
/// first 16 bytes of the block (`d`, `dmin`, the 12 packed scale bytes) and the levels.
fn k_affine(x: &[f32; QK_K], search: &AffineSearch) -> ([u8; 16], [u8; QK_K]) {
    let (groups, _) = x.as_chunks::<32>();
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (j, (g, lv)) in groups
        .iter()
        .zip(levels.as_chunks_mut::<32>().0)
        .enumerate()
    {
        let mut sum_x2 = 0.0f32;
        for &v in g {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let w = g.map(|v| av_x + v.abs());
        (scales[j], mins[j]) = fit_affine(g, &w, lv, search);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // The C stores the rounded values in a uint8_t before taking the min with 63.
    let ls = scales.map(|s| (nearest_int(inv_scale * s) as u8).min(63));
    let lm = mins.map(|m| (nearest_int(inv_min * m) as u8).min(63));

    let mut head = [0u8; 16];
    let d = f16_bytes(max_scale / 63.0);
    let dmin = f16_bytes(max_min / 63.0);
    [head[0], head[1]] = d;
    [head[2], head[3]] = dmin;
    // Scales and offsets 0..4 fill bytes 0..4 and 4..8. For 4..8, the low nibbles share
    // bytes 8..12 and the top two bits go to the top of bytes 0..8 (ggml's
    // `get_scale_min_k4`, inverted).
    let s = &mut head[4..];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0F) | (lm[j] & 0x0F) << 4;
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }

    // Re-round against the stored values. The C unpacks them again, which gives `ls`/`lm` back.
    let top = i32::from(search.nmax);
    let (df, dminf) = (f16_value(d), f16_value(dmin));
    for (j, (g, lv)) in groups
        .iter()
        .zip(levels.as_chunks_mut::<32>().0)
        .enumerate()
    {
        let dl = df * f32::from(ls[j]);
        if dl == 0.0 {
            continue;
        }
        let ml = dminf * f32::from(lm[j]);
        for (l, &v) in lv.iter_mut().zip(g) {
            *l = nearest_int((v + ml) / dl).clamp(0, top) as u8;
        }
    }
    (head, levels)
}

/// Q4_K: [`k_affine`] with 4-bit levels. Groups `2c` and `2c + 1` are the low and high nibbles
/// of bytes `32c..32c + 32`.
fn q4_k(x: &[f32; QK_K], o: &mut [u8; Q4K_BYTES]) {
    let (head, levels) = k_affine(x, &Q4K_SEARCH);
    o[..16].copy_from_slice(&head);
    for c in 0..4 {
        for l in 0..32 {
            o[16 + 32 * c + l] = levels[64 * c + l] | levels[64 * c + 32 + l] << 4;
        }
    }
}

/// Q5_K: [`k_affine`] with 5-bit levels. Low nibbles are laid out as in Q4_K, and the fifth
/// bit of group `j`'s element `l` is bit `j` of `qh[l]`.
fn q5_k(x: &[f32; QK_K], o: &mut [u8; Q5K_BYTES]) {
    const QH: usize = 16;
    const QS: usize = QH + QK_K / 8;
    let (head, levels) = k_affine(x, &Q5K_SEARCH);
    o[..QH].copy_from_slice(&head);
    let mut qh = [0u8; 32];
    for c in 0..4 {
        for l in 0..32 {
            let lo = levels[64 * c + l];
            let hi = levels[64 * c + 32 + l];
            o[QS + 32 * c + l] = (lo & 0x0F) | (hi & 0x0F) << 4;
            qh[l] |= (lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1);
        }
    }
    o[QH..QS].copy_from_slice(&qh);
}

/// Q6_K (`quantize_row_q6_K_ref`). Each group of 16 gets a symmetric 6-bit fit. The signed
/// group scales are stored as 8-bit multiples of `d = max_scale / -128` (largest magnitude),
/// and every level is re-rounded against its stored scale. Element `128*h + r` puts its low
/// nibble in `ql[64*h + r % 64]` (nibble `r / 64`) and its top two bits in
/// `qh[32*h + r % 32]` (pair `r / 32`). An all-zero block is all zero bytes.
fn q6_k(x: &[f32; QK_K], o: &mut [u8; Q6K_BYTES]) {
    const QH: usize = QK_K / 2;
    const SCALES: usize = QH + QK_K / 4;
    const D: usize = SCALES + QK_K / 16;
    let (groups, _) = x.as_chunks::<16>();
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for (j, (g, lv)) in groups
        .iter()
        .zip(levels.as_chunks_mut::<16>().0)
        .enumerate()
    {
        scales[j] = fit_symmetric(g, 32, lv);
        if scales[j].abs() > max_abs_scale {
            max_abs_scale = scales[j].abs();
            max_scale = scales[j];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *o = [0; Q6K_BYTES];
        return;
    }

    let iscale = -128.0 / max_scale;
    let d = f16_bytes(1.0 / iscale);
    // The C takes the min with 127 in int, then stores the result in an int8_t.
    let sc = scales.map(|s| nearest_int(iscale * s).min(127) as i8);
    let df = f16_value(d);
    for (j, (g, lv)) in groups
        .iter()
        .zip(levels.as_chunks_mut::<16>().0)
        .enumerate()
    {
        let dl = df * f32::from(sc[j]);
        if dl == 0.0 {
            continue;
        }
        for (l, &v) in lv.iter_mut().zip(g) {
            *l = (nearest_int(v / dl).clamp(-32, 31) + 32) as u8;
        }
    }

    for h in 0..2 {
        for l in 0..32 {
            let e = 128 * h + l;
            let [q1, q2, q3, q4] = [levels[e], levels[e + 32], levels[e + 64], levels[e + 96]];
            o[64 * h + l] = (q1 & 0x0F) | (q3 & 0x0F) << 4;
            o[64 * h + l + 32] = (q2 & 0x0F) | (q4 & 0x0F) << 4;
            o[QH + 32 * h + l] =
                (q1 >> 4) & 3 | ((q2 >> 4) & 3) << 2 | ((q3 >> 4) & 3) << 4 | ((q4 >> 4) & 3) << 6;
        }
    }
    for (b, s) in o[SCALES..D].iter_mut().zip(sc) {
        *b = s as u8;
    }
    [o[D], o[D + 1]] = d;
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::super::{GgufFile, dequantize, fixture_path};
    use super::*;

    /// The types whose bytes are gguf-py's, and the k-quants.
    const GGUF_PY: [GgmlType; 8] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ];
    const K_QUANTS: [GgmlType; 5] = [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    fn all_types() -> impl Iterator<Item = GgmlType> {
        GGUF_PY.into_iter().chain(K_QUANTS)
    }

    /// `types.gguf`, read once for all tests.
    fn fixture() -> &'static [u8] {
        static FILE: OnceLock<Vec<u8>> = OnceLock::new();
        FILE.get_or_init(|| {
            let path = fixture_path("quant/types.gguf");
            std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (set REFUSAL_FIXTURES to the fixtures dir)",
                    path.display()
                )
            })
        })
    }

    /// The stored type and raw bytes of fixture tensor `name`.
    fn fixture_tensor(name: &str) -> (GgmlType, &'static [u8]) {
        let bytes = fixture();
        let file = GgufFile::parse(bytes).expect("fixture parses");
        let info = file.tensor(name).expect("fixture tensor");
        let data = file.tensor_bytes(bytes, info).expect("tensor bytes");
        (info.ggml_type, data)
    }

    /// The fixture's 8x256 input, which gguf-py quantized into `t.f16` ... `t.q5_1`.
    fn fixture_input() -> Vec<f32> {
        let (ty, data) = fixture_tensor("t.f32");
        assert_eq!(ty, GgmlType::F32);
        data.as_chunks::<4>()
            .0
            .iter()
            .map(|b| f32::from_le_bytes(*b))
            .collect()
    }

    /// Quantizes the fixture input as `ty` and compares it byte for byte with gguf-py's
    /// tensor of that type, naming the first block that differs.
    fn check_fixture(ty: GgmlType) {
        let (stored, expected) = fixture_tensor(&format!("t.{}", ty.name().to_lowercase()));
        assert_eq!(stored, ty);
        let got = quantize(ty, &fixture_input()).expect("quantize");
        assert_eq!(got.len(), expected.len(), "{ty}: byte count");
        let size = ty.type_size();
        let differing: Vec<usize> = (0..got.len() / size)
            .filter(|&b| got[b * size..(b + 1) * size] != expected[b * size..(b + 1) * size])
            .collect();
        if let Some(&b) = differing.first() {
            let bytes = b * size..(b + 1) * size;
            panic!(
                "{ty}: {} of {} blocks differ from gguf-py; the first is block {b} \
                 (elements {}..{}): ours {:02x?}, gguf-py {:02x?}",
                differing.len(),
                got.len() / size,
                b * ty.block_size(),
                (b + 1) * ty.block_size(),
                &got[bytes.clone()],
                &expected[bytes],
            );
        }
    }

    macro_rules! fixture_tests {
        ($($test:ident => $ty:expr,)*) => {
            $(
                #[test]
                fn $test() {
                    check_fixture($ty);
                }
            )*
        };
    }

    fixture_tests! {
        fixture_f32_is_gguf_py_bytes => GgmlType::F32,
        fixture_f16_is_gguf_py_bytes => GgmlType::F16,
        fixture_bf16_is_gguf_py_bytes => GgmlType::BF16,
        fixture_q8_0_is_gguf_py_bytes => GgmlType::Q8_0,
        fixture_q4_0_is_gguf_py_bytes => GgmlType::Q4_0,
        fixture_q4_1_is_gguf_py_bytes => GgmlType::Q4_1,
        fixture_q5_0_is_gguf_py_bytes => GgmlType::Q5_0,
        fixture_q5_1_is_gguf_py_bytes => GgmlType::Q5_1,
    }

    /// xorshift64*, so the inputs do not depend on `rand`'s algorithms.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Uniform in [0, 1).
        fn uniform(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u32 << 24) as f32
        }

        /// Roughly standard normal: a sum of four uniforms, scaled to variance 1.
        fn normal(&mut self) -> f32 {
            let s = self.uniform() + self.uniform() + self.uniform() + self.uniform();
            (s - 2.0) * 3f32.sqrt()
        }
    }

    /// One set of test values: whether it is centred on zero, which is what the error
    /// bounds relative to the block's range assume.
    struct Input {
        name: &'static str,
        centred: bool,
        values: Vec<f32>,
    }

    /// The fixture plus 128 k-quant blocks each of weight-like, heavy-tailed, sparse and
    /// offset values.
    fn inputs() -> Vec<Input> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let n = 128 * QK_K;
        let mut gen_input = |name, centred, f: &mut dyn FnMut(&mut Rng) -> f32| Input {
            name,
            centred,
            values: (0..n).map(|_| f(&mut rng)).collect(),
        };
        vec![
            Input {
                name: "fixture",
                centred: true,
                values: fixture_input(),
            },
            gen_input("weights", true, &mut |r| r.normal() * 0.02),
            gen_input("heavy tails", true, &mut |r| {
                let v = r.normal() * 0.02;
                if r.uniform() < 0.01 { v * 30.0 } else { v }
            }),
            gen_input("sparse", true, &mut |r| {
                if r.uniform() < 0.9 { 0.0 } else { r.normal() }
            }),
            gen_input("in [3, 4)", false, &mut |r| 3.0 + r.uniform()),
            gen_input("in (-4, -3]", false, &mut |r| -3.0 - r.uniform()),
        ]
    }

    /// Largest magnitude, minimum and range of a block.
    fn stats(x: &[f32]) -> (f32, f32, f32) {
        let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (amax, min, max - min)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    fn round_trip(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let q = quantize(ty, x).expect("quantize");
        let y = dequantize(ty, &q, x.len()).expect("dequantize");
        (q, y)
    }

    /// The gguf-py types stay within their analytic error per 32-element block, which also
    /// pins their layout against the dequantizer: a misplaced nibble or bit would be off by
    /// several steps.
    #[test]
    fn gguf_py_types_round_trip_within_half_a_step() {
        // f16 rounding of a stored scale or minimum: half an ulp, 2^-11 relative.
        const F16_REL: f32 = 1.0 / 2048.0;
        for input in inputs() {
            for ty in GGUF_PY {
                let (_, y) = round_trip(ty, &input.values);
                for (x, y) in input.values.chunks(32).zip(y.chunks(32)) {
                    let (amax, min, range) = stats(x);
                    let bound = match ty {
                        GgmlType::F32 => 0.0,
                        // Half an ulp, or half the smallest subnormal.
                        GgmlType::F16 => amax * F16_REL + 2f32.powi(-25),
                        GgmlType::BF16 => amax / 256.0,
                        // Half a step of max/127, plus the scale's rounding over 127 steps.
                        GgmlType::Q8_0 => amax * (0.5 + 127.0 * F16_REL) / 127.0,
                        // The levels reach 8 steps towards the largest magnitude but only 7
                        // the other way, so the far end of the other sign is a full step off.
                        GgmlType::Q4_0 => amax * (1.0 / 8.0 + F16_REL),
                        GgmlType::Q5_0 => amax * (1.0 / 16.0 + F16_REL),
                        // Half a step of range/15 (range/31), plus the rounding of d and m.
                        GgmlType::Q4_1 => {
                            range / 30.0 * (1.0 + 30.0 * F16_REL) + min.abs() * F16_REL
                        }
                        GgmlType::Q5_1 => {
                            range / 62.0 * (1.0 + 62.0 * F16_REL) + min.abs() * F16_REL
                        }
                        _ => unreachable!(),
                    };
                    // Slack for the f32 rounding of the reconstruction itself.
                    let bound = bound * 1.0001 + amax * 1e-6;
                    let err = max_diff(x, y);
                    assert!(
                        err <= bound,
                        "{ty} on {}: error {err} > bound {bound} in block {x:?}",
                        input.name
                    );
                }
            }
        }
    }

    /// For the gguf-py types, quantizing the dequantized values again reproduces every value.
    /// Bytes can differ only in the sign of a zero scale: an all-zero block stores
    /// d = -0.0 (0 / -8), whose dequantized -0.0 then stores d = +0.0.
    #[test]
    fn requantizing_gguf_py_types_keeps_every_value() {
        for input in inputs() {
            for ty in GGUF_PY {
                let (_, y) = round_trip(ty, &input.values);
                let (_, y2) = round_trip(ty, &y);
                let moved = y.iter().zip(&y2).filter(|(a, b)| a != b).count();
                assert_eq!(moved, 0, "{ty} on {}: values moved", input.name);
            }
        }
    }

    /// The measured k-quant round-trip error per 256-element block: the largest error over
    /// every input relative to the block's largest magnitude, and over the zero-centred
    /// inputs relative to the block's range (the offset inputs cannot use the range, because
    /// k-quants only subtract minimums and so always span zero). The bounds are the measured
    /// worst cases rounded up by about 10%.
    #[test]
    fn k_quants_round_trip_within_measured_bounds() {
        // (type, bound / max|x|, bound / range for centred inputs)
        let bounds = [
            (GgmlType::Q2K, 0.55, 0.29),
            (GgmlType::Q3K, 0.21, 0.128),
            (GgmlType::Q4K, 0.083, 0.044),
            (GgmlType::Q5K, 0.042, 0.024),
            (GgmlType::Q6K, 0.023, 0.0165),
        ];
        let inputs = inputs();
        for (ty, per_amax, per_range) in bounds {
            let (mut worst_amax, mut worst_range) = (0.0f32, 0.0f32);
            for input in &inputs {
                let (_, y) = round_trip(ty, &input.values);
                for (x, y) in input.values.chunks(QK_K).zip(y.chunks(QK_K)) {
                    let (amax, _, range) = stats(x);
                    let err = max_diff(x, y);
                    worst_amax = worst_amax.max(err / amax);
                    if input.centred {
                        worst_range = worst_range.max(err / range);
                    }
                }
            }
            eprintln!("{ty}: max error {worst_amax:.4} of max|x|, {worst_range:.4} of range");
            assert!(worst_amax <= per_amax, "{ty}: {worst_amax} of max|x|");
            assert!(worst_range <= per_range, "{ty}: {worst_range} of range");
        }
    }

    /// Quantizing dequantized k-quant values again is not exactly idempotent: llama.cpp's
    /// search sees values already on a grid, with the weights and candidate scales moved,
    /// and can settle on a nearby encoding. The measured result: re-quantization moves a
    /// value by at most a fraction of one step, and most weight-like blocks come back
    /// byte-identical.
    #[test]
    fn requantizing_k_quants_is_nearly_idempotent() {
        // (type, measured largest shift / max|x| rounded up, measured share of
        // byte-identical blocks on the weight-like input rounded down)
        let bounds = [
            (GgmlType::Q2K, 0.20, 0.99),
            (GgmlType::Q3K, 0.245, 0.50),
            (GgmlType::Q4K, 0.027, 0.99),
            (GgmlType::Q5K, 0.030, 0.94),
            (GgmlType::Q6K, 0.0048, 0.78),
        ];
        let inputs = inputs();
        let measured = bounds.map(|(ty, _, _)| {
            let (mut shift, mut identical) = (0.0f32, 0.0f32);
            for input in &inputs {
                let (q, y) = round_trip(ty, &input.values);
                let (q2, y2) = round_trip(ty, &y);
                let blocks = input
                    .values
                    .chunks(QK_K)
                    .zip(y.chunks(QK_K).zip(y2.chunks(QK_K)));
                for (x, (a, b)) in blocks {
                    shift = shift.max(max_diff(a, b) / stats(x).0);
                }
                if input.name == "weights" {
                    let size = ty.type_size();
                    let same = q.chunks(size).zip(q2.chunks(size)).filter(|(a, b)| a == b);
                    identical = same.count() as f32 / (q.len() / size) as f32;
                }
            }
            eprintln!(
                "{ty}: values move by up to {shift:.4} of max|x|; \
                 {identical:.3} of weight blocks identical"
            );
            (shift, identical)
        });
        for ((ty, max_shift, min_identical), (shift, identical)) in bounds.into_iter().zip(measured)
        {
            assert!(
                shift <= max_shift,
                "{ty}: values moved by {shift} of max|x|"
            );
            assert!(
                identical >= min_identical,
                "{ty}: only {identical} of blocks identical"
            );
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// An all-zero block: gguf-py's bytes (checked with gguf-py), which for Q4_0/Q5_0 store
    /// d = -0.0 with every level at the midpoint. The k-quants store all zero bytes.
    #[test]
    fn zero_blocks() {
        let zeros = [0.0f32; QK_K];
        let expected = [
            (GgmlType::Q8_0, format!("0000{}", "00".repeat(32))),
            (GgmlType::Q4_0, format!("0080{}", "88".repeat(16))),
            (GgmlType::Q4_1, "00".repeat(20)),
            (GgmlType::Q5_0, format!("0080ffffffff{}", "00".repeat(16))),
            (GgmlType::Q5_1, "00".repeat(24)),
        ];
        for (ty, bytes) in expected {
            let got = quantize(ty, &zeros[..32]).expect("quantize");
            assert_eq!(got, hex(&bytes), "{ty}");
        }
        for ty in all_types() {
            let (q, y) = round_trip(ty, &zeros);
            if K_QUANTS.contains(&ty)
                || matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
            {
                assert!(q.iter().all(|&b| b == 0), "{ty}: {q:02x?}");
            }
            assert!(y.iter().all(|&v| v == 0.0), "{ty}");
        }
    }

    /// With two elements of the largest magnitude, the first sets the sign of the scale
    /// (numpy's `argmax`), which decides which of the two is represented exactly.
    #[test]
    fn ties_pick_the_first_largest_magnitude() {
        let mut x: [f32; 32] = std::array::from_fn(|i| i as f32 / 31.0 * 2.0 - 1.0);
        for (first, q4_0, q5_0) in [(3.0, "00b6", "00b2"), (-3.0, "0036", "0032")] {
            x[5] = first;
            x[9] = -first;
            for (ty, d) in [(GgmlType::Q4_0, q4_0), (GgmlType::Q5_0, q5_0)] {
                let (q, y) = round_trip(ty, &x);
                assert_eq!(q[..2], hex(d), "{ty} with {first} first");
                assert_eq!(y[5], first, "{ty}");
                assert_ne!(y[9], -first, "{ty}");
            }
        }
    }

    /// Q8_0 rounds half away from zero (gguf-py's `np_roundf`, llama.cpp's `roundf`), not
    /// to even; the bytes are gguf-py's.
    #[test]
    fn q8_0_rounds_half_away_from_zero() {
        let mut x = [0.0f32; 32];
        // 127 makes d exactly 1.
        x[..6].copy_from_slice(&[127.0, 2.5, -2.5, 0.5, -0.5, 1.5]);
        let expected = format!("003c7f03fd01ff02{}", "00".repeat(26));
        assert_eq!(quantize(GgmlType::Q8_0, &x).expect("q8_0"), hex(&expected));
    }

    /// One element far larger than the rest, of either sign: it sets the scale and comes back
    /// within the type's step, so a negative maximum is handled like a positive one.
    #[test]
    fn one_huge_value_of_either_sign() {
        let mut rng = Rng(7);
        for huge in [1e4f32, -1e4, 2.0, -2.0] {
            let mut x: Vec<f32> = (0..QK_K).map(|_| rng.normal() * 0.01).collect();
            x[100] = huge;
            for ty in all_types() {
                let (_, y) = round_trip(ty, &x);
                let rel = (y[100] - huge).abs() / huge.abs();
                // The largest value is on the grid for the symmetric types and within a
                // fraction of a step for the others.
                let bound = match ty {
                    GgmlType::F16 | GgmlType::BF16 => 1.0 / 256.0,
                    GgmlType::Q2K => 0.2,
                    GgmlType::Q3K => 0.1,
                    _ => 0.02,
                };
                assert!(rel <= bound, "{ty} with {huge}: got {} (rel {rel})", y[100]);
            }
            // Q4_0 / Q5_0 put the largest magnitude on level 0, exactly -8 d (-16 d).
            for ty in [GgmlType::Q4_0, GgmlType::Q5_0] {
                let (_, y) = round_trip(ty, &x[96..128]);
                assert_eq!(y[4], huge, "{ty}");
            }
        }
    }

    /// Non-finite input: no panic, the documented (gguf-py on x86-64) bytes for a NaN block,
    /// and the next block is encoded exactly as it would be alone.
    #[test]
    fn non_finite_values_stay_in_their_block() {
        let mut rng = Rng(11);
        let good: Vec<f32> = (0..QK_K).map(|_| rng.normal()).collect();
        let specials = [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
        ];
        for ty in all_types() {
            let block = ty.block_size().max(32);
            let alone = quantize(ty, &good[..block]).expect("good block");
            for special in specials {
                let mut x = good[..block].to_vec();
                x[3] = special;
                // A block of all-special values too, for the reductions' corner cases.
                let all_special = vec![special; block];
                for bad in [x, all_special] {
                    let mut input = bad;
                    input.extend_from_slice(&good[..block]);
                    let q = quantize(ty, &input).expect("quantize");
                    let half = q.len() / 2;
                    assert_eq!(q[half..], alone, "{ty} after {special}");
                    dequantize(ty, &q, input.len()).expect("dequantize");
                }
            }
        }
        // gguf-py's bytes for a zero block holding one NaN: a NaN scale, levels cast to 0.
        let mut x = [0.0f32; 32];
        x[3] = f32::NAN;
        for (ty, bytes) in [
            (GgmlType::Q8_0, format!("007e{}", "00".repeat(32))),
            (GgmlType::Q4_0, format!("007e{}", "00".repeat(16))),
            (GgmlType::Q4_1, format!("007e007e{}", "00".repeat(16))),
            (GgmlType::Q5_0, format!("007e{}", "00".repeat(20))),
            (GgmlType::Q5_1, format!("007e007e{}", "00".repeat(20))),
        ] {
            assert_eq!(quantize(ty, &x).expect("quantize"), hex(&bytes), "{ty}");
        }
    }

    /// F16 and BF16 rounding and NaN rules, against numpy's and gguf-py's bytes.
    #[test]
    fn f16_and_bf16_special_values() {
        let f16_of = |v: f32| u16::from_le_bytes(f16_bytes(v));
        let cases = [
            (65519.0, 0x7BFF),
            (65520.0, 0x7C00),
            (-65520.0, 0xFC00),
            (1e-8, 0x0000),
            (6e-8, 0x0001),
            (f32::from_bits(0x7F80_0001), 0x7C01),
            (f32::from_bits(0xFFC0_0001), 0xFE00),
            (f32::from_bits(0x7FA0_0000), 0x7D00),
        ];
        for (v, bits) in cases {
            assert_eq!(f16_of(v), bits, "f16 of {:#010x}", v.to_bits());
        }
        let bf16 = [
            (1.0 + 2f32.powi(-8), 0x3F80),
            (1.0 + 3.0 * 2f32.powi(-8), 0x3F82),
            (f32::MAX, 0x7F80),
            (f32::from_bits(0x7F80_0001), 0x7FC0),
            (f32::from_bits(0xFF80_0001), 0xFFC0),
            (f32::from_bits(0x7FFF_FFFF), 0x7FFF),
        ];
        for (v, bits) in bf16 {
            let got = quantize(GgmlType::BF16, &[v]).expect("bf16");
            assert_eq!(got, u16::to_le_bytes(bits), "bf16 of {:#010x}", v.to_bits());
        }
    }

    #[test]
    fn rejects_partial_blocks_naming_type_and_length() {
        for ty in all_types() {
            let block = ty.block_size();
            assert!(quantize(ty, &[]).expect("empty").is_empty());
            let q = quantize(ty, &vec![0.5; 2 * block]).expect("two blocks");
            assert_eq!(q.len(), 2 * ty.type_size());
            if block > 1 {
                let err = quantize(ty, &vec![0.5; block + 1]).expect_err("partial block");
                assert!(
                    matches!(
                        err,
                        GgufError::NotBlockMultiple { ty: name, n_elements, block_size }
                            if name == ty.name() && n_elements == block as u64 + 1
                                && block_size == block as u64
                    ),
                    "{ty}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn fits_rows_checks_the_block_size() {
        assert!(fits_rows(GgmlType::Q4K, 4864));
        assert!(!fits_rows(GgmlType::Q4K, 896));
        assert!(fits_rows(GgmlType::Q4_0, 896));
        assert!(!fits_rows(GgmlType::Q8_0, 33));
        assert!(fits_rows(GgmlType::F16, 33));
        assert!(fits_rows(GgmlType::Q6K, 0));
    }

    #[test]
    fn packed_levels_dequantize_to_their_grid_values() {
        // (type, top level, offset, affine)
        for (ty, top, offset, affine) in [
            (GgmlType::Q4_0, 15u8, 8.0f32, false),
            (GgmlType::Q5_0, 31, 16.0, false),
            (GgmlType::Q8_0, 255, 128.0, false),
            (GgmlType::Q4_1, 15, 0.0, true),
            (GgmlType::Q5_1, 31, 0.0, true),
        ] {
            // Scales and offsets that f16 holds exactly, so the values are exact.
            let scales: Vec<(f32, f32)> = (0..3)
                .map(|b| {
                    (
                        0.25 * (b + 1) as f32,
                        if affine { -1.5 * b as f32 } else { 0.0 },
                    )
                })
                .collect();
            let levels: Vec<u8> = (0..96)
                .map(|i| ((i * 37 + 11) % (usize::from(top) + 1)) as u8)
                .collect();
            let bytes = pack_levels(ty, &scales, &levels);
            assert_eq!(bytes.len(), 3 * ty.type_size());
            let got = dequantize(ty, &bytes, 96).unwrap();
            for (i, (&g, &l)) in got.iter().zip(&levels).enumerate() {
                let (d, m) = scales[i / 32];
                assert_eq!(g, d * (f32::from(l) - offset) + m, "{ty} element {i}");
            }
        }
    }

    /// The speed requirement: a 4864x896 matrix in well under a second per type. Timing
    /// depends on the machine and its load, so this runs on request:
    /// `cargo test -p refusal-core --lib quantize::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn speed_of_a_4864x896_matrix() {
        let mut rng = Rng(5);
        let x: Vec<f32> = (0..4864 * 896).map(|_| rng.normal() * 0.02).collect();
        for ty in all_types() {
            let start = std::time::Instant::now();
            let q = quantize(ty, &x).expect("quantize");
            let elapsed = start.elapsed();
            eprintln!("{ty}: {elapsed:?} ({} bytes)", q.len());
            assert!(elapsed.as_secs_f32() < 1.0, "{ty}: {elapsed:?}");
        }
    }
}
