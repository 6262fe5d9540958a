//! Setting elements of GGML blocks to exactly zero and leaving every other value as it was:
//! how a pruned weight of a quantized model stays in its own block type. Only the symmetric
//! types have a code whose value is zero whatever the block's scales (`d * (q - z)` at
//! `q = z`); in the types with a minimum (`d * q + m`: Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) zero is in
//! general not a value at all. The 16-bit floats (F16, BF16) are blocks of one value, and
//! zero is the code 0.

use super::GgmlType;
use super::quant::{QK_K, two_bit_group};

/// `blocks` (`values.len()` elements of `ty`) with the code of every element whose value in
/// `values` is zero replaced by the type's zero code; `None` for a type without one.
///
/// # Panics
///
/// If `blocks` does not hold exactly `values.len()` elements of `ty`.
pub fn zeroed(ty: GgmlType, blocks: &[u8], values: &[f32]) -> Option<Vec<u8>> {
    let set: fn(&mut [u8], usize) = match ty {
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q3K => q3_k,
        GgmlType::Q6K => q6_k,
        GgmlType::F16 | GgmlType::BF16 => float,
        _ => return None,
    };
    let n = ty.block_size();
    assert_eq!(
        blocks.len(),
        values.len() / n * ty.type_size(),
        "{} bytes for {} values of {ty}",
        blocks.len(),
        values.len()
    );
    let mut out = blocks.to_vec();
    for (block, values) in out
        .chunks_exact_mut(ty.type_size())
        .zip(values.chunks_exact(n))
    {
        for (e, _) in values.iter().enumerate().filter(|(_, v)| **v == 0.0) {
            set(block, e);
        }
    }
    Some(out)
}

/// Sets the `width` bits of `byte` at `shift` to `code`.
fn put(byte: &mut u8, shift: usize, width: usize, code: u8) {
    let mask = ((1u8 << width) - 1) << shift;
    *byte = (*byte & !mask) | (code << shift);
}

/// `d * (q - 8)`: nibble `e % 16` of the 16 code bytes after `d`, low for the first half.
fn q4_0(b: &mut [u8], e: usize) {
    put(&mut b[2 + e % 16], 4 * (e / 16), 4, 8);
}

/// `d * (q - 16)`: the fifth bit is bit `e` of `qh` (bytes 2..6), the rest as in Q4_0.
fn q5_0(b: &mut [u8], e: usize) {
    put(&mut b[2 + e / 8], e % 8, 1, 1);
    put(&mut b[6 + e % 16], 4 * (e / 16), 4, 0);
}

/// `d * q`.
fn q8_0(b: &mut [u8], e: usize) {
    b[2 + e] = 0;
}

/// `dl * (q - 4)` with 2 low bits (see [`two_bit_group`]) and the high bit in `hmask`, whose
/// set bit means "no -4": zero is low bits 0 with the high bit set.
fn q3_k(b: &mut [u8], e: usize) {
    const QS: usize = QK_K / 8;
    let (g, l) = (e / 16, e % 16);
    let (start, shift) = two_bit_group(g);
    put(&mut b[QS + start + l], shift, 2, 0);
    put(&mut b[(g % 2) * 16 + l], g / 2, 1, 1);
}

/// +0 in F16 and BF16 alike.
fn float(b: &mut [u8], _: usize) {
    b.fill(0);
}

/// `dg * (q - 32)` with the low nibble in `ql` and the top 2 bits in `qh`: zero is 0 and 2.
fn q6_k(b: &mut [u8], e: usize) {
    const QH: usize = QK_K / 2;
    let (g, l) = (e / 16, e % 16);
    let h = g / 8;
    let r0 = (g % 8) * 16;
    put(&mut b[64 * h + r0 % 64 + l], 4 * (r0 / 64), 4, 0);
    put(&mut b[QH + 32 * h + r0 % 32 + l], 2 * (r0 / 32), 2, 2);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{dequantize, quantize, test_values};

    #[test]
    fn zeroed_elements_read_back_as_zero_and_the_others_are_unchanged() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q3K,
            GgmlType::Q6K,
            GgmlType::F16,
            GgmlType::BF16,
        ] {
            let n = 4 * QK_K;
            let blocks = quantize(ty, &test_values(n, 7)).unwrap();
            let before = dequantize(ty, &blocks, n).unwrap();
            // Every element of some blocks, none of others, and scattered ones between.
            let pruned: Vec<f32> = before
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let cut = i < QK_K / 2 || (i >= QK_K && (i * 7) % 5 < 2);
                    if cut { 0.0 } else { v }
                })
                .collect();
            let after = dequantize(ty, &zeroed(ty, &blocks, &pruned).unwrap(), n).unwrap();
            for (i, (a, p)) in after.iter().zip(&pruned).enumerate() {
                if *p == 0.0 {
                    assert_eq!(*a, 0.0, "{ty}: element {i}");
                } else {
                    assert_eq!(a.to_bits(), p.to_bits(), "{ty}: element {i}");
                }
            }
        }
    }

    #[test]
    fn types_with_a_minimum_have_no_zero_code() {
        for ty in [
            GgmlType::Q4_1,
            GgmlType::Q5_1,
            GgmlType::Q2K,
            GgmlType::Q4K,
            GgmlType::Q5K,
        ] {
            let n = QK_K;
            let blocks = quantize(ty, &test_values(n, 7)).unwrap();
            assert!(zeroed(ty, &blocks, &vec![0.0; n]).is_none(), "{ty}");
        }
    }
}
