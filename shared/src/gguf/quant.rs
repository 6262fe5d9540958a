//! GGML tensor types and their dequantization to `f32`.
//!
//! Results are bit-identical to gguf-py's `dequantize` (numpy, float32), with no ulp
//! allowance: every value is computed with the same float operations in the same order (for
//! example Q4_K's `(d * sc) * q - (dmin * m)`). Rust never fuses `a * b - c` into an FMA on its
//! own, so the subtraction rounds separately exactly like numpy's does. (Most of the products,
//! an f16 scale times small integers, are exact in f32 anyway; Q6_K's three-factor product is
//! the one where the grouping could change the last bit.)
//!
//! Block layouts follow ggml's `block_*` structs; every block is read from a fixed-size
//! array (`as_chunks`), so all indices are compile-time bounded and no input can panic.
//! The per-block kernels are `#[inline(always)]` because inlining them into the block loop
//! measured about 1.5x faster.

use std::fmt;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::GgufError;

/// Elements per block of the k-quants (ggml's `QK_K`).
pub(super) const QK_K: usize = 256;

/// The GGML tensor types this reader can dequantize.
///
/// Other ids in a file (IQ*, Q8_1, integer types, ...) are reported as
/// [`GgufError::UnknownTensorType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GgmlType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the upper half of a binary32).
    BF16,
    /// 32 elements: f16 scale, 4-bit values offset by 8.
    Q4_0,
    /// 32 elements: f16 scale and minimum, 4-bit values.
    Q4_1,
    /// 32 elements: f16 scale, 5-bit values offset by 16.
    Q5_0,
    /// 32 elements: f16 scale and minimum, 5-bit values.
    Q5_1,
    /// 32 elements: f16 scale, 8-bit signed values.
    Q8_0,
    /// 256 elements in 16 groups with 4-bit scales and minimums, 2-bit values.
    Q2K,
    /// 256 elements in 16 groups with 6-bit signed scales, 3-bit values.
    Q3K,
    /// 256 elements in 8 groups with 6-bit scales and minimums, 4-bit values.
    Q4K,
    /// 256 elements in 8 groups with 6-bit scales and minimums, 5-bit values.
    Q5K,
    /// 256 elements in 16 groups with 8-bit signed scales, 6-bit values.
    Q6K,
}

impl GgmlType {
    /// The type for a GGML type id as stored in a GGUF tensor info, if supported.
    pub const fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// The GGML type id (`enum ggml_type`).
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// Elements per block (1 for the float types).
    pub const fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => Q4_0_BYTES,
            GgmlType::Q4_1 => Q4_1_BYTES,
            GgmlType::Q5_0 => Q5_0_BYTES,
            GgmlType::Q5_1 => Q5_1_BYTES,
            GgmlType::Q8_0 => Q8_0_BYTES,
            GgmlType::Q2K => Q2K_BYTES,
            GgmlType::Q3K => Q3K_BYTES,
            GgmlType::Q4K => Q4K_BYTES,
            GgmlType::Q5K => Q5K_BYTES,
            GgmlType::Q6K => Q6K_BYTES,
        }
    }

    /// Storage cost per value, scales included (Q4_0: 4.5).
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }

    /// The name gguf-py and llama.cpp use (`"Q4_K"`, `"BF16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// Block sizes in bytes, from ggml's block structs.
pub(super) const Q4_0_BYTES: usize = 2 + 16;
pub(super) const Q4_1_BYTES: usize = 2 + 2 + 16;
pub(super) const Q5_0_BYTES: usize = 2 + 4 + 16;
pub(super) const Q5_1_BYTES: usize = 2 + 2 + 4 + 16;
pub(super) const Q8_0_BYTES: usize = 2 + 32;
pub(super) const Q2K_BYTES: usize = QK_K / 16 + QK_K / 4 + 2 + 2;
pub(super) const Q3K_BYTES: usize = QK_K / 8 + QK_K / 4 + 12 + 2;
pub(super) const Q4K_BYTES: usize = 2 + 2 + 12 + QK_K / 2;
pub(super) const Q5K_BYTES: usize = 2 + 2 + 12 + QK_K / 8 + QK_K / 2;
pub(super) const Q6K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

/// Dequantizes `n_elements` values of type `ty` from `data`, which must hold exactly that many.
///
/// Sizes are checked before the output is allocated, so a hostile `n_elements` cannot force a
/// large allocation.
///
/// # Errors
///
/// [`GgufError::NotBlockMultiple`] if `n_elements` is not a whole number of blocks,
/// [`GgufError::DataSizeMismatch`] if `data` does not hold exactly that many blocks.
pub fn dequantize(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>, GgufError> {
    check_sizes(ty, data.len(), n_elements)?;
    let mut out = vec![0.0f32; n_elements];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

/// Dequantizes `data` of type `ty` into `out`; `data` must hold exactly `out.len()` values.
///
/// Values come out in storage order, which is gguf-py's row-major order.
///
/// # Errors
///
/// As [`dequantize`], with `out.len()` as the element count.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    check_sizes(ty, data.len(), out.len())?;
    match ty {
        GgmlType::F32 => blocks(data, out, |b: &[u8; 4], o: &mut [f32; 1]| {
            o[0] = f32::from_le_bytes(*b);
        }),
        GgmlType::F16 => f16_to_f32(data, out),
        GgmlType::BF16 => blocks(data, out, |b: &[u8; 2], o: &mut [f32; 1]| {
            o[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16);
        }),
        GgmlType::Q4_0 => blocks(data, out, q4_0),
        GgmlType::Q4_1 => blocks(data, out, q4_1),
        GgmlType::Q5_0 => blocks(data, out, q5_0),
        GgmlType::Q5_1 => blocks(data, out, q5_1),
        GgmlType::Q8_0 => blocks(data, out, q8_0),
        GgmlType::Q2K => blocks(data, out, q2_k),
        GgmlType::Q3K => blocks(data, out, q3_k),
        GgmlType::Q4K => blocks(data, out, q4_k),
        GgmlType::Q5K => blocks(data, out, q5_k),
        GgmlType::Q6K => blocks(data, out, q6_k),
    }
    Ok(())
}

/// That `data_len` bytes of `ty` hold exactly `n_elements` values in whole blocks.
pub(crate) fn check_sizes(
    ty: GgmlType,
    data_len: usize,
    n_elements: usize,
) -> Result<(), GgufError> {
    let block_size = ty.block_size();
    if !n_elements.is_multiple_of(block_size) {
        return Err(GgufError::NotBlockMultiple {
            ty: ty.name(),
            n_elements: n_elements as u64,
            block_size: block_size as u64,
        });
    }
    let expected = (n_elements / block_size) as u128 * ty.type_size() as u128;
    if expected != data_len as u128 {
        return Err(GgufError::DataSizeMismatch {
            ty: ty.name(),
            n_elements: n_elements as u64,
            expected: u64::try_from(expected).unwrap_or(u64::MAX),
            actual: data_len as u64,
        });
    }
    Ok(())
}

/// Runs `f` over every (input block, output block) pair. Callers have checked that the sizes
/// match, so no remainder is left over.
#[inline(always)]
fn blocks<const IN: usize, const OUT: usize>(
    data: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; IN], &mut [f32; OUT]),
) {
    let (inputs, _) = data.as_chunks::<IN>();
    let (outputs, _) = out.as_chunks_mut::<OUT>();
    for (b, o) in inputs.iter().zip(outputs) {
        f(b, o);
    }
}

/// F16 goes through `half`'s slice conversion, which uses the CPU's F16C/FP16 instructions
/// when present: F16 checkpoints are large and this is their whole load cost.
fn f16_to_f32(data: &[u8], out: &mut [f32]) {
    const CHUNK: usize = 256;
    let (halves, _) = data.as_chunks::<2>();
    let mut buf = [f16::ZERO; CHUNK];
    for (src, dst) in halves.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
        let buf = &mut buf[..src.len()];
        for (h, b) in buf.iter_mut().zip(src) {
            *h = f16::from_le_bytes(*b);
        }
        buf.convert_to_f32_slice(dst);
    }
}

#[inline(always)]
pub(super) fn f16_at(lo: u8, hi: u8) -> f32 {
    f16::from_le_bytes([lo, hi]).to_f32()
}

/// `d * (q - 8)`, low nibbles first, then high nibbles.
#[inline(always)]
fn q4_0(b: &[u8; Q4_0_BYTES], o: &mut [f32; 32]) {
    let d = f16_at(b[0], b[1]);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * (i32::from(q & 0x0F) - 8) as f32;
        o[j + 16] = d * (i32::from(q >> 4) - 8) as f32;
    }
}

/// `d * q + m`.
#[inline(always)]
fn q4_1(b: &[u8; Q4_1_BYTES], o: &mut [f32; 32]) {
    let d = f16_at(b[0], b[1]);
    let m = f16_at(b[2], b[3]);
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = d * f32::from(q & 0x0F) + m;
        o[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// `d * (q - 16)`; bit `j` of the little-endian `qh` word is the fifth bit of element `j`.
#[inline(always)]
fn q5_0(b: &[u8; Q5_0_BYTES], o: &mut [f32; 32]) {
    let d = f16_at(b[0], b[1]);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let lo = u32::from(q & 0x0F) | ((qh >> j) & 1) << 4;
        let hi = u32::from(q >> 4) | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * (lo as i32 - 16) as f32;
        o[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

/// `d * q + m` with 5-bit `q` laid out as in [`q5_0`].
#[inline(always)]
fn q5_1(b: &[u8; Q5_1_BYTES], o: &mut [f32; 32]) {
    let d = f16_at(b[0], b[1]);
    let m = f16_at(b[2], b[3]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let lo = u32::from(q & 0x0F) | ((qh >> j) & 1) << 4;
        let hi = u32::from(q >> 4) | ((qh >> (j + 16)) & 1) << 4;
        o[j] = d * lo as f32 + m;
        o[j + 16] = d * hi as f32 + m;
    }
}

/// `q * d`.
#[inline(always)]
fn q8_0(b: &[u8; Q8_0_BYTES], o: &mut [f32; 32]) {
    let d = f16_at(b[0], b[1]);
    for j in 0..32 {
        o[j] = f32::from(b[2 + j] as i8) * d;
    }
}

/// The k-quants with 2-bit planes (Q2_K's values, Q3_K's low bits) store 128 elements per
/// 32 bytes: element `128*h + 32*s + l` is bits `2s..2s+2` of byte `32*h + l`. Group `g` of 16
/// elements therefore reads 16 bytes from the returned start at the returned shift.
#[inline(always)]
pub(super) const fn two_bit_group(g: usize) -> (usize, usize) {
    let h = g / 8;
    let s = (g / 2) % 4;
    (32 * h + (g % 2) * 16, 2 * s)
}

/// Q2_K: per group of 16, `dl = d * (sc & 15)`, `ml = dmin * (sc >> 4)`, value `dl * q - ml`.
#[inline(always)]
fn q2_k(b: &[u8; Q2K_BYTES], o: &mut [f32; QK_K]) {
    const QS: usize = QK_K / 16;
    const D: usize = QS + QK_K / 4;
    let d = f16_at(b[D], b[D + 1]);
    let dmin = f16_at(b[D + 2], b[D + 3]);
    for g in 0..16 {
        let sc = b[g];
        let dl = d * f32::from(sc & 0x0F);
        let ml = dmin * f32::from(sc >> 4);
        let (start, shift) = two_bit_group(g);
        for l in 0..16 {
            let q = (b[QS + start + l] >> shift) & 3;
            o[16 * g + l] = dl * f32::from(q) - ml;
        }
    }
}

/// Q3_K: 6-bit signed group scales (low nibbles in bytes 0..8, high pairs in bytes 8..12),
/// value `(d * scale) * q` where `q` is the 2-bit value minus 4 unless its `hmask` bit is set.
#[inline(always)]
fn q3_k(b: &[u8; Q3K_BYTES], o: &mut [f32; QK_K]) {
    const QS: usize = QK_K / 8;
    const SCALES: usize = QS + QK_K / 4;
    const D: usize = SCALES + 12;
    let d = f16_at(b[D], b[D + 1]);
    for g in 0..16 {
        let lo = if g < 8 {
            b[SCALES + g] & 0x0F
        } else {
            b[SCALES + g - 8] >> 4
        };
        let hi = (b[SCALES + 8 + g % 4] >> (2 * (g / 4))) & 3;
        let dl = d * (i32::from(lo | hi << 4) - 32) as f32;
        let (start, shift) = two_bit_group(g);
        // The high bit of element i is bit i/32 of hmask[i % 32]; i/32 is g/2 for the group.
        let hshift = g / 2;
        for l in 0..16 {
            let low = i32::from((b[QS + start + l] >> shift) & 3);
            let high_set = (b[(g % 2) * 16 + l] >> hshift) & 1 != 0;
            let q = if high_set { low } else { low - 4 };
            o[16 * g + l] = dl * q as f32;
        }
    }
}

/// Unpacks the eight 6-bit (scale, min) pairs shared by Q4_K and Q5_K: bytes 0..4 hold the
/// low 6 bits of scales 0..4, bytes 4..8 those of mins 0..4, and bytes 8..12 the low nibbles
/// of scales/mins 4..8, whose top 2 bits sit in the top bits of bytes 0..8.
#[inline(always)]
pub(super) fn k_scale_min(s: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 0x3F, s[j + 4] & 0x3F)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30),
            (s[j + 4] >> 4) | ((s[j] >> 2) & 0x30),
        )
    }
}

/// The 12 scale bytes of a Q4_K/Q5_K block, which start at byte 4.
#[inline(always)]
pub(super) fn k_scales<const N: usize>(b: &[u8; N]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (i, v) in s.iter_mut().enumerate() {
        *v = b[4 + i];
    }
    s
}

/// Q4_K: per group of 32, `dj = d * sc`, `mj = dmin * m`, value `dj * q - mj`; groups 2c and
/// 2c+1 are the low and high nibbles of bytes `32c..32c+32`.
#[inline(always)]
fn q4_k(b: &[u8; Q4K_BYTES], o: &mut [f32; QK_K]) {
    const QS: usize = 16;
    let d = f16_at(b[0], b[1]);
    let dmin = f16_at(b[2], b[3]);
    let scales = k_scales(b);
    for j in 0..8 {
        let (sc, m) = k_scale_min(&scales, j);
        let dj = d * f32::from(sc);
        let mj = dmin * f32::from(m);
        let base = QS + 32 * (j / 2);
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let q = (b[base + l] >> shift) & 0x0F;
            o[32 * j + l] = dj * f32::from(q) - mj;
        }
    }
}

/// Q5_K: Q4_K plus a fifth bit per element, bit `j` of `qh[l]` for group `j`.
#[inline(always)]
fn q5_k(b: &[u8; Q5K_BYTES], o: &mut [f32; QK_K]) {
    const QH: usize = 16;
    const QS: usize = QH + QK_K / 8;
    let d = f16_at(b[0], b[1]);
    let dmin = f16_at(b[2], b[3]);
    let scales = k_scales(b);
    for j in 0..8 {
        let (sc, m) = k_scale_min(&scales, j);
        let dj = d * f32::from(sc);
        let mj = dmin * f32::from(m);
        let base = QS + 32 * (j / 2);
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let q = ((b[base + l] >> shift) & 0x0F) | ((b[QH + l] >> j) & 1) << 4;
            o[32 * j + l] = dj * f32::from(q) - mj;
        }
    }
}

/// Q6_K: per group of 16, `dg = d * scale` (signed 8-bit), value `dg * (q - 32)`. Element
/// `128*h + r` takes its low nibble from `ql[64*h + r % 64]` (nibble `r / 64`) and its top
/// two bits from `qh[32*h + r % 32]` (pair `r / 32`).
#[inline(always)]
fn q6_k(b: &[u8; Q6K_BYTES], o: &mut [f32; QK_K]) {
    const QH: usize = QK_K / 2;
    const SCALES: usize = QH + QK_K / 4;
    const D: usize = SCALES + QK_K / 16;
    let d = f16_at(b[D], b[D + 1]);
    for g in 0..16 {
        let dg = d * f32::from(b[SCALES + g] as i8);
        let h = g / 8;
        let r0 = (g % 8) * 16;
        let ql_base = 64 * h + r0 % 64;
        let ql_shift = 4 * (r0 / 64);
        let qh_base = QH + 32 * h + r0 % 32;
        let qh_shift = 2 * (r0 / 32);
        for l in 0..16 {
            let low = (b[ql_base + l] >> ql_shift) & 0x0F;
            let high = (b[qh_base + l] >> qh_shift) & 3;
            o[16 * g + l] = dg * (i32::from(low | high << 4) - 32) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use super::super::{GgufFile, fixture_path};
    use super::*;

    const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
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

    struct Expected {
        ty: String,
        shape: Vec<u64>,
        values: Vec<f32>,
    }

    struct Fixture {
        gguf: Vec<u8>,
        expected: HashMap<String, Expected>,
    }

    /// `types.gguf` and gguf-py's dequantization of it, loaded once for all tests.
    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let read = |name: &str| {
                let path = fixture_path(&format!("quant/{name}"));
                std::fs::read(&path).unwrap_or_else(|e| {
                    panic!(
                        "{}: {e} (set REFUSAL_FIXTURES to the fixtures dir)",
                        path.display()
                    )
                })
            };
            let json: serde_json::Value =
                serde_json::from_slice(&read("types.expected.json")).expect("fixture json");
            let expected = json
                .as_object()
                .expect("json object")
                .iter()
                .map(|(name, t)| {
                    let shape = t["shape"].as_array().expect("shape");
                    let values = t["values"].as_array().expect("values");
                    let e = Expected {
                        ty: t["type"].as_str().expect("type").to_owned(),
                        shape: shape.iter().map(|d| d.as_u64().expect("dim")).collect(),
                        // The json holds each f32 exactly as a double, so this is lossless.
                        values: values
                            .iter()
                            .map(|v| v.as_f64().expect("f64") as f32)
                            .collect(),
                    };
                    (name.clone(), e)
                })
                .collect();
            Fixture {
                gguf: read("types.gguf"),
                expected,
            }
        })
    }

    /// Dequantizes the fixture tensor of `ty` and compares it bit for bit with gguf-py.
    fn check_fixture(ty: GgmlType) {
        let fx = fixture();
        let name = format!("t.{}", ty.name().to_lowercase());
        let file = GgufFile::parse(&fx.gguf).expect("fixture parses");
        let info = file.tensor(&name).expect("fixture tensor");
        assert_eq!(info.ggml_type, ty);
        let expected = &fx.expected[&name];
        assert_eq!(expected.ty, ty.name());
        let row_major: Vec<u64> = info.dims.iter().rev().copied().collect();
        assert_eq!(row_major, expected.shape);

        let got = file.tensor_f32(&fx.gguf, &name).expect("dequantize");
        assert_eq!(got.len(), expected.values.len());
        let mismatches: Vec<_> = got
            .iter()
            .zip(&expected.values)
            .enumerate()
            .filter(|(_, (g, e))| g.to_bits() != e.to_bits())
            .collect();
        assert!(
            mismatches.is_empty(),
            "{} of {} values differ, first (index, (got, expected)): {:?}",
            mismatches.len(),
            got.len(),
            &mismatches[..mismatches.len().min(5)]
        );
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
        fixture_f32 => GgmlType::F32,
        fixture_f16 => GgmlType::F16,
        fixture_bf16 => GgmlType::BF16,
        fixture_q4_0 => GgmlType::Q4_0,
        fixture_q4_1 => GgmlType::Q4_1,
        fixture_q5_0 => GgmlType::Q5_0,
        fixture_q5_1 => GgmlType::Q5_1,
        fixture_q8_0 => GgmlType::Q8_0,
        fixture_q2_k => GgmlType::Q2K,
        fixture_q3_k => GgmlType::Q3K,
        fixture_q4_k => GgmlType::Q4K,
        fixture_q5_k => GgmlType::Q5K,
        fixture_q6_k => GgmlType::Q6K,
    }

    #[test]
    fn fixture_covers_every_type() {
        let fx = fixture();
        for ty in ALL {
            assert!(
                fx.expected
                    .contains_key(&format!("t.{}", ty.name().to_lowercase()))
            );
        }
        assert_eq!(fx.expected.len(), ALL.len());
    }

    #[test]
    fn type_ids_and_sizes_match_ggml() {
        let table = [
            (GgmlType::F32, 0, 1, 4),
            (GgmlType::F16, 1, 1, 2),
            (GgmlType::Q4_0, 2, 32, 18),
            (GgmlType::Q4_1, 3, 32, 20),
            (GgmlType::Q5_0, 6, 32, 22),
            (GgmlType::Q5_1, 7, 32, 24),
            (GgmlType::Q8_0, 8, 32, 34),
            (GgmlType::Q2K, 10, 256, 84),
            (GgmlType::Q3K, 11, 256, 110),
            (GgmlType::Q4K, 12, 256, 144),
            (GgmlType::Q5K, 13, 256, 176),
            (GgmlType::Q6K, 14, 256, 210),
            (GgmlType::BF16, 30, 1, 2),
        ];
        assert_eq!(table.len(), ALL.len());
        for (ty, id, block, size) in table {
            assert_eq!(ty.id(), id);
            assert_eq!(GgmlType::from_id(id), Some(ty));
            assert_eq!((ty.block_size(), ty.type_size()), (block, size), "{ty}");
        }
        for unsupported in [4, 5, 9, 15, 16, 24, 29, 31, 39, u32::MAX] {
            assert_eq!(GgmlType::from_id(unsupported), None);
        }
    }

    #[test]
    fn rejects_partial_blocks_and_wrong_lengths() {
        for ty in ALL {
            let (block, size) = (ty.block_size(), ty.type_size());
            let data = vec![0u8; 2 * size];
            assert_eq!(
                dequantize(ty, &data, 2 * block).expect("exact").len(),
                2 * block
            );
            assert!(matches!(
                dequantize(ty, &data[..size], 2 * block),
                Err(GgufError::DataSizeMismatch { .. })
            ));
            assert!(matches!(
                dequantize(ty, &data, block),
                Err(GgufError::DataSizeMismatch { .. })
            ));
            if block > 1 {
                assert!(matches!(
                    dequantize(ty, &data, block + 1),
                    Err(GgufError::NotBlockMultiple { .. })
                ));
            }
            let mut out = vec![0.0; block];
            assert!(dequantize_into(ty, &data, &mut out).is_err());
            assert!(dequantize(ty, &[], 0).expect("empty").is_empty());
        }
        // A hostile element count is rejected before anything is allocated for it.
        assert!(dequantize(GgmlType::F32, &[0; 4], usize::MAX).is_err());
        assert!(dequantize(GgmlType::Q4K, &[0; 144], usize::MAX / 256 * 256).is_err());
    }

    #[test]
    fn hand_built_blocks() {
        // Q8_0 with d = 0.5: values are q / 2.
        let mut b = vec![0x00, 0x38];
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.5).collect();
        assert_eq!(dequantize(GgmlType::Q8_0, &b, 32).expect("q8_0"), want);

        // Q4_0 with d = 1: byte j holds element j (low nibble) and element j + 16 (high).
        let mut b = vec![0x00, 0x3C];
        b.extend((0..16u8).map(|j| j | (15 - j) << 4));
        let got = dequantize(GgmlType::Q4_0, &b, 32).expect("q4_0");
        for j in 0..16 {
            assert_eq!(got[j], j as f32 - 8.0);
            assert_eq!(got[j + 16], 7.0 - j as f32);
        }

        // BF16 keeps the upper half of the f32 bits, NaN payloads included.
        let bits = [0x3F80u16, 0xC000, 0x7FC1, 0x0001];
        let data: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let got = dequantize(GgmlType::BF16, &data, 4).expect("bf16");
        let got_bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert_eq!(got_bits, bits.map(|b| u32::from(b) << 16));
    }

    #[test]
    fn f16_handles_chunk_remainders_and_specials() {
        // 300 values: one full conversion chunk plus a partial one.
        let halves: Vec<f16> = (0..300).map(|i| f16::from_f32(i as f32 - 150.5)).collect();
        let mut data: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
        for special in [f16::INFINITY, f16::NEG_ZERO, f16::MIN_POSITIVE_SUBNORMAL] {
            data.extend(special.to_le_bytes());
        }
        let got = dequantize(GgmlType::F16, &data, 303).expect("f16");
        for (g, h) in got.iter().zip(&halves) {
            assert_eq!(g.to_bits(), h.to_f32().to_bits());
        }
        assert_eq!(got[300], f32::INFINITY);
        assert_eq!(got[301].to_bits(), (-0.0f32).to_bits());
        assert_eq!(got[302], 2f32.powi(-24));
    }
}
