//! Greedy completions of a prompt set, batched, under a hook, with what the logits of the
//! first step say (the refusal score, the KL from the unmodified model): what evaluation and
//! the derivation of refusal tokens both generate.

use burn::tensor::activation::log_softmax;

use super::EncodedPrompts;
use super::score::{kl_from_base, refusal_score, token_log_probs};
use crate::generate::{Decoder, FinishReason, GenerationSettings, Sampling};
use crate::model::{Hook, Llama, NoHook, TokenBatch};
use crate::pipeline::{OnProgress, PipelineError, Stage, read, report};

/// One prompt's greedy completion, with what the first step's logits said.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Completed {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub refusal_score: Option<f64>,
    pub kl: Option<f64>,
}

/// What to measure on the logits at the last prompt position.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FirstStep<'a> {
    /// The refusal score, of these refusal tokens.
    pub refusal: Option<&'a [u32]>,
    /// KL from the unmodified model's distribution to the hooked one.
    pub kl: bool,
}

/// Greedy completions of every prompt under `hook`, in prompt order, with what `first` asks
/// of the logits at the last prompt position.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn complete<H: Hook + ?Sized>(
    model: &Llama,
    prompts: &EncodedPrompts,
    stop_ids: &[u32],
    max_new_tokens: usize,
    batch_size: usize,
    hook: &mut H,
    first: FirstStep<'_>,
    stage: Stage,
    on_progress: &mut OnProgress<'_>,
) -> Result<Vec<Completed>, PipelineError> {
    let device = model.device();
    let total = prompts.len();
    let mut out: Vec<Option<Completed>> = vec![None; total];
    let mut done = 0;
    report(on_progress, stage, 0, total)?;
    for batch in prompts.batches(batch_size) {
        let ids = prompts.select(&batch);
        let settings = GenerationSettings {
            // The first forward pass must run even when nothing is generated: it gives the
            // refusal score and the KL.
            max_new_tokens: max_new_tokens.max(1),
            sampling: Sampling::Greedy,
            stop_ids: stop_ids.to_vec(),
        };
        let mut decoder = Decoder::new(model, &ids, 0, settings);
        let mut scores = vec![None; batch.len()];
        let mut kls = vec![None; batch.len()];
        let mut step = 0;
        while let Some(logits) = decoder.forward(hook) {
            if step == 0 {
                if let Some(ids) = first.refusal {
                    let lp = read(token_log_probs(logits.clone(), ids)).await?;
                    for (row, chunk) in lp.chunks_exact(ids.len()).enumerate() {
                        scores[row] = Some(refusal_score(chunk));
                    }
                }
                if first.kl {
                    let base =
                        model.last_logits(&TokenBatch::left_padded(&ids, 0, &device), &mut NoHook);
                    let kl = read(kl_from_base(log_softmax(base, 1), logits.clone())).await?;
                    for (row, v) in kl.into_iter().enumerate() {
                        kls[row] = Some(v as f64);
                    }
                }
                if max_new_tokens == 0 {
                    decoder.cancel();
                    break;
                }
            }
            let host = read(logits).await?;
            decoder.accept(&host);
            step += 1;
            report(on_progress, stage, done, total)?;
        }
        let generation = decoder.finish();
        for (((&index, tokens), finish), (refusal_score, kl)) in batch
            .iter()
            .zip(generation.tokens)
            .zip(generation.finish)
            .zip(scores.into_iter().zip(kls))
        {
            out[index] = Some(Completed {
                tokens,
                finish: if max_new_tokens == 0 {
                    FinishReason::Length
                } else {
                    finish
                },
                refusal_score,
                kl,
            });
        }
        done += batch.len();
        report(on_progress, stage, done, total)?;
    }
    Ok(out.into_iter().flatten().collect())
}
