//! The `refusal-lens` command line: every subcommand and its arguments, parsed by clap. The
//! server lists a job kind's flags from the same definitions (`GET /api/jobs/kinds`), so a job
//! takes the CLI's parameters.

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};

use crate::bench;
use crate::commands::aird::{self, AirdArgs};
use crate::commands::compare::{self, CompareArgs};
use crate::commands::compress::{self, CompressArgs};
use crate::commands::control_vector::{self, ControlVectorArgs};
use crate::commands::directions::{self, ChooseArgs, DirectionsArgs};
use crate::commands::eval::{self, EvalArgs};
use crate::commands::generate::{self, GenerateArgs};
use crate::commands::orthogonalize::{self, OrthogonalizeArgs};
use crate::model::builtin::BuiltinModel;
use crate::model::fetch::{self, Cache};
use crate::model::open::inspect;
use crate::model_args::ModelArgs;
use crate::progress::RunControl;
use crate::serve::{self, ServeArgs};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Refusal Lens: see and test refusal directions in language models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chat-format a prompt with the model's template and generate a reply; with a direction,
    /// side by side with the model ablated, steered and orthogonalized.
    Generate(GenerateArgs),
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
    /// The web app and its API: jobs with live progress, stored results and share links.
    Serve(ServeArgs),
    /// Renders chat templates for `serve` in a process of their own, one JSON request per
    /// line on stdin (started by the server with its memory limit, not by hand).
    #[command(name = crate::serve::template_sandbox::SUBCOMMAND, hide = true)]
    RenderTemplates,
}

fn parse_builtin(s: &str) -> Result<BuiltinModel, String> {
    BuiltinModel::from_alias(s).ok_or_else(|| {
        format!(
            "unknown model `{s}`; built-in models: {}",
            crate::model::builtin::alias_list()
        )
    })
}

impl Cli {
    /// Runs the command in this process, in the terminal.
    ///
    /// # Errors
    ///
    /// Whatever the command fails with.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Generate(args) => generate::run(&args, &RunControl::default())?,
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
                let start = std::time::Instant::now();
                let loaded = model.load()?;
                let load_seconds = start.elapsed().as_secs_f64();
                let report = bench::run(&loaded, &options, load_seconds)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.to_text());
                }
            }
            Command::Directions(args) => directions::run(&args, &RunControl::ctrl_c()?)?,
            Command::Choose(args) => directions::choose(&args)?,
            Command::Eval(args) => eval::run(&args, &RunControl::ctrl_c()?)?,
            Command::Orthogonalize(args) => orthogonalize::run(&args)?,
            Command::ControlVector(args) => control_vector::run(&args)?,
            Command::Compress(args) => compress::run(&args, &RunControl::ctrl_c()?)?,
            Command::Compare(args) => compare::run(&args, &RunControl::ctrl_c()?)?,
            Command::Aird(args) => aird::run(&args, &RunControl::ctrl_c()?)?,
            Command::Serve(args) => serve::run(&args, &Cli::command())?,
            Command::RenderTemplates => serve::template_sandbox::serve_requests()?,
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
}
