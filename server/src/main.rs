//! `refusal-lens`: see and test refusal directions on real models.

use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use refusal_core::generate::{GenerationSettings, Sampling, generate};
use refusal_core::model::NoHook;
use refusal_lens::commands::aird::{self, AirdArgs};
use refusal_lens::commands::compare::{self, CompareArgs};
use refusal_lens::commands::compress::{self, CompressArgs};
use refusal_lens::commands::control_vector::{self, ControlVectorArgs};
use refusal_lens::commands::directions::{self, ChooseArgs, DirectionsArgs};
use refusal_lens::commands::eval::{self, EvalArgs};
use refusal_lens::commands::orthogonalize::{self, OrthogonalizeArgs};
use refusal_lens::fetch::Cache;
use refusal_lens::model_args::ModelArgs;
use refusal_lens::open::inspect;
use refusal_lens::progress::Interrupt;
use refusal_lens::source::BuiltinModel;
use refusal_lens::{bench, fetch};

#[derive(Parser)]
#[command(
    version,
    about = "Refusal Lens: see and test refusal directions in language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat-format a prompt with the model's template and generate a reply.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        /// A system prompt (none by default, METHOD §2).
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        /// 0 decodes greedily.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 0.9)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print one JSON object instead of streaming text.
        #[arg(long)]
        json: bool,
    },
    /// Architecture, dimensions, tensor types, chat template and special tokens.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        json: bool,
    },
    /// Prefill and decode throughput and peak memory.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        options: bench::BenchOptions,
        #[arg(long)]
        json: bool,
    },
    /// Candidate refusal directions for every layer and post-instruction position, the
    /// selection table, the selected direction and figures (METHOD §2-6).
    Directions(DirectionsArgs),
    /// Pick a direction from a finished `directions` run without recomputing it.
    Choose(ChooseArgs),
    /// Greedy completions under an intervention, judged: refusal rate / ASR, refusal score,
    /// KL, cross-entropy (METHOD §7).
    Eval(EvalArgs),
    /// Bake ablation of a direction into the weights and export the model (METHOD §5).
    Orthogonalize(OrthogonalizeArgs),
    /// Write a direction as a llama.cpp control vector (GGUF).
    ControlVector(ControlVectorArgs),
    /// Quantize or prune the linear layers and write the model with a manifest (METHOD §8).
    Compress(CompressArgs),
    /// Base vs compressed: directions, cosines, necessity, sufficiency, transfer (METHOD §9),
    /// optionally with the AIRD repair of each compressed model.
    Compare(CompareArgs),
    /// Repair a compressed model with AIRD, against two baselines, and export it (METHOD §10).
    Aird(AirdArgs),
    /// Download and verify built-in models into the cache (all of them by default).
    Fetch {
        #[arg(value_parser = parse_builtin)]
        models: Vec<BuiltinModel>,
    },
}

fn parse_builtin(s: &str) -> Result<BuiltinModel, String> {
    BuiltinModel::from_alias(s).ok_or_else(|| {
        format!(
            "unknown model `{s}`; built-in models: {}",
            refusal_lens::source::alias_list()
        )
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate {
            model,
            prompt,
            system,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            json,
        } => {
            let loaded = model.load()?;
            let formatted = loaded.text.chat.user_prompt(&prompt, system.as_deref())?;
            let ids = loaded.text.tokenizer.encode(&formatted.text, false)?;
            let sampling = if temperature > 0.0 {
                Sampling::Random {
                    temperature,
                    top_p,
                    seed,
                }
            } else {
                Sampling::Greedy
            };
            let settings = GenerationSettings {
                max_new_tokens,
                sampling,
                stop_ids: loaded.text.tokenizer.stop_ids(),
            };
            let mut stream = loaded.text.tokenizer.stream(true);
            let mut stdout = std::io::stdout();
            let out = generate(
                &loaded.llama,
                std::slice::from_ref(&ids),
                0,
                settings,
                &mut NoHook,
                &mut |_, token| {
                    if !json
                        && let Ok(Some(piece)) = stream.push(token)
                        // A closed stdout (e.g. piped into `head`) ends generation early.
                        && write!(stdout, "{piece}")
                            .and_then(|()| stdout.flush())
                            .is_err()
                    {
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                },
            );
            let tokens = &out.tokens[0];
            let completion = loaded.text.tokenizer.decode(tokens, true)?;
            if json {
                let report = serde_json::json!({
                    "model": model.model,
                    "prompt": formatted.text,
                    "prompt_tokens": ids.len(),
                    "completion": completion,
                    "completion_tokens": tokens,
                    "finish": out.finish[0],
                });
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                if let Ok(Some(rest)) = stream.flush() {
                    print!("{rest}");
                }
                println!();
            }
        }
        Command::Inspect { model, json } => {
            let info = inspect(&model.resolve()?)
                .with_context(|| format!("inspecting model `{}`", model.model))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", info.to_text());
            }
        }
        Command::Bench {
            model,
            options,
            json,
        } => {
            let loaded = model.load()?;
            let report = bench::run(&loaded, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Directions(args) => directions::run(&args, &Interrupt::install()?)?,
        Command::Choose(args) => directions::choose(&args)?,
        Command::Eval(args) => eval::run(&args, &Interrupt::install()?)?,
        Command::Orthogonalize(args) => orthogonalize::run(&args)?,
        Command::ControlVector(args) => control_vector::run(&args)?,
        Command::Compress(args) => compress::run(&args, &Interrupt::install()?)?,
        Command::Compare(args) => compare::run(&args, &Interrupt::install()?)?,
        Command::Aird(args) => aird::run(&args, &Interrupt::install()?)?,
        Command::Fetch { models } => {
            let cache = Cache::from_env()?;
            let models = if models.is_empty() {
                BuiltinModel::all().to_vec()
            } else {
                models
            };
            for m in models {
                let path = fetch::ensure_builtin(&m.artifact(), m.alias(), &cache, true)?;
                println!("{}\t{}", m.alias(), path.display());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
