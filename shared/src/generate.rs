//! Greedy and sampled generation with a KV cache, stop tokens and streaming.
//!
//! [`Decoder`] is a step machine (run the model, then choose tokens from logits read back to
//! the host) so the same logic drives native code, which reads logits synchronously, and the
//! browser, which must await them. [`generate`] is the native driver.

use std::ops::ControlFlow;

use burn::tensor::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{Hook, KvCache, Llama, TokenBatch};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Sampling {
    /// The most likely token (the first one on ties).
    Greedy,
    /// Softmax at `temperature`, restricted to the smallest set of tokens whose probability
    /// reaches `top_p`, drawn from a generator seeded with `seed`.
    Random {
        temperature: f32,
        top_p: f32,
        seed: u64,
    },
}

impl Sampling {
    /// Greedy at temperature 0, otherwise top-p sampling: what `--temperature`, `--top-p`
    /// and `--seed` mean everywhere.
    pub fn from_temperature(temperature: f32, top_p: f32, seed: u64) -> Sampling {
        if temperature > 0.0 {
            Sampling::Random {
                temperature,
                top_p,
                seed,
            }
        } else {
            Sampling::Greedy
        }
    }
}

/// Settings of one generation run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerationSettings {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Tokens that end a row's generation (not included in its output).
    pub stop_ids: Vec<u32>,
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    Cancelled,
}

/// The new tokens of every row and why each stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub tokens: Vec<Vec<u32>>,
    pub finish: Vec<FinishReason>,
}

/// Generation state for a batch of prompts.
pub struct Decoder<'m> {
    model: &'m Llama,
    cache: KvCache,
    settings: GenerationSettings,
    rng: StdRng,
    next: Option<TokenBatch>,
    tokens: Vec<Vec<u32>>,
    finish: Vec<Option<FinishReason>>,
}

impl<'m> Decoder<'m> {
    pub fn new(
        model: &'m Llama,
        prompts: &[Vec<u32>],
        pad_id: u32,
        settings: GenerationSettings,
    ) -> Self {
        let seed = match settings.sampling {
            Sampling::Random { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        let done = settings.max_new_tokens == 0;
        Decoder {
            model,
            cache: KvCache::generating(),
            rng: StdRng::seed_from_u64(seed),
            next: (!done).then(|| TokenBatch::left_padded(prompts, pad_id, &model.device())),
            tokens: vec![Vec::new(); prompts.len()],
            finish: vec![done.then_some(FinishReason::Length); prompts.len()],
            settings,
        }
    }

    /// Runs the model on the pending tokens and returns their last-position logits
    /// (`[batch, vocab]`), or `None` when every row has finished.
    pub fn forward<H: Hook + ?Sized>(&mut self, hook: &mut H) -> Option<Tensor<2>> {
        let batch = self.next.take()?;
        Some(self.model.forward(&batch, &mut self.cache, hook))
    }

    /// Chooses each unfinished row's next token from the logits read back to the host
    /// (row-major `[batch, vocab]`), and returns the `(row, token)` pairs that were generated.
    pub fn accept(&mut self, logits: &[f32]) -> Vec<(usize, u32)> {
        let vocab = self.model.config().vocab_size;
        let mut emitted = Vec::new();
        let mut feed = Vec::with_capacity(self.tokens.len());
        for (row, scores) in logits.chunks_exact(vocab).enumerate() {
            let token = match self.finish[row] {
                Some(_) => 0,
                None => choose(scores, self.settings.sampling, &mut self.rng),
            };
            feed.push(token);
            if self.finish[row].is_some() {
                continue;
            }
            if self.settings.stop_ids.contains(&token) {
                self.finish[row] = Some(FinishReason::Stop);
                continue;
            }
            self.tokens[row].push(token);
            emitted.push((row, token));
            if self.tokens[row].len() >= self.settings.max_new_tokens {
                self.finish[row] = Some(FinishReason::Length);
            }
        }
        if self.finish.iter().any(Option::is_none) {
            self.next = Some(TokenBatch::next_tokens(&feed, &self.model.device()));
        }
        emitted
    }

    /// Stops every unfinished row.
    pub fn cancel(&mut self) {
        for f in self.finish.iter_mut().filter(|f| f.is_none()) {
            *f = Some(FinishReason::Cancelled);
        }
        self.next = None;
    }

    pub fn finish(self) -> Generation {
        Generation {
            tokens: self.tokens,
            finish: self
                .finish
                .into_iter()
                .map(|f| f.unwrap_or(FinishReason::Cancelled))
                .collect(),
        }
    }
}

/// Generates for a batch natively, calling `on_token(row, token)` as tokens appear; returning
/// `ControlFlow::Break` cancels the run.
pub fn generate<H: Hook + ?Sized>(
    model: &Llama,
    prompts: &[Vec<u32>],
    pad_id: u32,
    settings: GenerationSettings,
    hook: &mut H,
    on_token: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
) -> Generation {
    let mut decoder = Decoder::new(model, prompts, pad_id, settings);
    while let Some(logits) = decoder.forward(hook) {
        let host = crate::model::read_f32(logits);
        for (row, token) in decoder.accept(&host) {
            if on_token(row, token).is_break() {
                decoder.cancel();
            }
        }
    }
    decoder.finish()
}

fn choose(scores: &[f32], sampling: Sampling, rng: &mut StdRng) -> u32 {
    match sampling {
        Sampling::Greedy => argmax(scores),
        Sampling::Random {
            temperature, top_p, ..
        } if temperature > 0.0 => sample_top_p(scores, temperature, top_p, rng),
        Sampling::Random { .. } => argmax(scores),
    }
}

fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

fn sample_top_p(scores: &[f32], temperature: f32, top_p: f32, rng: &mut StdRng) -> u32 {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| (i as u32, (((s - max) / temperature) as f64).exp()))
        .collect();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let keep_mass = f64::from(top_p.clamp(f32::MIN_POSITIVE, 1.0)) * total;
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= keep_mass {
            break;
        }
    }
    let mut draw = rng.random::<f64>() * mass;
    for &(id, p) in &probs[..kept] {
        if draw < p {
            return id;
        }
        draw -= p;
    }
    probs[kept - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, NoHook};
    use burn::tensor::Device;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        let mut rng = StdRng::seed_from_u64(1);
        // Token 2 holds almost all the mass: with top_p 0.5 nothing else may be drawn.
        let scores = [0.0, 0.0, 20.0, 0.0];
        for _ in 0..200 {
            assert_eq!(sample_top_p(&scores, 1.0, 0.5, &mut rng), 2);
        }
        // With top_p 1 and flat scores every token appears.
        let mut seen = [false; 4];
        for _ in 0..200 {
            seen[sample_top_p(&[1.0; 4], 1.0, 1.0, &mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn same_seed_same_sample_and_stop_tokens_end_rows() {
        let device = Device::flex();
        let model = Llama::random(&ModelConfig::tiny(), 11, &device);
        let prompts = vec![vec![1, 2, 3], vec![4, 5]];
        let settings = GenerationSettings {
            max_new_tokens: 6,
            sampling: Sampling::Random {
                temperature: 1.0,
                top_p: 0.9,
                seed: 5,
            },
            stop_ids: vec![],
        };
        let run = |s: GenerationSettings| {
            generate(&model, &prompts, 0, s, &mut NoHook, &mut |_, _| {
                ControlFlow::Continue(())
            })
        };
        let a = run(settings.clone());
        assert_eq!(a, run(settings.clone()));
        assert!(a.tokens.iter().all(|t| t.len() == 6));
        assert!(a.finish.iter().all(|f| *f == FinishReason::Length));
        // Stopping on the first token row 0 produced ends row 0 at once, with nothing emitted.
        let stop = a.tokens[0][0];
        let b = run(GenerationSettings {
            stop_ids: vec![stop],
            ..settings
        });
        assert!(b.tokens[0].is_empty());
        assert_eq!(b.finish[0], FinishReason::Stop);
    }

    #[test]
    fn breaking_the_callback_cancels() {
        let device = Device::flex();
        let model = Llama::random(&ModelConfig::tiny(), 11, &device);
        let settings = GenerationSettings {
            max_new_tokens: 50,
            sampling: Sampling::Greedy,
            stop_ids: vec![],
        };
        let mut seen = 0;
        let out = generate(
            &model,
            &[vec![1, 2]],
            0,
            settings,
            &mut NoHook,
            &mut |_, _| {
                seen += 1;
                if seen == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        assert_eq!(out.tokens[0].len(), 3);
        assert_eq!(out.finish[0], FinishReason::Cancelled);
    }
}
