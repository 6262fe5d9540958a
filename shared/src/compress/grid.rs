//! Uniform quantization grids (METHOD §8): round-to-nearest per group of consecutive inputs of
//! a row (or per row), symmetric or asymmetric, 2 to 8 bits. GPTQ rounds to the same grid.
//!
//! The convention is GPTQ's: the range always contains 0; `maxq = 2^bits - 1`; a symmetric
//! grid has `scale = 2 max|x| / maxq` and zero point `(maxq + 1) / 2`, an asymmetric one
//! `scale = (max - min) / maxq` and zero point `round(-min / scale)`; `x^ = scale (q - zero)`
//! with `q = clamp(round(x / scale) + zero, 0, maxq)`.

use std::fmt;

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

    /// Rounds every group of every row of `w` to its own grid.
    pub fn round_to_nearest(&self, w: &mut HostMatrix) {
        let group = self.group_len(w.cols);
        for row in w.data.chunks_exact_mut(w.cols) {
            for g in row.chunks_mut(group) {
                let s = self.fit(g.iter().copied());
                for v in g {
                    *v = s.round(*v);
                }
            }
        }
    }
}

impl GroupScale {
    /// The grid point nearest `x` (clamped to the grid's range).
    pub fn round(&self, x: f32) -> f32 {
        let q = ((x / self.scale).round() + self.zero).clamp(0.0, self.maxq);
        self.scale * (q - self.zero)
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
