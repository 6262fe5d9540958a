//! Hugging Face checkpoints: `config.json` and safetensors shards (f32, f16, bf16).
//!
//! Both Llama and Qwen2 checkpoints pair RoPE dimensions `(j, j + head_dim/2)`, so their q/k
//! rows are used as stored.

use std::ops::Range;

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::{LoadError, names};
use crate::model::{
    Architecture, ConfigError, HostTensor, Llama3RopeScaling, ModelConfig, RopePairing,
    RopeScaling, StoredTensor, StoredValues, WeightError, WeightName, WeightSource,
};

/// `config.json` as written by transformers, for the fields we use.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<HfRopeScaling>,
    pub max_position_embeddings: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
    /// Mistral v0.1's window (Mistral v0.2+ write null); Qwen2 writes one but switches it off
    /// with `use_sliding_window`.
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct HfRopeScaling {
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
}

impl TryFrom<HfConfig> for ModelConfig {
    type Error = ConfigError;

    fn try_from(c: HfConfig) -> Result<Self, ConfigError> {
        let architecture = match c.architectures.first().map(String::as_str) {
            // Mistral is Llama's block; its sliding window is refused below.
            Some("LlamaForCausalLM" | "MistralForCausalLM") => Architecture::Llama,
            Some("Qwen2ForCausalLM") => Architecture::Qwen2,
            Some(other) => return Err(ConfigError::UnsupportedArchitecture(other.into())),
            None => {
                return Err(ConfigError::UnsupportedArchitecture(
                    c.model_type.unwrap_or_else(|| "<none>".into()),
                ));
            }
        };
        let windowed = c
            .use_sliding_window
            .unwrap_or(architecture != Architecture::Qwen2);
        if let Some(window) = c.sliding_window.filter(|_| windowed) {
            return Err(ConfigError::Invalid {
                field: "sliding_window",
                value: window.to_string(),
                why: "sliding-window attention is not implemented",
            });
        }
        for (field, cap) in [
            ("attn_logit_softcapping", c.attn_logit_softcapping),
            ("final_logit_softcapping", c.final_logit_softcapping),
        ] {
            if let Some(cap) = cap {
                return Err(ConfigError::Invalid {
                    field,
                    value: cap.to_string(),
                    why: "logit soft-capping is not implemented",
                });
            }
        }
        let need = |v: Option<usize>, f: &'static str| v.ok_or(ConfigError::Missing(f));
        let d_model = need(c.hidden_size, "hidden_size")?;
        let n_heads = need(c.num_attention_heads, "num_attention_heads")?;
        let rope_scaling = match c.rope_scaling {
            None => None,
            Some(s) => match s.rope_type.as_deref() {
                Some("llama3") => Some(RopeScaling::Llama3(Llama3RopeScaling {
                    factor: s
                        .factor
                        .ok_or(ConfigError::Missing("rope_scaling.factor"))?,
                    low_freq_factor: s
                        .low_freq_factor
                        .ok_or(ConfigError::Missing("rope_scaling.low_freq_factor"))?,
                    high_freq_factor: s
                        .high_freq_factor
                        .ok_or(ConfigError::Missing("rope_scaling.high_freq_factor"))?,
                    original_max_position_embeddings: s.original_max_position_embeddings.ok_or(
                        ConfigError::Missing("rope_scaling.original_max_position_embeddings"),
                    )?,
                })),
                Some("default") | None => None,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        field: "rope_scaling.rope_type",
                        value: other.into(),
                        why: "only llama3 frequency scaling is supported",
                    });
                }
            },
        };
        ModelConfig {
            architecture,
            vocab_size: need(c.vocab_size, "vocab_size")?,
            d_model,
            n_layers: need(c.num_hidden_layers, "num_hidden_layers")?,
            n_heads,
            n_kv_heads: c.num_key_value_heads.unwrap_or(n_heads),
            head_dim: c.head_dim.unwrap_or(d_model / n_heads.max(1)),
            d_ff: need(c.intermediate_size, "intermediate_size")?,
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: c.rope_theta.unwrap_or(10_000.0),
            rope_pairing: RopePairing::Halves,
            rope_scaling,
            max_positions: c.max_position_embeddings.unwrap_or(4096),
            qkv_bias: match architecture {
                Architecture::Qwen2 => true,
                Architecture::Llama => c.attention_bias.unwrap_or(false),
            },
            tied_embeddings: c.tie_word_embeddings.unwrap_or(false),
        }
        .validate()
    }
}

/// Parses `config.json`.
pub fn parse_config(file: &str, bytes: &[u8]) -> Result<ModelConfig, LoadError> {
    let raw: HfConfig = serde_json::from_slice(bytes).map_err(|source| LoadError::Json {
        file: file.into(),
        source,
    })?;
    ModelConfig::try_from(raw).map_err(|source| LoadError::Config {
        file: file.into(),
        source,
    })
}

/// Called with `(shard index, byte range in that shard)` once a tensor's bytes have been
/// copied out of the shard.
pub type ReleaseBytes<'a> = &'a mut dyn FnMut(usize, Range<usize>);

/// The weights of one checkpoint, possibly split over several safetensors files.
pub struct SafetensorsWeights<'a> {
    /// Per shard: its file name, its bytes and its parsed header.
    shards: Vec<(String, &'a [u8], SafeTensors<'a>)>,
    release: Option<ReleaseBytes<'a>>,
}

impl<'a> SafetensorsWeights<'a> {
    /// Parses the header of every shard (`(file name, bytes)`); the bytes stay where they are
    /// (memory-mapped natively) until a weight is read.
    pub fn new(shards: &[(String, &'a [u8])]) -> Result<Self, LoadError> {
        let shards = shards
            .iter()
            .map(|&(ref file, bytes)| {
                SafeTensors::deserialize(bytes)
                    .map(|st| (file.clone(), bytes, st))
                    .map_err(|e| LoadError::Safetensors {
                        file: file.clone(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(SafetensorsWeights {
            shards,
            release: None,
        })
    }

    /// Tells `release` which bytes each read weight came from, once they have been copied:
    /// a caller that memory-mapped the shards can then drop those pages, so that loading
    /// needs the model plus one tensor rather than the model plus the files.
    pub fn releasing(mut self, release: ReleaseBytes<'a>) -> Self {
        self.release = Some(release);
        self
    }

    pub fn contains(&self, name: WeightName) -> bool {
        let key = names::hf(name);
        self.shards.iter().any(|(_, _, st)| st.tensor(&key).is_ok())
    }
}

impl WeightSource for SafetensorsWeights<'_> {
    fn describe(&self, name: WeightName) -> String {
        names::hf(name)
    }

    fn read(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError> {
        Ok(self.read_stored(name)?.map(|t| HostTensor {
            shape: t.shape,
            data: t.values.into_f32(),
        }))
    }

    /// f16 and bf16 tensors stay 16-bit.
    fn read_stored(&mut self, name: WeightName) -> Result<Option<StoredTensor>, WeightError> {
        let key = names::hf(name);
        let Some((index, file, shard, view)) = self
            .shards
            .iter()
            .enumerate()
            .find_map(|(i, (file, shard, st))| st.tensor(&key).ok().map(|v| (i, file, *shard, v)))
        else {
            return Ok(None);
        };
        let bytes = view.data();
        let values = match view.dtype() {
            Dtype::F32 => StoredValues::F32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::F16 => StoredValues::F16(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            Dtype::BF16 => StoredValues::BF16(
                bytes
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            other => {
                return Err(WeightError::Source {
                    tensor: format!("{file}: {key}"),
                    source: format!("unsupported dtype {other:?} (f32, f16 and bf16 are)").into(),
                });
            }
        };
        if let Some(release) = self.release.as_mut() {
            // `bytes` is a sub-slice of `shard`, so the subtraction cannot underflow.
            let start = bytes.as_ptr() as usize - shard.as_ptr() as usize;
            release(index, start..start + bytes.len());
        }
        Ok(Some(StoredTensor {
            shape: view.shape().to_vec(),
            values,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use burn::tensor::{DType, Device};
    use safetensors::tensor::TensorView;

    use super::*;
    use crate::load::{LoadError, LoadOptions, hf_model};
    use crate::model::random::RandomWeights;
    use crate::model::{BlockWeight, Llama, NoHook, TokenBatch, WeightStorage, read_f32, weights};

    /// Random weights, rounded to bf16 when asked, remembered under their HF names.
    struct Recorder {
        inner: RandomWeights,
        bf16: bool,
        seen: Vec<(String, HostTensor)>,
    }

    impl WeightSource for Recorder {
        fn describe(&self, name: WeightName) -> String {
            names::hf(name)
        }
        fn read(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError> {
            let mut t = self.inner.read(name)?;
            if let Some(t) = t.as_mut() {
                if self.bf16 {
                    for v in &mut t.data {
                        *v = half::bf16::from_f32(*v).to_f32();
                    }
                }
                self.seen.push((names::hf(name), t.clone()));
            }
            Ok(t)
        }
    }

    fn config_json(c: &ModelConfig) -> Vec<u8> {
        let arch = match c.architecture {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        };
        serde_json::to_vec(&serde_json::json!({
            "architectures": [arch],
            "vocab_size": c.vocab_size,
            "hidden_size": c.d_model,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "num_key_value_heads": c.n_kv_heads,
            "intermediate_size": c.d_ff,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_positions,
            "tie_word_embeddings": c.tied_embeddings,
        }))
        .expect("json")
    }

    /// A reference model and its weights serialized as two safetensors shards.
    fn checkpoint(config: &ModelConfig, bf16: bool) -> (Llama, Vec<Vec<u8>>) {
        let device = Device::flex();
        let mut rec = Recorder {
            inner: RandomWeights::new(config.clone(), 21),
            bf16,
            seen: Vec::new(),
        };
        let model = weights::build(
            config.clone(),
            &mut rec,
            &device,
            WeightStorage::AsStored,
            &mut |_, _| {},
        )
        .expect("builds");
        let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = rec
            .seen
            .into_iter()
            .map(|(name, t)| {
                let bytes = if bf16 {
                    t.data
                        .iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect()
                } else {
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect()
                };
                (name, t.shape, bytes)
            })
            .collect();
        let dtype = if bf16 { Dtype::BF16 } else { Dtype::F32 };
        let half_way = encoded.len() / 2;
        let shards = [&encoded[..half_way], &encoded[half_way..]]
            .iter()
            .map(|part| {
                let views: Vec<(String, TensorView<'_>)> = part
                    .iter()
                    .map(|(n, s, b)| {
                        (
                            n.clone(),
                            TensorView::new(dtype, s.clone(), b).expect("view"),
                        )
                    })
                    .collect();
                safetensors::serialize(views, None::<HashMap<String, String>>).expect("serialize")
            })
            .collect();
        (model, shards)
    }

    fn named(shards: &[Vec<u8>]) -> Vec<(String, &[u8])> {
        shards
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("model-0000{}-of-00002.safetensors", i + 1), &b[..]))
            .collect()
    }

    fn load(config: &ModelConfig, shards: &[(String, &[u8])]) -> Result<Llama, LoadError> {
        hf_model(
            &config_json(config),
            shards,
            &Device::flex(),
            LoadOptions::default(),
            &mut |_, _| {},
        )
    }

    fn logits(model: &Llama) -> Vec<f32> {
        let batch =
            TokenBatch::left_padded(&[vec![3, 1, 4, 1, 5], vec![9, 2, 6]], 0, &model.device());
        read_f32(model.last_logits(&batch, &mut NoHook))
    }

    /// The logits of two loads of the same values: a 16-bit matrix is multiplied by its own
    /// kernels, whose f32 sums run in another order than the dense f32 product's, so they agree
    /// to f32 rounding (logits are about 1 here), not bit for bit.
    fn assert_same_logits(a: &Llama, b: &Llama) {
        let (a, b) = (logits(a), logits(b));
        assert_eq!(a.len(), b.len());
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 1e-5, "logits differ by {diff}");
    }

    #[test]
    fn sliding_windows_and_soft_capping_are_refused_by_field() {
        let base = |arch: &str, extra: &str| {
            format!(
                r#"{{"architectures": ["{arch}"], "vocab_size": 96, "hidden_size": 64,
                "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128{extra}}}"#
            )
        };
        let parse =
            |arch: &str, extra: &str| parse_config("config.json", base(arch, extra).as_bytes());
        let refused = |arch: &str, extra: &str| match parse(arch, extra) {
            Err(LoadError::Config {
                source: ConfigError::Invalid { field, .. },
                ..
            }) => field,
            other => panic!("{arch} {extra}: {other:?}"),
        };
        // Mistral v0.2+: no window, Llama's block.
        let mistral = parse("MistralForCausalLM", r#", "sliding_window": null"#).unwrap();
        assert_eq!(mistral.architecture, Architecture::Llama);
        assert_eq!(
            refused("MistralForCausalLM", r#", "sliding_window": 4096"#),
            "sliding_window"
        );
        // Qwen2 configs carry a window that use_sliding_window (default off) leaves unused.
        assert!(parse("Qwen2ForCausalLM", r#", "sliding_window": 32768"#).is_ok());
        assert!(
            parse(
                "Qwen2ForCausalLM",
                r#", "sliding_window": 32768, "use_sliding_window": false"#
            )
            .is_ok()
        );
        assert_eq!(
            refused(
                "Qwen2ForCausalLM",
                r#", "sliding_window": 32768, "use_sliding_window": true"#
            ),
            "sliding_window"
        );
        assert_eq!(
            refused("LlamaForCausalLM", r#", "final_logit_softcapping": 30.0"#),
            "final_logit_softcapping"
        );
    }

    #[test]
    fn sharded_f32_qwen2_checkpoint_loads_to_the_same_model() {
        let config = ModelConfig::tiny();
        let (reference, shards) = checkpoint(&config, false);
        let loaded = load(&config, &named(&shards)).expect("loads");
        assert_eq!(loaded.config(), &config);
        assert_eq!(logits(&loaded), logits(&reference));
    }

    #[test]
    fn bf16_llama_checkpoint_with_untied_head_loads_to_the_same_model() {
        let config = ModelConfig {
            architecture: Architecture::Llama,
            qkv_bias: false,
            tied_embeddings: false,
            ..ModelConfig::tiny()
        };
        let (reference, shards) = checkpoint(&config, true);
        let loaded = load(&config, &named(&shards)).expect("loads");
        assert!(!loaded.config().tied_embeddings && loaded.head.is_some());
        assert_same_logits(&loaded, &reference);
    }

    #[test]
    fn a_bf16_checkpoint_keeps_its_matrices_in_bf16_unless_f32_is_asked_for() {
        let config = ModelConfig {
            tied_embeddings: false,
            ..ModelConfig::tiny()
        };
        let (_, shards) = checkpoint(&config, true);
        let shards = named(&shards);
        let mut released = Vec::new();
        let mut release = |shard: usize, bytes: Range<usize>| released.push((shard, bytes));
        let kept = hf_model(
            &config_json(&config),
            &shards,
            &Device::flex(),
            LoadOptions {
                storage: WeightStorage::AsStored,
                release: Some(&mut release),
            },
            &mut |_, _| {},
        )
        .expect("loads");
        let block = &kept.blocks[0];
        for m in [
            kept.embedding_values(),
            kept.head_values().expect("untied"),
            block.attn.q.weight_values(),
            block.mlp.down.weight_values(),
        ] {
            assert_eq!(m.dtype(), DType::BF16);
        }
        assert_eq!(block.attn_norm.weight.val().dtype(), DType::F32);
        assert_eq!(
            block
                .attn
                .q
                .bias
                .as_ref()
                .expect("qwen2 bias")
                .val()
                .dtype(),
            DType::F32
        );
        // Every tensor's bytes were handed back, each range inside its shard.
        let n_tensors = 3 + config.n_layers * BlockWeight::ALL.len();
        assert_eq!(released.len(), n_tensors);
        assert!(
            released
                .iter()
                .all(|(s, r)| r.start < r.end && r.end <= shards[*s].1.len())
        );

        let widened = hf_model(
            &config_json(&config),
            &shards,
            &Device::flex(),
            LoadOptions {
                storage: WeightStorage::F32,
                release: None,
            },
            &mut |_, _| {},
        )
        .expect("loads");
        assert_eq!(
            widened.blocks[0].mlp.down.weight_values().dtype(),
            DType::F32
        );
        // bf16 values widen exactly, and every product is computed in f32 either way.
        assert_same_logits(&kept, &widened);
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let config = ModelConfig::tiny();
        let (_, shards) = checkpoint(&config, false);
        // Only the first shard: the second half of the weights is missing.
        let err = load(&config, &named(&shards)[..1]).expect_err("incomplete checkpoint");
        match err {
            LoadError::Weights {
                source: WeightError::Missing { tensor },
                ..
            } => assert!(tensor.starts_with("model.layers.1."), "{tensor}"),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn a_wrong_shape_is_named() {
        let config = ModelConfig::tiny();
        let (_, shards) = checkpoint(&config, false);
        let wrong = ModelConfig { d_ff: 96, ..config };
        let err = load(&wrong, &named(&shards)).expect_err("shape mismatch");
        assert!(
            matches!(&err, LoadError::Weights { source: WeightError::Shape { tensor, .. }, .. }
                if tensor == "model.layers.0.mlp.gate_proj.weight"),
            "{err}"
        );
    }

    #[test]
    fn truncated_shards_and_unknown_architectures_are_clear_errors() {
        let config = ModelConfig::tiny();
        let (_, shards) = checkpoint(&config, false);
        let cut = &shards[0][..shards[0].len() - 7];
        let err = load(&config, &[("a.safetensors".into(), cut)]).expect_err("truncated");
        assert!(
            matches!(&err, LoadError::Safetensors { file, .. } if file == "a.safetensors"),
            "{err}"
        );

        let mut json: serde_json::Value =
            serde_json::from_slice(&config_json(&config)).expect("json");
        json["architectures"] = serde_json::json!(["MambaForCausalLM"]);
        let err = parse_config("config.json", &serde_json::to_vec(&json).expect("json"))
            .expect_err("unsupported");
        assert!(matches!(
            err,
            LoadError::Config { source: ConfigError::UnsupportedArchitecture(a), .. } if a == "MambaForCausalLM"
        ));
    }
}
