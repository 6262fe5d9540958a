//! The same study under several seeds of the prompt sampling (which prompts train, validate
//! and evaluate): every seed's value of each headline number, and their spread, so that a
//! result that holds for one draw of the prompts only is seen as such.

use super::compare::CompareReport;
use super::repair_study::AirdReport;

/// One number over the seeds of a study.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    /// In the order of the seeds; NaN (null) where a seed's number is undefined.
    #[serde(deserialize_with = "super::select::nans_from_nulls")]
    pub values: Vec<f64>,
    /// Over the defined values; NaN (null) when none is.
    #[serde(deserialize_with = "super::select::nan_from_null")]
    pub mean: f64,
    /// The sample standard deviation (n - 1); NaN (null) with fewer than two defined values.
    #[serde(deserialize_with = "super::select::nan_from_null")]
    pub sd: f64,
    #[serde(deserialize_with = "super::select::nan_from_null")]
    pub min: f64,
    #[serde(deserialize_with = "super::select::nan_from_null")]
    pub max: f64,
}

impl Spread {
    pub fn of(values: Vec<f64>) -> Spread {
        let defined: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let n = defined.len() as f64;
        let mean = defined.iter().sum::<f64>() / n;
        let sd = if defined.len() < 2 {
            f64::NAN
        } else {
            (defined.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        let (min, max) = if defined.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (
                defined.iter().copied().fold(f64::INFINITY, f64::min),
                defined.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            )
        };
        Spread {
            values,
            mean,
            sd,
            min,
            max,
        }
    }

    /// `mean ± sd [min, max]` with `digits` decimals, each scaled by `scale` (100 for rates
    /// in percent).
    pub fn describe(&self, scale: f64, digits: usize) -> String {
        let v = |x: f64| format!("{:.digits$}", scale * x);
        format!(
            "{} ± {} [{}, {}]",
            v(self.mean),
            v(self.sd),
            v(self.min),
            v(self.max)
        )
    }
}

/// `f` of each seed's report.
fn spread<R>(reports: &[R], f: impl Fn(&R) -> f64) -> Spread {
    Spread::of(reports.iter().map(f).collect())
}

/// A comparison's headline numbers over its seeds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompareSeeds {
    pub seeds: Vec<u64>,
    pub base_asr: Spread,
    pub base_harmless_refusal: Spread,
    /// The base's split-half cosine at its selected cell.
    pub noise_floor: Spread,
    pub compressed: Vec<CompressedSeeds>,
}

/// One compressed model's headline numbers over the seeds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CompressedSeeds {
    pub spec: String,
    pub cosine_at_base_selected: Spread,
    pub asr: Spread,
    pub harmless_refusal: Spread,
    pub asr_ablate_base: Spread,
    pub harmless_refusal_add_base: Spread,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aird_asr: Option<Spread>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aird_harmless_refusal: Option<Spread>,
}

impl CompareSeeds {
    /// The spread of `reports`, one per seed of `seeds`, each with the same compressed models.
    pub fn of<M>(seeds: &[u64], reports: &[CompareReport<M>]) -> CompareSeeds {
        let specs = reports.first().map_or(&[][..], |r| &r.compressed[..]);
        let compressed = (0..specs.len())
            .map(|i| {
                let of = |f: &dyn Fn(&super::compare::CompressedReport) -> f64| {
                    spread(reports, |r| f(&r.compressed[i]))
                };
                let repaired = specs[i].aird.is_some();
                CompressedSeeds {
                    spec: specs[i].spec.clone(),
                    cosine_at_base_selected: of(&|c| c.cosine_at_base_selected),
                    asr: of(&|c| c.baseline.asr.rate),
                    harmless_refusal: of(&|c| c.baseline.harmless_refusal.rate),
                    asr_ablate_base: of(&|c| c.asr_ablate_base.rate),
                    harmless_refusal_add_base: of(&|c| c.harmless_refusal_add_base.rate),
                    aird_asr: repaired
                        .then(|| of(&|c| c.aird.as_ref().map_or(f64::NAN, |a| a.asr.rate))),
                    aird_harmless_refusal: repaired.then(|| {
                        of(&|c| {
                            c.aird
                                .as_ref()
                                .map_or(f64::NAN, |a| a.harmless_refusal.rate)
                        })
                    }),
                }
            })
            .collect();
        CompareSeeds {
            seeds: seeds.to_vec(),
            base_asr: spread(reports, |r| r.base.baseline.asr.rate),
            base_harmless_refusal: spread(reports, |r| r.base.baseline.harmless_refusal.rate),
            noise_floor: spread(reports, |r| {
                r.base
                    .noise_floor
                    .as_ref()
                    .map_or(f64::NAN, |f| f.at_base_selected)
            }),
            compressed,
        }
    }
}

/// A repair study's headline numbers over its seeds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AirdSeeds {
    pub seeds: Vec<u64>,
    pub drift_cosine: Spread,
    pub variants: Vec<VariantSeeds>,
}

/// One variant's rates over the seeds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariantSeeds {
    pub name: String,
    pub asr: Spread,
    pub harmless_refusal: Spread,
}

impl AirdSeeds {
    /// The spread of `reports`, one per seed of `seeds`.
    pub fn of<M>(seeds: &[u64], reports: &[AirdReport<M>]) -> AirdSeeds {
        let names = reports.first().map_or(&[][..], |r| &r.variants[..]);
        AirdSeeds {
            seeds: seeds.to_vec(),
            drift_cosine: spread(reports, |r| r.drift.cosine),
            variants: (0..names.len())
                .map(|i| VariantSeeds {
                    name: names[i].name.clone(),
                    asr: spread(reports, |r| r.variants[i].asr.rate),
                    harmless_refusal: spread(reports, |r| r.variants[i].harmless_refusal.rate),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_skips_undefined_values_and_uses_the_sample_deviation() {
        let s = Spread::of(vec![0.25, f64::NAN, 0.5, 0.75]);
        assert_eq!(s.values.len(), 4);
        assert!((s.mean - 0.5).abs() < 1e-12);
        // Sample variance of 0.25, 0.5, 0.75: (0.0625 + 0 + 0.0625) / 2.
        assert!((s.sd - 0.0625f64.sqrt()).abs() < 1e-12, "{s:?}");
        assert_eq!((s.min, s.max), (0.25, 0.75));
        assert_eq!(s.describe(100.0, 1), "50.0 ± 25.0 [25.0, 75.0]");
        let one = Spread::of(vec![0.5]);
        assert!(one.sd.is_nan() && one.mean == 0.5);
        let none = Spread::of(vec![f64::NAN]);
        assert!(none.mean.is_nan() && none.min.is_nan());
    }
}
