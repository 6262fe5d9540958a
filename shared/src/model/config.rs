//! The validated model configuration every loader converts into.
//!
//! File formats have their own mirror structs (GGUF metadata, `config.json`); they resolve every
//! optional field once and end here, so the forward pass never guesses.

use thiserror::Error;

/// Decoder families the forward pass implements (METHOD §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 2/3, SmolLM, Mistral-style decoders without attention biases.
    Llama,
    /// Qwen2/Qwen2.5: Llama with q/k/v projection biases.
    Qwen2,
}

impl Architecture {
    /// The name GGUF and our reports use.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// Which dimensions of a head RoPE rotates together.
///
/// llama.cpp's converter permutes the rows of `attn_q`/`attn_k` of Llama checkpoints so that
/// adjacent dimensions pair up; Hugging Face checkpoints (and llama.cpp's Qwen2) pair dimension
/// `j` with `j + head_dim/2`. Loading one with the other's pairing gives fluent-looking garbage,
/// so the loader that knows the file's convention sets this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopePairing {
    /// (2j, 2j+1): llama.cpp's "normal" RoPE, GGUF Llama files.
    Interleaved,
    /// (j, j + head_dim/2): "NeoX" RoPE, Hugging Face checkpoints and GGUF Qwen2.
    Halves,
}

/// Llama-3.x RoPE frequency scaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// How RoPE's frequencies depart from `theta^(-2j/head_dim)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Llama-3.x scaling from its parameters (Hugging Face `rope_scaling`).
    Llama3(Llama3RopeScaling),
    /// One divisor per rotated pair, as GGUF's `rope_freqs.weight` stores them (llama.cpp's
    /// converter writes Llama-3.x scaling this way).
    FreqFactors { factors: Vec<f32> },
}

/// A complete, validated decoder configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub d_ff: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_pairing: RopePairing,
    pub rope_scaling: Option<RopeScaling>,
    /// Longest sequence (prompt + generation) the model was trained for.
    pub max_positions: usize,
    /// Qwen2-style biases on the q, k and v projections.
    pub qkv_bias: bool,
    /// The output head reuses the token embedding.
    pub tied_embeddings: bool,
}

/// Why a configuration cannot describe a model we can run.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("unsupported architecture `{0}` (supported: llama, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("missing config field `{0}`")]
    Missing(&'static str),
    #[error("config field `{field}` has invalid value {value}: {why}")]
    Invalid {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

/// Generous upper bounds: larger values are far beyond any Llama-family release and would only
/// come from a corrupt or hostile file asking us to allocate absurd amounts of memory.
const MAX_VOCAB: usize = 1 << 21;
const MAX_WIDTH: usize = 1 << 16;
const MAX_LAYERS: usize = 512;
const MAX_HEADS: usize = 1024;
const MAX_FF: usize = 1 << 18;

impl ModelConfig {
    /// Checks the invariants the forward pass relies on.
    pub fn validate(self) -> Result<Self, ConfigError> {
        fn bounded(field: &'static str, value: usize, max: usize) -> Result<(), ConfigError> {
            if value == 0 || value > max {
                return Err(ConfigError::Invalid {
                    field,
                    value: value.to_string(),
                    why: "must be positive and within the supported range",
                });
            }
            Ok(())
        }
        bounded("vocab_size", self.vocab_size, MAX_VOCAB)?;
        bounded("d_model", self.d_model, MAX_WIDTH)?;
        bounded("n_layers", self.n_layers, MAX_LAYERS)?;
        bounded("n_heads", self.n_heads, MAX_HEADS)?;
        bounded("n_kv_heads", self.n_kv_heads, self.n_heads)?;
        bounded("head_dim", self.head_dim, MAX_WIDTH)?;
        bounded("d_ff", self.d_ff, MAX_FF)?;
        bounded("max_positions", self.max_positions, 1 << 24)?;
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ConfigError::Invalid {
                field: "n_kv_heads",
                value: self.n_kv_heads.to_string(),
                why: "must divide n_heads (grouped-query attention)",
            });
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::Invalid {
                field: "head_dim",
                value: self.head_dim.to_string(),
                why: "RoPE rotates pairs of dimensions, so it must be even",
            });
        }
        let positive = |field: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    field,
                    value: v.to_string(),
                    why: "must be a positive finite number",
                })
            }
        };
        positive("rms_norm_eps", self.rms_norm_eps)?;
        positive("rope_theta", self.rope_theta)?;
        if let Some(RopeScaling::FreqFactors { factors }) = &self.rope_scaling {
            if factors.len() != self.head_dim / 2 {
                return Err(ConfigError::Invalid {
                    field: "rope_freqs",
                    value: format!("{} factors", factors.len()),
                    why: "needs one factor per rotated pair (head_dim / 2)",
                });
            }
            if let Some(&bad) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
                return Err(ConfigError::Invalid {
                    field: "rope_freqs",
                    value: bad.to_string(),
                    why: "factors must be positive finite numbers",
                });
            }
        }
        if let Some(RopeScaling::Llama3(s)) = &self.rope_scaling {
            positive("rope_scaling.factor", s.factor)?;
            positive("rope_scaling.low_freq_factor", s.low_freq_factor)?;
            positive("rope_scaling.high_freq_factor", s.high_freq_factor)?;
            if s.high_freq_factor <= s.low_freq_factor {
                return Err(ConfigError::Invalid {
                    field: "rope_scaling.high_freq_factor",
                    value: s.high_freq_factor.to_string(),
                    why: "must exceed low_freq_factor",
                });
            }
            bounded(
                "rope_scaling.original_max_position_embeddings",
                s.original_max_position_embeddings,
                1 << 24,
            )?;
        }
        Ok(self)
    }

    /// A tiny valid configuration for tests: 2 layers, width 64, grouped-query attention and
    /// q/k/v biases so every code path runs.
    #[cfg(any(test, feature = "test-support"))]
    pub fn tiny() -> Self {
        ModelConfig {
            architecture: Architecture::Qwen2,
            vocab_size: 96,
            d_model: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            d_ff: 128,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            rope_pairing: RopePairing::Halves,
            rope_scaling: None,
            max_positions: 256,
            qkv_bias: true,
            tied_embeddings: true,
        }
    }

    /// Number of parameters (a tied output head counted once; q/k/v biases only when
    /// `qkv_bias` requires them): what a model needs in memory, times the bytes per parameter.
    pub fn n_params(&self) -> u64 {
        let [vocab, d] = [self.vocab_size, self.d_model].map(|v| v as u64);
        let q = (self.n_heads * self.head_dim) as u64;
        let kv = (self.n_kv_heads * self.head_dim) as u64;
        let bias = if self.qkv_bias { q + 2 * kv } else { 0 };
        let head = if self.tied_embeddings { 0 } else { vocab * d };
        vocab * d + head + self.n_layers as u64 * (bias + 2 * d) + d + self.n_linear_params()
    }

    /// Weights of the blocks' linear layers (q, k, v, o, gate, up, down): what compression
    /// rewrites.
    pub fn n_linear_params(&self) -> u64 {
        let [d, ff] = [self.d_model, self.d_ff].map(|v| v as u64);
        let q = (self.n_heads * self.head_dim) as u64;
        let kv = (self.n_kv_heads * self.head_dim) as u64;
        self.n_layers as u64 * (2 * d * q + 2 * d * kv + 3 * d * ff)
    }

    /// Inverse frequencies of the rotary embedding, one per rotated pair, scaled as configured:
    /// Llama-3 scaling by the formula of Meta's reference implementation, frequency factors by
    /// division, as llama.cpp applies `rope_freqs.weight`.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|j| {
                let inv = 1.0 / self.rope_theta.powf(2.0 * j as f64 / self.head_dim as f64);
                match &self.rope_scaling {
                    None => inv,
                    Some(RopeScaling::FreqFactors { factors }) => inv / f64::from(factors[j]),
                    Some(RopeScaling::Llama3(s)) => {
                        let old = s.original_max_position_embeddings as f64;
                        let low_wavelen = old / s.low_freq_factor;
                        let high_wavelen = old / s.high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / inv;
                        if wavelen < high_wavelen {
                            inv
                        } else if wavelen > low_wavelen {
                            inv / s.factor
                        } else {
                            let smooth = (old / wavelen - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * inv / s.factor + smooth * inv
                        }
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_params_counts_what_burn_allocates() {
        use burn::module::Module;
        let device = burn::tensor::Device::flex();
        let untied = ModelConfig {
            tied_embeddings: false,
            architecture: Architecture::Llama,
            ..ModelConfig::tiny()
        };
        for config in [ModelConfig::tiny(), untied] {
            let model = crate::model::Llama::random(&config, 1, &device);
            assert_eq!(model.num_params() as u64, config.n_params(), "{config:?}");
        }
    }

    #[test]
    fn tiny_is_valid() {
        assert!(ModelConfig::tiny().validate().is_ok());
    }

    #[test]
    fn rejects_kv_heads_not_dividing_heads() {
        let cfg = ModelConfig {
            n_kv_heads: 3,
            ..ModelConfig::tiny()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::Invalid {
                field: "n_kv_heads",
                ..
            })
        ));
    }

    #[test]
    fn rejects_absurd_sizes() {
        let cfg = ModelConfig {
            vocab_size: usize::MAX,
            ..ModelConfig::tiny()
        };
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::Invalid {
                field: "vocab_size",
                ..
            })
        ));
    }

    /// Llama-3.1-8B's `rope_scaling`.
    const LLAMA_31_SCALING: Llama3RopeScaling = Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };

    #[test]
    fn freq_factors_are_checked() {
        let with = |factors: Vec<f32>| ModelConfig {
            rope_scaling: Some(RopeScaling::FreqFactors { factors }),
            ..ModelConfig::tiny()
        };
        let field = |c: ModelConfig| match c.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(with(vec![1.0; 3])), "rope_freqs");
        assert_eq!(field(with(vec![0.0; 8])), "rope_freqs");
        assert_eq!(field(with(vec![f32::NAN; 8])), "rope_freqs");
        assert!(with(vec![2.0; 8]).validate().is_ok());
    }

    #[test]
    fn llama3_scaling_matches_reference_values() {
        // Llama-3.1-8B: theta 500000, factor 8, low 1, high 4, original 8192. The highest
        // frequency is untouched, the lowest divided by the factor.
        let cfg = ModelConfig {
            head_dim: 128,
            rope_theta: 500_000.0,
            rope_scaling: Some(RopeScaling::Llama3(LLAMA_31_SCALING)),
            ..ModelConfig::tiny()
        };
        let scaled = cfg.rope_inv_freq();
        let plain = ModelConfig {
            rope_scaling: None,
            ..cfg.clone()
        }
        .rope_inv_freq();
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-15);
        assert!(scaled.iter().zip(&plain).all(|(s, p)| s <= p));
    }
}
