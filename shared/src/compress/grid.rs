//! Uniform quantization grids (METHOD §8): round-to-nearest per group of consecutive inputs of
//! a row (or per row), symmetric or asymmetric, 2 to 8 bits. GPTQ rounds to the same grid.
//!
//! The convention is GPTQ's: the range always contains 0; `maxq = 2^bits - 1`; a symmetric
//! grid has `scale = 2 max|x| / maxq` and zero point `(maxq + 1) / 2`, an asymmetric one
//! `scale = (max - min) / maxq` and zero point `round(-min / scale)`; `x^ = scale (q - zero)`
//! with `q = clamp(round(x / scale) + zero, 0, maxq)`.

use std::fmt;

use crate::gguf::{GgmlType, pack_levels};

use super::HostMatrix;

/// A quantization grid: bits per weight and how many consecutive inputs share a scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuantGrid {
    pub bits: u32,
    /// Inputs per group; 0 means one group per row ("per channel").
    pub group: usize,
    pub symmetric: bool,
}

/// The scale and zero point of one group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupScale {
    scale: f32,
    zero: f32,
    maxq: f32,
}

impl QuantGrid {
    /// # Errors
    ///
    /// A message when `bits` is not 2 to 8.
    pub fn new(bits: usize, group: usize, symmetric: bool) -> Result<QuantGrid, String> {
        if !(2..=8).contains(&bits) {
            return Err(format!("bits must be 2 to 8, not {bits}"));
        }
        Ok(QuantGrid {
            bits: bits as u32,
            group,
            symmetric,
        })
    }

    /// The length of the groups of a row of `cols` inputs (the last one may be shorter).
    pub fn group_len(&self, cols: usize) -> usize {
        if self.group == 0 || self.group > cols {
            cols
        } else {
            self.group
        }
    }

    /// Storage cost per weight: the codes plus an f16 scale (and a zero point of `bits` bits
    /// for an asymmetric grid) per group.
    pub fn bits_per_weight(&self, cols: usize) -> f64 {
        let overhead = 16 + if self.symmetric { 0 } else { self.bits };
        f64::from(self.bits) + f64::from(overhead) / self.group_len(cols) as f64
    }

    /// The scale that covers `values` (NaNs are ignored).
    pub fn fit(&self, values: impl IntoIterator<Item = f32>) -> GroupScale {
        let (mut lo, mut hi) = (0.0f32, 0.0f32);
        for v in values {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let maxq = ((1u32 << self.bits) - 1) as f32;
        if self.symmetric {
            hi = hi.max(-lo);
            lo = -hi;
        }
        if lo == 0.0 && hi == 0.0 {
            (lo, hi) = (-1.0, 1.0);
        }
        let scale = (hi - lo) / maxq;
        let zero = if self.symmetric {
            (maxq + 1.0) / 2.0
        } else {
            (-lo / scale).round()
        };
        GroupScale { scale, zero, maxq }
    }

    /// Rounds every group of every row of `w` to its own grid; returns the groups' scales,
    /// row by row.
    pub fn round_to_nearest(&self, w: &mut HostMatrix) -> Vec<GroupScale> {
        let group = self.group_len(w.cols);
        let mut scales = Vec::with_capacity(w.rows * w.cols.div_ceil(group));
        for row in w.data.chunks_exact_mut(w.cols) {
            for g in row.chunks_mut(group) {
                let s = self.fit(g.iter().copied());
                for v in g {
                    *v = s.round(*v);
                }
                scales.push(s);
            }
        }
        scales
    }

    /// The GGML type that stores this grid as it is (its scale rounded to f16) for rows of
    /// `cols` inputs: Q4_0, Q5_0 and Q8_0 have the symmetric 4, 5 and 8-bit grids with their
    /// zero point, Q4_1 and Q5_1 the asymmetric 4 and 5-bit ones, in blocks of 32 inputs
    /// that share a scale, so a group of a whole number of blocks is stored block by block.
    /// `None` for other grids and for groups that are not whole blocks.
    pub fn ggml_type(&self, cols: usize) -> Option<GgmlType> {
        let ty = match (self.bits, self.symmetric) {
            (4, true) => GgmlType::Q4_0,
            (5, true) => GgmlType::Q5_0,
            (8, true) => GgmlType::Q8_0,
            (4, false) => GgmlType::Q4_1,
            (5, false) => GgmlType::Q5_1,
            _ => return None,
        };
        let group = self.group_len(cols);
        (group.is_multiple_of(32) && cols.is_multiple_of(group)).then_some(ty)
    }

    /// `w`, rounded to this grid with `scales` (one per group, row by row, as
    /// [`Self::round_to_nearest`] and GPTQ return them), as blocks of [`Self::ggml_type`]:
    /// `None` where that is `None`.
    pub fn pack(&self, w: &HostMatrix, scales: &[GroupScale]) -> Option<(GgmlType, Vec<u8>)> {
        let ty = self.ggml_type(w.cols)?;
        let group = self.group_len(w.cols);
        assert_eq!(scales.len(), w.data.len() / group, "a scale per group");
        let levels: Vec<u8> = w
            .data
            .chunks_exact(group)
            .zip(scales)
            .flat_map(|(g, s)| g.iter().map(|&v| s.level(v)))
            .collect();
        let blocks: Vec<(f32, f32)> = scales
            .iter()
            .flat_map(|s| {
                let offset = if self.symmetric {
                    0.0
                } else {
                    -s.scale * s.zero
                };
                std::iter::repeat_n((s.scale, offset), group / 32)
            })
            .collect();
        Some((ty, pack_levels(ty, &blocks, &levels)))
    }
}

impl GroupScale {
    /// The grid point nearest `x` (clamped to the grid's range).
    pub fn round(&self, x: f32) -> f32 {
        self.scale * (self.nearest(x) - self.zero)
    }

    /// The level `q` of the grid point nearest `x`, `0..=maxq`.
    fn level(&self, x: f32) -> u8 {
        self.nearest(x) as u8
    }

    fn nearest(&self, x: f32) -> f32 {
        ((x / self.scale).round() + self.zero).clamp(0.0, self.maxq)
    }
}

impl fmt::Display for QuantGrid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.symmetric { "sym" } else { "asym" };
        write!(f, "{}:{}:{kind}", self.bits, self.group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, f: impl Fn(usize) -> f32) -> HostMatrix {
        HostMatrix {
            rows,
            cols,
            data: (0..rows * cols).map(f).collect(),
        }
    }

    #[test]
    fn every_group_takes_at_most_two_to_the_bits_values_and_errs_by_half_a_step() {
        for grid in [
            QuantGrid::new(4, 32, true).unwrap(),
            QuantGrid::new(3, 0, false).unwrap(),
            QuantGrid::new(8, 128, false).unwrap(),
        ] {
            let original = matrix(3, 256, |i| ((i * 37 % 101) as f32 - 40.0) / 17.0);
            let mut w = original.clone();
            grid.round_to_nearest(&mut w);
            let group = grid.group_len(w.cols);
            for (row, orig) in w.data.chunks(256).zip(original.data.chunks(256)) {
                for (g, o) in row.chunks(group).zip(orig.chunks(group)) {
                    let mut distinct: Vec<f32> = g.to_vec();
                    distinct.sort_by(f32::total_cmp);
                    distinct.dedup();
                    assert!(distinct.len() <= 1 << grid.bits);
                    let s = grid.fit(o.iter().copied());
                    for (a, b) in g.iter().zip(o) {
                        // Half a step inside the range; the symmetric grid clips its top value
                        // by up to one step (GPTQ's convention).
                        assert!((a - b).abs() <= s.scale * 1.0001, "{a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn grids_of_32_element_types_pack_to_blocks_that_dequantize_to_the_grid() {
        let original = matrix(3, 256, |i| ((i * 37 % 101) as f32 - 40.0) / 17.0);
        for (grid, ty) in [
            (QuantGrid::new(4, 32, true).unwrap(), GgmlType::Q4_0),
            (QuantGrid::new(4, 128, false).unwrap(), GgmlType::Q4_1),
            (QuantGrid::new(5, 0, true).unwrap(), GgmlType::Q5_0),
            (QuantGrid::new(5, 64, false).unwrap(), GgmlType::Q5_1),
            (QuantGrid::new(8, 32, true).unwrap(), GgmlType::Q8_0),
        ] {
            let mut w = original.clone();
            let scales = grid.round_to_nearest(&mut w);
            let (got, bytes) = grid.pack(&w, &scales).unwrap();
            assert_eq!(got, ty, "{grid}");
            let values = crate::gguf::dequantize(ty, &bytes, w.data.len()).unwrap();
            // The grid's values, but for the scale (and offset) rounded to f16: relative 2^-11
            // of the group's range.
            let group = grid.group_len(256);
            for (k, (a, b)) in values.iter().zip(&w.data).enumerate() {
                let s = &scales[k / group];
                assert!(
                    (a - b).abs() <= s.scale * (s.maxq + 1.0) * 1e-3,
                    "{grid}: {a} vs {b}"
                );
            }
        }
        for grid in [
            QuantGrid::new(3, 32, true).unwrap(),
            QuantGrid::new(8, 32, false).unwrap(),
            QuantGrid::new(4, 48, true).unwrap(),
            QuantGrid::new(4, 96, true).unwrap(),
        ] {
            assert_eq!(grid.ggml_type(256), None, "{grid}");
        }
    }

    #[test]
    fn grids_follow_gptq_convention() {
        let sym = QuantGrid::new(4, 0, true).unwrap().fit([-3.0, 1.5]);
        assert_eq!((sym.scale, sym.zero), (6.0 / 15.0, 8.0));
        let asym = QuantGrid::new(2, 0, false).unwrap().fit([0.5, 3.5]);
        // The range is widened to contain zero: [0, 3.5].
        assert_eq!((asym.scale, asym.zero), (3.5 / 3.0, 0.0));
        assert_eq!(asym.round(2.0), 3.5 / 3.0 * 2.0);
        // An all-zero group stays zero.
        let zero = QuantGrid::new(4, 0, false).unwrap().fit([0.0, 0.0]);
        assert_eq!(zero.round(0.0), 0.0);
    }

    #[test]
    fn bits_per_weight_count_the_scales() {
        assert_eq!(
            QuantGrid::new(4, 128, true).unwrap().bits_per_weight(896),
            4.125
        );
        assert_eq!(
            QuantGrid::new(4, 32, false).unwrap().bits_per_weight(896),
            4.0 + 20.0 / 32.0
        );
        assert_eq!(
            QuantGrid::new(8, 0, true).unwrap().bits_per_weight(1024),
            8.0 + 16.0 / 1024.0
        );
    }
}
