//! `refusal-lens bench`: prefill and decode throughput, direction extraction time and peak
//! memory on a real model.
//!
//! Prefill is a generation's prompt (its products round activations to 8 bits, as the decoding
//! steps and llama.cpp do, wherever that is faster); extraction runs its prompts exactly, as
//! the product does.
//!
//! The report carries the exact prompt token ids so that `scripts/bench-llamacpp.sh` can feed
//! llama.cpp the same tokens in the same run and print the ratios.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use std::ops::ControlFlow;

use anyhow::{Result, bail};
use futures_lite::future::block_on;
use refusal_core::generate::{Decoder, GenerationSettings, Sampling};
use refusal_core::model::{KvCache, NoHook, TokenBatch, read_f32};
use refusal_core::refusal::EncodedPrompts;
use refusal_core::refusal::directions::extract;
use refusal_core::refusal::prompts::{Prompt, builtin_harmful, builtin_harmless};
use serde::Serialize;

use crate::commands::read_prompts_or;
use crate::model::open::LoadedModel;

/// Workload sizes.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Chat prompts in the prefill batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Tokens generated in the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Also time candidate-direction extraction on this many harmful and as many harmless
    /// prompts (0: skip).
    #[arg(long, default_value_t = 0)]
    pub extract_prompts: usize,
    /// Harmful prompts for the extraction measurement (default: the built-in set).
    #[arg(long)]
    pub harmful: Option<PathBuf>,
    /// Harmless prompts for the extraction measurement (default: the built-in set).
    #[arg(long)]
    pub harmless: Option<PathBuf>,
    /// Runs of each measurement; the median is reported (every run is in the JSON).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeats: u32,
}

/// Instructions for the prefill batch: everyday requests of varied length, in our own words.
const INSTRUCTIONS: [&str; 32] = [
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about autumn leaves.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How do I reverse a list in Python?",
    "Suggest a name for a bakery that specializes in sourdough.",
    "What are the main differences between TCP and UDP?",
    "Translate 'good morning, how are you?' into Spanish.",
    "Write a short thank-you note to a colleague who helped me move.",
    "List five fruits that are high in vitamin C.",
    "Why is the sky blue?",
    "Describe the water cycle in a few steps.",
    "Give me a recipe for a simple tomato soup.",
    "What is the difference between weather and climate?",
    "Write a limerick about a cat who loves boxes.",
    "Explain what a binary search does and when to use it.",
    "How many continents are there, and what are they?",
    "Suggest three board games for a family evening.",
    "What does a product manager do?",
    "Convert 100 degrees Fahrenheit to Celsius and show the steps.",
    "Write a SQL query that counts the rows of a table named orders.",
    "What are some good habits for learning a new language?",
    "Explain the rules of chess castling.",
    "Plan a three-day trip to Kyoto with one museum per day.",
    "What is the Pythagorean theorem?",
    "Describe how a bicycle's gears make climbing easier.",
    "Write a polite email declining a meeting invitation.",
    "Name three famous paintings by Vincent van Gogh.",
    "How does a refrigerator keep food cold?",
    "Give an example of a metaphor and explain it.",
    "What should I pack for a weekend hiking trip?",
];

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub gguf: Option<PathBuf>,
    pub threads: usize,
    /// Loading the weights (from the page cache when the file was read recently).
    pub load_seconds: f64,
    /// The matrices as kept, with their count: `Q5_0 x133, Q8_0 x13, ...`.
    pub weights: String,
    /// The weights' bytes in memory as kept.
    pub weight_bytes: u64,
    pub prefill: Prefill,
    pub decode: Decode,
    /// Candidate-direction extraction, when asked for.
    pub extraction: Option<Extraction>,
    pub peak_rss_bytes: Option<u64>,
}

/// `directions`' extraction step: every layer's `resid_pre` at the post-instruction positions
/// of harmful and harmless prompts, batched, with the f64 means.
#[derive(Debug, Serialize)]
pub struct Extraction {
    pub prompts_per_set: usize,
    pub batch_size: usize,
    pub tokens: usize,
    /// The median of `runs_seconds`.
    pub seconds: f64,
    pub runs_seconds: Vec<f64>,
    pub tokens_per_s: f64,
    /// Harmful prompts then harmless, as fed to the model.
    pub token_ids: Vec<Vec<u32>>,
}

/// Extraction batch size, the `directions` default.
const EXTRACT_BATCH: usize = 32;

fn extraction(loaded: &LoadedModel, options: &BenchOptions) -> Result<Extraction> {
    let n = options.extract_prompts;
    let set = |file: &Option<PathBuf>,
               builtin: fn() -> Vec<Prompt>,
               name: &str|
     -> Result<EncodedPrompts> {
        let all = read_prompts_or(file.as_deref(), builtin)?;
        if all.len() < n {
            bail!(
                "--extract-prompts {n}: the {name} set has only {} prompts",
                all.len()
            );
        }
        Ok(EncodedPrompts::new(&loaded.text, &all[..n], None)?)
    };
    let harmful = set(&options.harmful, builtin_harmful, "harmful")?;
    let harmless = set(&options.harmless, builtin_harmless, "harmless")?;
    let (seconds, runs_seconds) = repeated(options.repeats, || {
        let start = Instant::now();
        block_on(extract(
            &loaded.llama,
            &harmful,
            &harmless,
            EXTRACT_BATCH,
            &mut |_| ControlFlow::Continue(()),
        ))?;
        Ok(start.elapsed().as_secs_f64())
    })?;
    let token_ids: Vec<Vec<u32>> = harmful.ids.into_iter().chain(harmless.ids).collect();
    let tokens = token_ids.iter().map(Vec::len).sum();
    Ok(Extraction {
        prompts_per_set: n,
        batch_size: EXTRACT_BATCH,
        tokens,
        seconds,
        runs_seconds,
        tokens_per_s: tokens as f64 / seconds,
        token_ids,
    })
}

/// Runs `measure` `repeats` times (at least once): the median of the seconds it returns (the
/// mean of the middle two for an even count, as Python's `statistics.median`), and every run.
fn repeated(repeats: u32, mut measure: impl FnMut() -> Result<f64>) -> Result<(f64, Vec<f64>)> {
    let runs = (0..repeats.max(1))
        .map(|_| measure())
        .collect::<Result<Vec<f64>>>()?;
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    Ok((median, runs))
}

#[derive(Debug, Serialize)]
pub struct Prefill {
    pub prompts: usize,
    pub tokens: usize,
    /// The median of `runs_seconds`.
    pub seconds: f64,
    pub runs_seconds: Vec<f64>,
    pub tokens_per_s: f64,
    pub token_ids: Vec<Vec<u32>>,
}

#[derive(Debug, Serialize)]
pub struct Decode {
    pub prompt_ids: Vec<u32>,
    pub tokens: usize,
    /// The median of `runs_seconds`.
    pub seconds: f64,
    pub runs_seconds: Vec<f64>,
    pub tokens_per_s: f64,
}

/// Worker threads of the CPU backend (its rayon pool honours `RAYON_NUM_THREADS`).
fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// High-water mark of resident memory, from `/proc` (Linux only).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn run(loaded: &LoadedModel, options: &BenchOptions, load_seconds: f64) -> Result<BenchReport> {
    if options.batch == 0 || options.batch > INSTRUCTIONS.len() {
        bail!("--batch must be between 1 and {}", INSTRUCTIONS.len());
    }
    let model = &loaded.llama;
    let device = model.device();
    let tokenizer = &loaded.text.tokenizer;
    let token_ids = INSTRUCTIONS[..options.batch]
        .iter()
        .map(|i| {
            let text = loaded.text.chat.user_prompt(i, None)?.text;
            Ok(tokenizer.encode(&text, false)?)
        })
        .collect::<Result<Vec<Vec<u32>>>>()?;

    let prompt = |batch: &TokenBatch| {
        read_f32(model.forward(batch, &mut KvCache::generating(), &mut NoHook));
    };
    // Warm-up: first calls allocate buffers and spin up the thread pool.
    prompt(&TokenBatch::left_padded(&token_ids[..1], 0, &device));

    let batch = TokenBatch::left_padded(&token_ids, 0, &device);
    let (prefill_s, prefill_runs) = repeated(options.repeats, || {
        let start = Instant::now();
        prompt(&batch);
        Ok(start.elapsed().as_secs_f64())
    })?;
    let tokens: usize = token_ids.iter().map(Vec::len).sum();

    let prompt_ids = token_ids[0].clone();
    let settings = GenerationSettings {
        max_new_tokens: options.decode_tokens,
        sampling: Sampling::Greedy,
        stop_ids: Vec::new(),
    };
    // Greedy decoding makes every run the same tokens.
    let mut timed = 0;
    let (decode_s, decode_runs) = repeated(options.repeats, || {
        let settings = settings.clone();
        let mut decoder = Decoder::new(model, std::slice::from_ref(&prompt_ids), 0, settings);
        // The prompt's own forward is prefill, not decode: run it before the clock starts.
        if let Some(logits) = decoder.forward(&mut NoHook) {
            decoder.accept(&read_f32(logits));
        }
        let start = Instant::now();
        let mut decoded = 1;
        while let Some(logits) = decoder.forward(&mut NoHook) {
            decoded += decoder.accept(&read_f32(logits)).len();
        }
        // The first token came from the prompt's forward; only the rest were timed.
        timed = decoded.saturating_sub(1);
        Ok(start.elapsed().as_secs_f64())
    })?;

    let extraction = (options.extract_prompts > 0)
        .then(|| extraction(loaded, options))
        .transpose()?;

    Ok(BenchReport {
        model: loaded.info.path.display().to_string(),
        gguf: (loaded.info.format == "gguf").then(|| loaded.info.path.clone()),
        threads: threads(),
        load_seconds,
        weights: model
            .weight_types()
            .iter()
            .map(|(ty, n)| format!("{ty} x{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        weight_bytes: model.weight_bytes(),
        prefill: Prefill {
            prompts: token_ids.len(),
            tokens,
            seconds: prefill_s,
            runs_seconds: prefill_runs,
            tokens_per_s: tokens as f64 / prefill_s,
            token_ids,
        },
        decode: Decode {
            prompt_ids,
            tokens: timed,
            seconds: decode_s,
            runs_seconds: decode_runs,
            tokens_per_s: timed as f64 / decode_s,
        },
        extraction,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

impl BenchReport {
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "model     {}", self.model);
        let _ = writeln!(s, "threads   {}", self.threads);
        let _ = writeln!(
            s,
            "weights   {} ({:.0} MiB), loaded in {:.1} s",
            self.weights,
            self.weight_bytes as f64 / (1024.0 * 1024.0),
            self.load_seconds
        );
        let runs = self.prefill.runs_seconds.len();
        if runs > 1 {
            let _ = writeln!(s, "runs      {runs} of each, medians below");
        }
        let _ = writeln!(
            s,
            "prefill   {} prompts, {} tokens in {:.2} s: {:.1} tokens/s",
            self.prefill.prompts,
            self.prefill.tokens,
            self.prefill.seconds,
            self.prefill.tokens_per_s
        );
        let _ = writeln!(
            s,
            "decode    {} tokens in {:.2} s: {:.1} tokens/s",
            self.decode.tokens, self.decode.seconds, self.decode.tokens_per_s
        );
        if let Some(e) = &self.extraction {
            let _ = writeln!(
                s,
                "extract   {}+{} prompts, {} tokens in {:.2} s: {:.1} tokens/s",
                e.prompts_per_set, e.prompts_per_set, e.tokens, e.seconds, e.tokens_per_s
            );
        }
        if let Some(rss) = self.peak_rss_bytes {
            let _ = writeln!(s, "peak RSS  {:.0} MiB", rss as f64 / (1024.0 * 1024.0));
        }
        s
    }
}
