//! Random models for tests (the `test-support` feature): real architecture, random weights.

use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::ModelConfig;
use super::llama::Llama;
use super::weights::{
    self, BlockWeight, HostTensor, StoredTensor, StoredValues, WeightError, WeightName,
    WeightSource, WeightStorage,
};

/// Deterministic weights drawn from a seeded generator: matrices uniform in ±1/sqrt(d_in)
/// (activations keep their scale through the layers), norm gains near 1.
pub struct RandomWeights {
    config: ModelConfig,
    rng: StdRng,
}

impl RandomWeights {
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        RandomWeights {
            config,
            rng: StdRng::seed_from_u64(seed),
        }
    }
}

impl WeightSource for RandomWeights {
    fn describe(&self, name: WeightName) -> String {
        format!("random {name:?}")
    }

    fn read(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError> {
        let shape = name.expected_shape(&self.config);
        let n: usize = shape.iter().product();
        let is_norm = matches!(
            name,
            WeightName::FinalNorm
                | WeightName::Block(_, BlockWeight::AttnNorm | BlockWeight::MlpNorm)
        );
        let data = if is_norm {
            (0..n).map(|_| self.rng.random_range(0.8..1.2)).collect()
        } else {
            let fan_in = *shape.last().unwrap_or(&1) as f32;
            let bound = if shape.len() == 1 {
                0.1
            } else {
                fan_in.sqrt().recip()
            };
            (0..n)
                .map(|_| self.rng.random_range(-bound..bound))
                .collect()
        };
        Ok(Some(HostTensor { shape, data }))
    }
}

/// [`RandomWeights`] rounded to bf16 and handed over as bf16, as a bf16 checkpoint is.
struct RandomBf16(RandomWeights);

impl WeightSource for RandomBf16 {
    fn describe(&self, name: WeightName) -> String {
        self.0.describe(name)
    }

    fn read(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError> {
        self.0.read(name)
    }

    fn read_stored(&mut self, name: WeightName) -> Result<Option<StoredTensor>, WeightError> {
        Ok(self.0.read(name)?.map(|t| StoredTensor {
            shape: t.shape,
            values: StoredValues::BF16(t.data.into_iter().map(half::bf16::from_f32).collect()),
        }))
    }
}

/// [`RandomWeights`] with every matrix handed over as GGML blocks of one type, as a quantized
/// GGUF is.
#[cfg(test)]
struct RandomBlocks(RandomWeights, crate::gguf::GgmlType);

#[cfg(test)]
impl WeightSource for RandomBlocks {
    fn describe(&self, name: WeightName) -> String {
        self.0.describe(name)
    }

    fn read(&mut self, name: WeightName) -> Result<Option<HostTensor>, WeightError> {
        self.0.read(name)
    }

    fn read_stored(&mut self, name: WeightName) -> Result<Option<StoredTensor>, WeightError> {
        Ok(self.0.read(name)?.map(|t| {
            let values = if t.shape.len() == 2 {
                let bytes = crate::gguf::quantize(self.1, &t.data)
                    .unwrap_or_else(|e| panic!("a test model's widths fit {}: {e}", self.1));
                StoredValues::Blocks(self.1, bytes.into())
            } else {
                StoredValues::F32(t.data)
            };
            StoredTensor {
                shape: t.shape,
                values,
            }
        }))
    }
}

impl Llama {
    /// [`Llama::random`]'s weights quantized to `ty` and kept as its blocks: a stand-in for a
    /// quantized GGUF on the CPU.
    #[cfg(test)]
    pub fn random_quantized(config: &ModelConfig, seed: u64, ty: crate::gguf::GgmlType) -> Llama {
        built(
            config,
            &mut RandomBlocks(RandomWeights::new(config.clone(), seed), ty),
            &Device::flex(),
        )
    }

    /// [`Llama::random`]'s weights rounded to bf16, its large matrices kept in bf16 where the
    /// device supports it: a stand-in for a bf16 checkpoint.
    pub fn random_bf16(config: &ModelConfig, seed: u64, device: &Device) -> Llama {
        built(
            config,
            &mut RandomBf16(RandomWeights::new(config.clone(), seed)),
            device,
        )
    }

    /// A model with this architecture and seeded random weights.
    pub fn random(config: &ModelConfig, seed: u64, device: &Device) -> Llama {
        built(
            config,
            &mut RandomWeights::new(config.clone(), seed),
            device,
        )
    }
}

fn built(config: &ModelConfig, source: &mut dyn WeightSource, device: &Device) -> Llama {
    match weights::build(
        config.clone(),
        source,
        device,
        WeightStorage::AsStored,
        &mut |_, _| {},
    ) {
        Ok(model) => model,
        // The source produces every weight at its expected shape, so building cannot fail.
        Err(e) => unreachable!("random weights always match their config: {e}"),
    }
}
