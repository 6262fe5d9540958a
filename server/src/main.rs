//! `refusal-lens`: see and test refusal directions on real models.

use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use refusal_core::generate::{GenerationSettings, Sampling, generate};
use refusal_core::model::NoHook;
use refusal_lens::device::Backend;
use refusal_lens::fetch::Cache;
use refusal_lens::open::{LoadedModel, inspect, open};
use refusal_lens::source::{BuiltinModel, ModelSource, ResolvedModel};
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

#[derive(clap::Args)]
struct ModelArgs {
    /// A built-in alias (qwen2.5-coder-0.5b, smollm2-135m), a .gguf file, a Hugging Face
    /// directory or a Hub id (owner/name).
    #[arg(long, default_value = BuiltinModel::default().alias())]
    model: String,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
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

fn resolve(args: &ModelArgs) -> Result<ResolvedModel> {
    let cache = Cache::from_env()?;
    ModelSource::parse(&args.model)?.resolve(&cache, true)
}

fn load(args: &ModelArgs) -> Result<LoadedModel> {
    let device = args.backend.device()?;
    open(&resolve(args)?, &device, true).with_context(|| format!("loading model `{}`", args.model))
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
            let loaded = load(&model)?;
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
                &[ids.clone()],
                0,
                settings,
                &mut NoHook,
                &mut |_, token| {
                    if !json {
                        if let Ok(Some(piece)) = stream.push(token) {
                            // A closed stdout (e.g. piped into `head`) ends generation early.
                            if write!(stdout, "{piece}")
                                .and_then(|()| stdout.flush())
                                .is_err()
                            {
                                return ControlFlow::Break(());
                            }
                        }
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
            let info = inspect(&resolve(&model)?)
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
            let loaded = load(&model)?;
            let report = bench::run(&loaded, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
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
