//! How sure a reported number is: Wilson 95% intervals for rates, and paired bootstrap 95%
//! intervals for the difference of two rates judged on the same prompts (compressed vs base,
//! after vs before a repair). A difference whose interval holds 0 is not told apart from
//! noise at the study's sample size.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The standard normal quantile of 0.975.
const Z95: f64 = 1.959_963_984_540_054;

/// Bootstrap resamples: the 2.5% and 97.5% quantiles of 10 000 move by well under a point.
const RESAMPLES: usize = 10_000;

/// Every bootstrap starts from this seed, so a tab and the server give the same interval for
/// the same verdicts.
const BOOTSTRAP_SEED: u64 = 0x5eed;

/// A 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Whether 0 lies inside: the difference is not told apart from none.
    pub fn holds_zero(&self) -> bool {
        self.low <= 0.0 && 0.0 <= self.high
    }

    /// In percentage points, to whole points: `[4, 31]`, for narrow table cells.
    pub fn whole_points(&self) -> String {
        format!("[{:.0},{:.0}]", 100.0 * self.low, 100.0 * self.high)
    }
}

/// A rate and its interval in percent: `12.5% [4.3, 31.0]`.
pub fn percent(rate: f64, interval: Interval) -> String {
    format!(
        "{:.1}% [{:.1}, {:.1}]",
        100.0 * rate,
        100.0 * interval.low,
        100.0 * interval.high
    )
}

impl Difference {
    /// In signed percentage points, `*` when the interval leaves 0 out: `+9.4 [+3.1, +15.6]*`.
    pub fn points(&self) -> String {
        format!(
            "{:+.1} [{:+.1}, {:+.1}]{}",
            100.0 * self.estimate,
            100.0 * self.interval.low,
            100.0 * self.interval.high,
            if self.interval.holds_zero() { "" } else { "*" }
        )
    }
}

/// The Wilson score interval of `k` successes in `n` trials (Wilson 1927; no continuity
/// correction), which keeps its coverage near 0 and 1 and at small `n`, where the normal
/// approximation's does not. `[0, 1]` when `n` is 0.
pub fn wilson(k: usize, n: usize) -> Interval {
    if n == 0 {
        return Interval {
            low: 0.0,
            high: 1.0,
        };
    }
    let (k, n) = (k.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    // At k = 0 (k = n) the bound is 0 (1) exactly, which rounding can miss by an ulp.
    Interval {
        low: if k == 0.0 { 0.0 } else { centre - half },
        high: if k == n { 1.0 } else { centre + half },
    }
}

/// The change of a rate from one condition to another on the same prompts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Difference {
    /// `rate(after) - rate(before)`.
    pub estimate: f64,
    /// Percentile bootstrap over prompts, resampled in pairs.
    pub interval: Interval,
}

/// `mean(after) - mean(before)` over prompts judged in both conditions (`before[i]` and
/// `after[i]` are the same prompt's verdicts), with a paired percentile bootstrap interval:
/// prompts are drawn with replacement and each keeps both of its verdicts, so what the
/// conditions share (an easy prompt is easy in both) does not widen the interval. `None` when
/// the lists are empty or of different lengths.
pub fn paired_difference(before: &[bool], after: &[bool]) -> Option<Difference> {
    let n = before.len();
    if n == 0 || after.len() != n {
        return None;
    }
    let change: Vec<i32> = before
        .iter()
        .zip(after)
        .map(|(&b, &a)| i32::from(a) - i32::from(b))
        .collect();
    let estimate = f64::from(change.iter().sum::<i32>()) / n as f64;
    let mut rng = StdRng::seed_from_u64(BOOTSTRAP_SEED);
    let mut means: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let total: i32 = (0..n).map(|_| change[rng.random_range(0..n)]).sum();
            f64::from(total) / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    Some(Difference {
        estimate,
        interval: Interval {
            low: quantile(&means, 0.025),
            high: quantile(&means, 0.975),
        },
    })
}

/// The `q` quantile of sorted values, interpolated linearly between order statistics.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (below, frac) = (at.floor() as usize, at.fract());
    match sorted.get(below + 1) {
        Some(&next) => sorted[below] + frac * (next - sorted[below]),
        None => sorted[below],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_intervals_match_newcombes_published_table() {
        // Newcombe (1998), "Two-sided confidence intervals for the single proportion:
        // comparison of seven methods", Statistics in Medicine 17:857-872, Table II, method 3
        // (score interval without continuity correction), to the table's four decimals.
        let table = [
            (81, 263, 0.2553, 0.3662),
            (15, 148, 0.0624, 0.1605),
            (0, 20, 0.0, 0.1611),
            (1, 29, 0.0061, 0.1718),
        ];
        for (k, n, low, high) in table {
            let i = wilson(k, n);
            assert!(
                (i.low - low).abs() < 5e-5 && (i.high - high).abs() < 5e-5,
                "{k}/{n}: {i:?}, published [{low}, {high}]"
            );
        }
    }

    #[test]
    fn wilson_is_symmetric_and_stays_in_the_unit_interval() {
        for n in [1, 2, 7, 32, 403] {
            for k in 0..=n {
                let (i, mirror) = (wilson(k, n), wilson(n - k, n));
                let p = k as f64 / n as f64;
                assert!(
                    0.0 <= i.low && i.low <= p && p <= i.high && i.high <= 1.0,
                    "{k}/{n}"
                );
                assert!((i.low - (1.0 - mirror.high)).abs() < 1e-12, "{k}/{n}");
            }
        }
        assert_eq!(
            wilson(0, 0),
            Interval {
                low: 0.0,
                high: 1.0
            }
        );
    }

    /// Verdicts in which `before` holds for the first `b` prompts and `after` for the `a`
    /// prompts starting at `shift`: the two overlap on `b - shift` prompts.
    fn verdicts(n: usize, b: usize, a: usize, shift: usize) -> (Vec<bool>, Vec<bool>) {
        (
            (0..n).map(|i| i < b).collect(),
            (0..n).map(|i| (shift..shift + a).contains(&i)).collect(),
        )
    }

    #[test]
    fn the_paired_bootstrap_agrees_with_the_normal_approximation_at_large_n() {
        // 400 prompts, 120 answered before, 160 after, 100 of them in both: the change per
        // prompt is -1 on 20, +1 on 60, 0 on 320, so its mean is 0.1 and its variance
        // (80/400 - 0.1^2) = 0.19; the normal interval is 0.1 +- 1.96 sqrt(0.19 / 400).
        let (before, after) = verdicts(400, 120, 160, 20);
        let d = paired_difference(&before, &after).unwrap();
        assert!((d.estimate - 0.1).abs() < 1e-12);
        let half = Z95 * (0.19f64 / 400.0).sqrt();
        assert!(
            (d.interval.low - (0.1 - half)).abs() < 0.006
                && (d.interval.high - (0.1 + half)).abs() < 0.006,
            "{d:?} against 0.1 +- {half}"
        );
        assert!(!d.interval.holds_zero());
    }

    #[test]
    fn pairing_narrows_the_interval_when_the_conditions_agree_on_most_prompts() {
        // The same rates (30% and 40% of 100), once with every prompt answered before also
        // answered after, once with the two sets disjoint: only the second is noise-sized.
        let (b, a) = verdicts(100, 30, 40, 0);
        let shared = paired_difference(&b, &a).unwrap();
        let (b, a) = verdicts(100, 30, 40, 30);
        let disjoint = paired_difference(&b, &a).unwrap();
        assert_eq!(shared.estimate, disjoint.estimate);
        let width = |d: Difference| d.interval.high - d.interval.low;
        assert!(
            width(shared) < 0.6 * width(disjoint),
            "{shared:?} {disjoint:?}"
        );
        assert!(!shared.interval.holds_zero() && disjoint.interval.holds_zero());
    }

    #[test]
    fn identical_verdicts_differ_by_exactly_nothing() {
        let (b, _) = verdicts(16, 5, 0, 0);
        let d = paired_difference(&b, &b).unwrap();
        assert_eq!(
            (d.estimate, d.interval.low, d.interval.high),
            (0.0, 0.0, 0.0)
        );
        assert!(paired_difference(&[], &[]).is_none());
        assert!(paired_difference(&[true], &[true, false]).is_none());
    }

    #[test]
    fn quantiles_interpolate_between_order_statistics() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.0), 0.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert!((quantile(&v, 0.1) - 0.4).abs() < 1e-12);
        assert_eq!(quantile(&[7.0], 0.975), 7.0);
    }
}
