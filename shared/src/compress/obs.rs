//! The optimal-brain-surgeon column sweep shared by GPTQ and SparseGPT (METHOD §8).
//!
//! With `H = 2/n sum x x^T` the Hessian of a row's output error, `U` the upper Cholesky
//! factor of the damped `H^-1` (`H^-1 = U^T U`), the sweep visits the columns in order: each
//! column is set to its target (a grid point for GPTQ, zero or kept for SparseGPT), and the
//! error `err = (w - q) / U_cc` is fed back to the columns not yet visited through row `c` of
//! `U`, immediately inside a block of 128 columns and in one matrix product for the columns
//! after it ("lazy batch updates").

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::DenseSolveCore;
use faer::{Accum, Mat, MatMut, MatRef, Side};

use super::grid::{GroupScale, QuantGrid};
use super::prune::{Sparsity, zero_lowest};
use super::{CompressError, HostMatrix};

/// Columns per lazy block.
const BLOCK: usize = 128;

/// Damping tried first, as a fraction of the mean diagonal of `H`; raised tenfold (up to four
/// times) while the factorization fails.
const DAMP: f64 = 0.01;

/// What the sweep sets each column to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// GPTQ: the nearest point of the grid of the column's group.
    Grid(QuantGrid),
    /// SparseGPT: zero where the mask says, chosen by `w^2 / U_cc^2` per row within each block
    /// (unstructured) or each group of M inputs.
    Prune(Sparsity),
}

/// The upper Cholesky factor of the damped inverse Hessian, row-major `[n, n]`, and the
/// damping that made it exist.
struct InverseFactor {
    u: Vec<f32>,
    damp: f64,
}

/// Factors `H + damp I` after replacing the zero diagonal of dead inputs by 1.
fn inverse_factor(h: &[f32], n: usize, tensor: &str) -> Result<InverseFactor, CompressError> {
    let mut m = Mat::<f64>::from_fn(n, n, |i, j| f64::from(h[i * n + j]));
    for i in 0..n {
        if m[(i, i)] == 0.0 {
            m[(i, i)] = 1.0;
        }
    }
    let mean_diag = (0..n).map(|i| m[(i, i)]).sum::<f64>() / n.max(1) as f64;
    let mut damp = DAMP * mean_diag;
    for _ in 0..5 {
        let mut damped = m.clone();
        for i in 0..n {
            damped[(i, i)] += damp;
        }
        let factor = damped.llt(Side::Lower).ok().and_then(|llt| {
            let inverse = llt.inverse();
            inverse
                .llt(Side::Lower)
                .ok()
                .map(|l| l.L().transpose().to_owned())
        });
        if let Some(u) = factor {
            let u: Vec<f32> = (0..n * n).map(|k| u[(k / n, k % n)] as f32).collect();
            if u.iter().all(|v| v.is_finite()) {
                return Ok(InverseFactor { u, damp });
            }
        }
        damp *= 10.0;
    }
    Err(CompressError::NotPositiveDefinite {
        tensor: tensor.to_owned(),
        damp,
    })
}

/// What a sweep chose besides the weights.
#[derive(Debug, Clone)]
pub struct Swept {
    /// The damping that made `H` factorizable.
    pub damp: f64,
    /// GPTQ: the scale of every group, row by row (as [`QuantGrid::pack`] takes them); empty
    /// for SparseGPT.
    pub scales: Vec<GroupScale>,
}

/// Runs the sweep on `w` with the input Hessian `h` (`[cols, cols]`, row-major). Inputs that
/// were never active (zero diagonal) get zero weights.
///
/// # Errors
///
/// [`CompressError::NotPositiveDefinite`] when no damping makes `H` factorizable (NaNs in the
/// calibration activations), and [`Sparsity::check`]'s errors.
pub fn sweep(
    w: &mut HostMatrix,
    h: &[f32],
    target: Target,
    tensor: &str,
) -> Result<Swept, CompressError> {
    let (rows, cols) = (w.rows, w.cols);
    if let Target::Prune(s) = target {
        s.check(tensor, cols)?;
    }
    let InverseFactor { u, damp } = inverse_factor(h, cols, tensor)?;
    let u_at = |i: usize, j: usize| u[i * cols + j];

    // Columns are contiguous in the transposed layout `[cols, rows]`.
    let mut wt = vec![0.0f32; rows * cols];
    for (r, row) in w.data.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let dead = h[c * cols + c] == 0.0;
            wt[c * rows + r] = if dead { 0.0 } else { v };
        }
    }

    let mut mask = Mask::new(rows, cols, matches!(target, Target::Prune(_)));
    // GPTQ: each group's scales (one per row), group by group; the last is the current one.
    let mut groups: Vec<Vec<GroupScale>> = Vec::new();
    let mut err = vec![0.0f32; BLOCK * rows];
    for i1 in (0..cols).step_by(BLOCK) {
        let i2 = (i1 + BLOCK).min(cols);
        if let Target::Prune(s @ Sparsity::Unstructured(_)) = target {
            // This block's share of each row's budget, so every row ends exactly at it.
            let k = prune_count(s, cols, i2) - prune_count(s, cols, i1);
            mask.choose(&wt, &u, i1..i2, k);
        }
        for c in i1..i2 {
            match target {
                Target::Grid(grid) if c % grid.group_len(cols) == 0 => {
                    let end = (c + grid.group_len(cols)).min(cols);
                    groups.push(
                        (0..rows)
                            .map(|r| grid.fit((c..end).map(|j| wt[j * rows + r])))
                            .collect(),
                    );
                }
                Target::Prune(Sparsity::NOfM { n, m }) if c % m == 0 => {
                    mask.choose(&wt, &u, c..c + m, n);
                }
                _ => {}
            }
            let d = u_at(c, c);
            let (done, rest) = wt.split_at_mut((c + 1) * rows);
            let column = &mut done[c * rows..];
            let e = &mut err[(c - i1) * rows..(c - i1 + 1) * rows];
            let scales = groups.last().map_or(&[][..], Vec::as_slice);
            for r in 0..rows {
                let v = column[r];
                let q = match target {
                    Target::Grid(_) => scales[r].round(v),
                    Target::Prune(_) if mask.is_pruned(c, r) => 0.0,
                    Target::Prune(_) => v,
                };
                e[r] = (v - q) / d;
                column[r] = q;
            }
            for j in c + 1..i2 {
                let ucj = u_at(c, j);
                let next = &mut rest[(j - c - 1) * rows..(j - c) * rows];
                for (x, &er) in next.iter_mut().zip(e.iter()) {
                    *x -= ucj * er;
                }
            }
        }
        if i2 < cols {
            let u_ref = MatRef::from_row_major_slice(&u, cols, cols);
            let feedback = u_ref.submatrix(i1, i2, i2 - i1, cols - i2).transpose();
            let errs = MatRef::from_row_major_slice(&err[..(i2 - i1) * rows], i2 - i1, rows);
            let later: MatMut<'_, f32> =
                MatMut::from_row_major_slice_mut(&mut wt[i2 * rows..], cols - i2, rows);
            matmul(
                later,
                Accum::Add,
                feedback,
                errs,
                -1.0f32,
                faer::get_global_parallelism(),
            );
        }
    }

    for (c, column) in wt.chunks_exact(rows).enumerate() {
        for (r, &v) in column.iter().enumerate() {
            w.data[r * cols + c] = v;
        }
    }
    let scales = (0..rows)
        .flat_map(|r| groups.iter().map(move |group| group[r]))
        .collect();
    Ok(Swept { damp, scales })
}

/// Weights of a row pruned among its first `end` columns under `s`'s budget.
fn prune_count(s: Sparsity, cols: usize, end: usize) -> usize {
    (s.pruned_per_row(cols) as f64 * end as f64 / cols as f64).round() as usize
}

/// Which weights SparseGPT prunes, decided a block (or an N:M group) at a time.
struct Mask {
    rows: usize,
    cols: usize,
    /// `[cols, rows]` like the transposed weights.
    pruned: Vec<bool>,
    scores: Vec<f32>,
    order: Vec<usize>,
    flags: Vec<f32>,
}

impl Mask {
    fn new(rows: usize, cols: usize, used: bool) -> Mask {
        Mask {
            rows,
            cols,
            pruned: vec![false; if used { rows * cols } else { 0 }],
            scores: Vec::new(),
            order: Vec::new(),
            flags: Vec::new(),
        }
    }

    fn is_pruned(&self, c: usize, r: usize) -> bool {
        self.pruned[c * self.rows + r]
    }

    /// Marks, in every row, the `k` columns of `range` with the lowest `w^2 / U_cc^2`.
    fn choose(&mut self, wt: &[f32], u: &[f32], range: std::ops::Range<usize>, k: usize) {
        let (rows, cols) = (self.rows, self.cols);
        for r in 0..rows {
            self.scores.clear();
            self.scores.extend(range.clone().map(|c| {
                let d = u[c * cols + c];
                wt[c * rows + r].powi(2) / (d * d)
            }));
            self.flags.clear();
            self.flags.resize(self.scores.len(), 1.0);
            zero_lowest(&mut self.flags, &self.scores, k, &mut self.order);
            for (c, f) in range.clone().zip(&self.flags) {
                self.pruned[c * rows + r] = *f == 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::hessian::HostStats;
    use super::*;

    /// Inputs whose features are correlated and unequally loud, as real activations are
    /// (that is what second-order methods exploit), and a weight to compress.
    fn problem(rows: usize, cols: usize, tokens: usize) -> (HostMatrix, HostStats) {
        let mut rng = StdRng::seed_from_u64(3);
        let mix: Vec<f32> = (0..cols * cols)
            .map(|_| rng.random_range(-1.0..1.0f32))
            .collect();
        let loud: Vec<f32> = (0..cols).map(|j| 0.2 + (j % 7) as f32).collect();
        let mut x = vec![0.0f32; tokens * cols];
        for t in 0..tokens {
            let z: Vec<f32> = (0..cols).map(|_| rng.random_range(-1.0..1.0f32)).collect();
            for j in 0..cols {
                let v: f32 = (0..cols).map(|k| z[k] * mix[k * cols + j]).sum::<f32>();
                x[t * cols + j] = v * loud[j] + z[j];
            }
        }
        let mut hessian = vec![0.0f32; cols * cols];
        for t in 0..tokens {
            let row = &x[t * cols..(t + 1) * cols];
            for i in 0..cols {
                for j in 0..cols {
                    hessian[i * cols + j] += 2.0 * row[i] * row[j] / tokens as f32;
                }
            }
        }
        let w = HostMatrix {
            rows,
            cols,
            data: (0..rows * cols)
                .map(|_| rng.random_range(-1.0..1.0f32))
                .collect(),
        };
        (
            w,
            HostStats {
                d: cols,
                tokens,
                hessian,
            },
        )
    }

    #[test]
    fn gptq_beats_round_to_nearest_on_the_same_grid() {
        let (w, stats) = problem(24, 256, 600);
        for grid in [
            QuantGrid::new(3, 0, true).unwrap(),
            QuantGrid::new(4, 64, false).unwrap(),
        ] {
            let mut rtn = w.clone();
            grid.round_to_nearest(&mut rtn);
            let mut gptq = w.clone();
            sweep(&mut gptq, &stats.hessian, Target::Grid(grid), "w").unwrap();
            let (e_rtn, e_gptq) = (stats.output_error(&w, &rtn), stats.output_error(&w, &gptq));
            assert!(e_gptq < 0.9 * e_rtn, "{grid}: gptq {e_gptq} vs rtn {e_rtn}");
            // GPTQ's values are on the grid of their group (fitted on updated weights).
            let len = grid.group_len(w.cols);
            for row in gptq.data.chunks(w.cols) {
                for g in row.chunks(len) {
                    let mut distinct = g.to_vec();
                    distinct.sort_by(f32::total_cmp);
                    distinct.dedup();
                    assert!(distinct.len() <= 1 << grid.bits);
                }
            }
        }
    }

    #[test]
    fn sparsegpt_beats_magnitude_at_the_same_sparsity() {
        let (w, stats) = problem(24, 256, 600);
        for s in [Sparsity::Unstructured(0.5), Sparsity::NOfM { n: 2, m: 4 }] {
            let mut by_magnitude = w.clone();
            crate::compress::prune::magnitude(&mut by_magnitude, s);
            let mut sparse = w.clone();
            sweep(&mut sparse, &stats.hessian, Target::Prune(s), "w").unwrap();
            let e_mag = stats.output_error(&w, &by_magnitude);
            let e_sgpt = stats.output_error(&w, &sparse);
            assert!(
                e_sgpt < 0.9 * e_mag,
                "{s}: sparsegpt {e_sgpt} vs magnitude {e_mag}"
            );
            match s {
                Sparsity::Unstructured(_) => {
                    for row in sparse.data.chunks(w.cols) {
                        assert_eq!(row.iter().filter(|v| **v == 0.0).count(), 128);
                    }
                }
                Sparsity::NOfM { n, m } => {
                    for g in sparse.data.chunks(m) {
                        assert_eq!(g.iter().filter(|v| **v == 0.0).count(), n);
                    }
                }
            }
        }
    }

    #[test]
    fn gptq_returns_the_scales_that_pack_its_weights() {
        let (w, stats) = problem(24, 256, 600);
        let grid = QuantGrid::new(4, 64, false).unwrap();
        let mut q = w.clone();
        let swept = sweep(&mut q, &stats.hessian, Target::Grid(grid), "w").unwrap();
        assert_eq!(swept.scales.len(), 24 * 4);
        let (ty, bytes) = grid.pack(&q, &swept.scales).unwrap();
        let values = crate::gguf::dequantize(ty, &bytes, q.data.len()).unwrap();
        let range = q.data.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in values.iter().zip(&q.data) {
            // f16 scales and offsets: relative 2^-11 of a group's range.
            assert!((a - b).abs() <= 2e-3 * range, "{a} vs {b}");
        }
    }

    #[test]
    fn dead_inputs_get_zero_weights_and_a_singular_hessian_is_damped() {
        let (w, mut stats) = problem(8, 128, 300);
        // Input 5 never fires.
        for k in 0..128 {
            stats.hessian[5 * 128 + k] = 0.0;
            stats.hessian[k * 128 + 5] = 0.0;
        }
        let mut q = w.clone();
        sweep(
            &mut q,
            &stats.hessian,
            Target::Grid(QuantGrid::new(4, 32, true).unwrap()),
            "w",
        )
        .unwrap();
        assert!(q.data.chunks(128).all(|row| row[5] == 0.0));
        // Rank-one H (one calibration token): damping makes it factorizable.
        let x: Vec<f32> = (0..128).map(|j| j as f32 / 64.0 - 1.0).collect();
        let rank_one: Vec<f32> = (0..128 * 128)
            .map(|k| 2.0 * x[k / 128] * x[k % 128])
            .collect();
        let mut p = w.clone();
        sweep(
            &mut p,
            &rank_one,
            Target::Prune(Sparsity::Unstructured(0.5)),
            "w",
        )
        .unwrap();
        assert!(p.data.iter().all(|v| v.is_finite()));
        // NaN activations cannot be factorized at any damping: a clear error.
        let nan = vec![f32::NAN; 128 * 128];
        assert!(matches!(
            sweep(&mut w.clone(), &nan, Target::Prune(Sparsity::Unstructured(0.5)), "blk.0.w"),
            Err(CompressError::NotPositiveDefinite { tensor, .. }) if tensor == "blk.0.w"
        ));
    }
}
