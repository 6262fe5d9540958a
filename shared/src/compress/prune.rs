//! Pruning masks (METHOD §8): a fraction of every output row (unstructured), or N of every M
//! consecutive inputs of a row (2:4, 4:8), chosen by a score. Magnitude pruning scores `|W|`,
//! Wanda `|W_ij| * ||X_j||_2`. SparseGPT chooses with the same rule inside its sweep
//! ([`super::obs`]).

use std::fmt;

use super::{CompressError, HostMatrix};

/// How many weights pruning removes, and where.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sparsity {
    /// This fraction of every row (rounded to whole weights).
    Unstructured(f64),
    /// `n` of every `m` consecutive inputs of a row.
    NOfM { n: usize, m: usize },
}

impl Sparsity {
    /// `[FRACTION]` or `[N, M]` (the parts of a recipe after the method name).
    ///
    /// # Errors
    ///
    /// A message naming the bad value.
    pub fn parse(parts: &[&str]) -> Result<Sparsity, String> {
        match parts {
            [fraction] => {
                let f: f64 = fraction
                    .parse()
                    .map_err(|_| format!("sparsity `{fraction}` is not a number"))?;
                if !(0.0..1.0).contains(&f) {
                    return Err(format!("sparsity must be a fraction in [0, 1), not {f}"));
                }
                Ok(Sparsity::Unstructured(f))
            }
            [n, m] => {
                let whole = |s: &str| {
                    s.parse::<usize>()
                        .map_err(|_| format!("N:M pattern: `{s}` is not a whole number"))
                };
                let (n, m) = (whole(n)?, whole(m)?);
                if n == 0 || n >= m {
                    return Err(format!(
                        "N:M pattern {n}:{m} must prune 0 < N < M weights of every M"
                    ));
                }
                Ok(Sparsity::NOfM { n, m })
            }
            _ => Err("expected a fraction (0.5) or an N:M pattern (2:4)".into()),
        }
    }

    /// Whether rows of `cols` inputs can take this pattern.
    ///
    /// # Errors
    ///
    /// [`CompressError::GroupDoesNotFit`] naming `tensor`.
    pub fn check(&self, tensor: &str, cols: usize) -> Result<(), CompressError> {
        match *self {
            Sparsity::NOfM { m, .. } if !cols.is_multiple_of(m) => {
                Err(CompressError::GroupDoesNotFit {
                    tensor: tensor.to_owned(),
                    cols,
                    m,
                })
            }
            _ => Ok(()),
        }
    }

    /// Weights pruned in a row of `cols` inputs.
    pub fn pruned_per_row(&self, cols: usize) -> usize {
        match *self {
            Sparsity::Unstructured(f) => ((f * cols as f64).round() as usize).min(cols),
            Sparsity::NOfM { n, m } => cols / m * n,
        }
    }

    /// Zeroes, in every row, the weights with the lowest `score(col, weight)` (ties go to the
    /// lower column) as this sparsity prescribes.
    pub fn prune_by_score(&self, w: &mut HostMatrix, score: impl Fn(usize, f32) -> f32) {
        let mut scores = Vec::with_capacity(w.cols);
        let mut order = Vec::with_capacity(w.cols);
        for row in w.data.chunks_exact_mut(w.cols) {
            scores.clear();
            scores.extend(row.iter().enumerate().map(|(c, &v)| score(c, v)));
            match *self {
                Sparsity::Unstructured(_) => {
                    let k = self.pruned_per_row(row.len());
                    zero_lowest(row, &scores, k, &mut order);
                }
                Sparsity::NOfM { n, m } => {
                    for (g, s) in row.chunks_exact_mut(m).zip(scores.chunks_exact(m)) {
                        zero_lowest(g, s, n, &mut order);
                    }
                }
            }
        }
    }
}

/// Zeroes the `k` entries of `values` with the lowest `scores` (NaN scores rank highest).
pub(crate) fn zero_lowest(values: &mut [f32], scores: &[f32], k: usize, order: &mut Vec<usize>) {
    if k == 0 {
        return;
    }
    order.clear();
    order.extend(0..values.len());
    let by_score = |a: &usize, b: &usize| scores[*a].total_cmp(&scores[*b]).then(a.cmp(b));
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_score);
    }
    for &i in &order[..k.min(order.len())] {
        values[i] = 0.0;
    }
}

/// Magnitude pruning: lowest `|W|` per row or N:M group.
pub fn magnitude(w: &mut HostMatrix, sparsity: Sparsity) {
    sparsity.prune_by_score(w, |_, v| v.abs());
}

/// Wanda: lowest `|W_ij| * ||X_j||_2`, with `input_norms[j] = ||X_j||_2` over every
/// calibration token.
pub fn wanda(w: &mut HostMatrix, sparsity: Sparsity, input_norms: &[f32]) {
    sparsity.prune_by_score(w, |c, v| v.abs() * input_norms[c]);
}

impl fmt::Display for Sparsity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sparsity::Unstructured(s) => write!(f, "{s}"),
            Sparsity::NOfM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize) -> HostMatrix {
        HostMatrix {
            rows,
            cols,
            data: (0..rows * cols)
                .map(|i| ((i * 7919 % 1013) as f32 - 500.0) / 97.0)
                .collect(),
        }
    }

    #[test]
    fn unstructured_pruning_zeroes_the_same_count_in_every_row() {
        for s in [0.5, 0.3, 0.9] {
            let mut w = matrix(7, 100);
            magnitude(&mut w, Sparsity::Unstructured(s));
            let k = (s * 100.0).round() as usize;
            for row in w.data.chunks(100) {
                assert_eq!(row.iter().filter(|v| **v == 0.0).count(), k);
            }
        }
    }

    #[test]
    fn n_of_m_pruning_zeroes_n_of_every_group() {
        for (n, m) in [(2, 4), (4, 8), (1, 4)] {
            let mut w = matrix(5, 64);
            magnitude(&mut w, Sparsity::NOfM { n, m });
            for g in w.data.chunks(m) {
                assert_eq!(g.iter().filter(|v| **v == 0.0).count(), n);
            }
        }
    }

    #[test]
    fn magnitude_keeps_the_largest_weights() {
        let original = matrix(3, 40);
        let mut w = original.clone();
        magnitude(&mut w, Sparsity::Unstructured(0.5));
        for (row, orig) in w.data.chunks(40).zip(original.data.chunks(40)) {
            let kept_min = row
                .iter()
                .filter(|v| **v != 0.0)
                .map(|v| v.abs())
                .fold(f32::INFINITY, f32::min);
            let pruned_max = orig
                .iter()
                .zip(row)
                .filter(|(_, p)| **p == 0.0)
                .map(|(o, _)| o.abs())
                .fold(0.0, f32::max);
            assert!(pruned_max <= kept_min);
        }
    }

    #[test]
    fn wanda_differs_from_magnitude_when_input_norms_differ() {
        let original = matrix(4, 32);
        let (mut by_magnitude, mut by_wanda) = (original.clone(), original.clone());
        magnitude(&mut by_magnitude, Sparsity::Unstructured(0.5));
        // Equal norms: the same mask.
        wanda(&mut by_wanda, Sparsity::Unstructured(0.5), &[3.0; 32]);
        assert_eq!(by_wanda, by_magnitude);
        // An input that is 100x louder keeps its weights.
        let mut norms = vec![1.0; 32];
        norms[5] = 100.0;
        let mut by_wanda = original.clone();
        wanda(&mut by_wanda, Sparsity::Unstructured(0.5), &norms);
        assert_ne!(by_wanda, by_magnitude);
        assert!(by_wanda.data.chunks(32).all(|row| row[5] != 0.0));
    }

    #[test]
    fn patterns_that_do_not_fit_are_refused() {
        let s = Sparsity::NOfM { n: 2, m: 4 };
        assert!(s.check("blk.0.ffn_down", 64).is_ok());
        assert!(matches!(
            s.check("blk.0.ffn_down", 66),
            Err(CompressError::GroupDoesNotFit { cols: 66, m: 4, .. })
        ));
        assert!(Sparsity::parse(&["1.0"]).is_err());
        assert!(Sparsity::parse(&["2", "2"]).is_err());
        assert_eq!(Sparsity::parse(&["0.5"]), Ok(Sparsity::Unstructured(0.5)));
    }
}
