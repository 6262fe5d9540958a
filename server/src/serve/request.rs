//! A job request turned into the command line it runs as.
//!
//! A request names a kind (a CLI subcommand) and its flags by their long names, so a job takes
//! exactly the CLI's parameters and clap validates them. What would be a path on the command
//! line never comes from the request as a path: models are ids from the server's listing,
//! prompt sets are inline lists (or `builtin:*`), texts are inline strings, directions are
//! stored result ids. The server writes these into the job's directory and names those files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};
use refusal_core::compress::Method;
use refusal_core::compress::recipe::looks_like_recipe;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::models::{Format, LookupError, ModelEntry, Registry};
use super::store::Store;
use crate::cli::{Cli, Command};
use crate::commands::compress::CalibrationArgs;
use crate::commands::pipeline::PromptArgs;
use crate::device::Backend;
use crate::model::builtin::BuiltinModel;

/// The commands a job can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// One prompt, side by side: none / ablate / actadd / orthogonalized / compressed /
    /// compressed+aird.
    Generate,
    Directions,
    Eval,
    Compress,
    Compare,
    Aird,
}

impl JobKind {
    pub const ALL: [JobKind; 6] = [
        JobKind::Generate,
        JobKind::Directions,
        JobKind::Eval,
        JobKind::Compress,
        JobKind::Compare,
        JobKind::Aird,
    ];

    /// The subcommand it runs.
    pub fn command(self) -> &'static str {
        match self {
            JobKind::Generate => "generate",
            JobKind::Directions => "directions",
            JobKind::Eval => "eval",
            JobKind::Compress => "compress",
            JobKind::Compare => "compare",
            JobKind::Aird => "aird",
        }
    }

    /// Whether the job writes a model (stored with the server's models) besides its reports.
    pub fn writes_model(self) -> bool {
        matches!(self, JobKind::Compress | JobKind::Aird)
    }
}

/// `POST /api/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub kind: JobKind,
    /// The subcommand's flags by long name (`"n-train": 32`, `"intervention": "ablate"`), as
    /// `GET /api/jobs/kinds` lists them. A flag's value is a string, number or boolean (a
    /// switch), or a list (joined with commas). Models are ids from `GET /api/models`;
    /// prompt sets are lists of strings or `builtin:harmful` / `builtin:harmless`; `direction`
    /// is the id of a stored `directions` result.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub args: serde_json::Map<String, Value>,
}

/// What a request may ask for.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Most prompts in one inline prompt set, and most training/validation/evaluation prompts.
    #[arg(long, default_value_t = 1024)]
    pub max_prompts: usize,
    /// Longest prompt, in characters.
    #[arg(long, default_value_t = 4000)]
    pub max_prompt_chars: usize,
    /// Most tokens generated per completion.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Largest model a job may load, in bytes.
    #[arg(long, default_value_t = 20_000_000_000)]
    pub max_model_bytes: u64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_request_bytes: usize,
}

/// A request the server refuses, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] LookupError),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn invalid(msg: impl Into<String>) -> RequestError {
    RequestError::Invalid(msg.into())
}

/// What a flag's value stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A model id.
    Model,
    /// A model id or a compression recipe (`wanda:2:4`).
    ModelOrRecipe,
    /// The id of a stored `directions` result.
    Direction,
    /// A list of prompts.
    Prompts,
    /// A list of prompts, or `builtin:harmful` / `builtin:harmless`.
    PromptsOrBuiltin,
    /// A text (for cross-entropy or calibration).
    Text,
    /// Any other value, as on the command line.
    Value,
    /// A switch: `true` or `false`.
    Switch,
}

/// The flags the server sets itself.
const SERVER_FLAGS: [&str; 4] = ["out", "backend", "json", "help"];

/// The role of a flag of the CLI; `None` for the flags the server sets.
pub fn role(flag: &str, takes_value: bool) -> Option<Role> {
    Some(match flag {
        f if SERVER_FLAGS.contains(&f) => return None,
        "model" | "base" => Role::Model,
        "compressed" => Role::ModelOrRecipe,
        "direction" => Role::Direction,
        "harmful" | "harmless" | "harmful-val" | "harmless-val" | "exclude" | "calib" => {
            Role::Prompts
        }
        "prompts" | "eval-harmful" | "eval-harmless" => Role::PromptsOrBuiltin,
        "calib-text" | "cross-entropy" => Role::Text,
        _ if takes_value => Role::Value,
        _ => Role::Switch,
    })
}

/// A request checked and written out: the command line, parsed, and where it writes.
#[derive(Debug)]
pub struct Prepared {
    pub argv: Vec<String>,
    pub command: Command,
    /// The model the job runs on (`--model`, or `--base`).
    pub model: ModelEntry,
    /// The output the command writes: a directory, or a model file.
    pub out: PathBuf,
}

/// Everything preparing a request needs from the server.
pub struct Context<'a> {
    pub registry: &'a Registry,
    pub store: &'a Store,
    pub limits: &'a Limits,
    pub backend: Backend,
}

fn scalar(flag: &str, v: &Value) -> Result<String, RequestError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(invalid(format!(
            "`{flag}`: expected a string, number or boolean, got {v}"
        ))),
    }
}

fn strings(flag: &str, v: &Value) -> Result<Vec<String>, RequestError> {
    match v {
        Value::Array(items) => items.iter().map(|i| scalar(flag, i)).collect(),
        other => Ok(vec![scalar(flag, other)?]),
    }
}

/// Checks `request`, writes its inline inputs into `job_dir/inputs`, and returns the command
/// line it runs as, parsed by the CLI's own definitions.
///
/// # Errors
///
/// [`RequestError`] naming the flag or value at fault.
pub fn prepare(
    request: &JobRequest,
    cx: &Context<'_>,
    job_dir: &Path,
) -> Result<Prepared, RequestError> {
    let kind = request.kind;
    let inputs = job_dir.join("inputs");
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf, RequestError> {
        fs::create_dir_all(&inputs).map_err(anyhow::Error::from)?;
        let path = inputs.join(name);
        fs::write(&path, bytes).map_err(anyhow::Error::from)?;
        Ok(path)
    };
    let flags = flag_roles(kind);
    let mut argv = vec!["refusal-lens".to_owned(), kind.command().to_owned()];
    let mut model_id = None;
    for (key, value) in &request.args {
        let flag = key.replace('_', "-");
        if SERVER_FLAGS.contains(&flag.as_str()) {
            return Err(invalid(format!("`{flag}` is set by the server")));
        }
        let Some(&role) = flags.get(&flag) else {
            return Err(invalid(format!(
                "`{flag}` is not a flag of {} (GET /api/jobs/kinds lists them)",
                kind.command()
            )));
        };
        if value.is_null() {
            continue;
        }
        let mut push = |v: String| argv.push(format!("--{flag}={v}"));
        match role {
            Role::Switch => match value {
                Value::Bool(true) => argv.push(format!("--{flag}")),
                Value::Bool(false) => {}
                _ => return Err(invalid(format!("`{flag}` is a switch: true or false"))),
            },
            Role::Value => push(strings(&flag, value)?.join(",")),
            Role::Model => {
                let id = scalar(&flag, value)?;
                let entry = cx.registry.find(&id)?;
                check_size(&entry, cx.limits)?;
                push(Registry::cli_value(&entry));
                model_id.get_or_insert(id);
            }
            Role::ModelOrRecipe => {
                for spec in strings(&flag, value)? {
                    match cx.registry.find(&spec) {
                        Ok(entry) => {
                            check_size(&entry, cx.limits)?;
                            push(Registry::cli_value(&entry));
                        }
                        Err(LookupError::Io(e)) => return Err(e.into()),
                        Err(_) => match spec.parse::<Method>() {
                            Ok(_) => push(spec),
                            // A mistyped recipe: what is wrong with it says more.
                            Err(e) if looks_like_recipe(&spec) => {
                                return Err(invalid(format!("`{flag}`: {e}")));
                            }
                            Err(_) => {
                                return Err(invalid(format!(
                                    "`{flag}`: `{spec}` is neither a model id (GET /api/models) \
                                     nor a compression recipe such as wanda:2:4 or rtn:4:128"
                                )));
                            }
                        },
                    }
                }
            }
            Role::Direction => {
                let id = scalar(&flag, value)?;
                let dir = inputs.join("direction");
                let stored = if super::is_generated_id(&id) {
                    let meta = cx
                        .store
                        .result(&id)?
                        .and_then(|r| r.report.get("direction.json").cloned());
                    let vector = cx.store.result_file(&id, "direction.safetensors")?;
                    meta.zip(vector)
                } else {
                    None
                };
                let Some((meta, vector)) = stored else {
                    return Err(invalid(format!(
                        "`direction`: `{id}` is not the id of a stored directions result"
                    )));
                };
                fs::create_dir_all(&dir).map_err(anyhow::Error::from)?;
                fs::write(dir.join("direction.safetensors"), vector)
                    .and_then(|()| fs::write(dir.join("direction.json"), meta.to_string()))
                    .map_err(anyhow::Error::from)?;
                push(dir.display().to_string());
            }
            Role::Prompts | Role::PromptsOrBuiltin => match value {
                Value::String(s)
                    if role == Role::PromptsOrBuiltin
                        && matches!(s.as_str(), "builtin:harmful" | "builtin:harmless") =>
                {
                    push(s.clone());
                }
                Value::Array(_) => {
                    let prompts = strings(&flag, value)?;
                    check_prompts(&flag, &prompts, cx.limits)?;
                    let list: Vec<_> = prompts
                        .iter()
                        .map(|p| serde_json::json!({ "instruction": p }))
                        .collect();
                    let bytes = serde_json::to_vec(&list).map_err(anyhow::Error::from)?;
                    push(
                        write(&format!("{flag}.json"), &bytes)?
                            .display()
                            .to_string(),
                    );
                }
                _ => {
                    let builtin = if role == Role::PromptsOrBuiltin {
                        ", or \"builtin:harmful\" / \"builtin:harmless\""
                    } else {
                        " (leave it out for the built-in set)"
                    };
                    return Err(invalid(format!(
                        "`{flag}`: expected a list of prompts{builtin}"
                    )));
                }
            },
            Role::Text => {
                let Value::String(text) = value else {
                    return Err(invalid(format!("`{flag}`: expected the text itself")));
                };
                if text.trim().is_empty() {
                    return Err(invalid(format!("`{flag}` is empty")));
                }
                push(
                    write(&format!("{flag}.txt"), text.as_bytes())?
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let default = BuiltinModel::default().alias().to_owned();
    let model = cx.registry.find(model_id.as_deref().unwrap_or(&default))?;
    check_size(&model, cx.limits)?;
    let out_dir = job_dir.join("out");
    let out = match (kind.writes_model(), model.format) {
        (false, _) => out_dir,
        (true, Format::Gguf) => out_dir.join("model.gguf"),
        (true, Format::Safetensors) => out_dir.join("model").join("model.safetensors"),
    };
    argv.push(format!("--out={}", out.display()));
    if let Some(backend) = clap::ValueEnum::to_possible_value(&cx.backend) {
        argv.push(format!("--backend={}", backend.get_name()));
    }
    let command = Cli::try_parse_from(&argv)
        .map_err(|e| invalid(e.render().to_string().trim().to_owned()))?
        .command;
    check_limits(&command, cx.limits)?;
    Ok(Prepared {
        argv,
        command,
        model,
        out,
    })
}

fn check_size(entry: &ModelEntry, limits: &Limits) -> Result<(), RequestError> {
    if entry.bytes > limits.max_model_bytes {
        return Err(RequestError::TooLarge(format!(
            "model `{}` has {} bytes; this server runs models up to {} bytes",
            entry.id, entry.bytes, limits.max_model_bytes
        )));
    }
    Ok(())
}

fn check_prompts(flag: &str, prompts: &[String], limits: &Limits) -> Result<(), RequestError> {
    if prompts.is_empty() {
        return Err(invalid(format!("`{flag}`: the prompt list is empty")));
    }
    if prompts.len() > limits.max_prompts {
        return Err(RequestError::TooLarge(format!(
            "`{flag}`: {} prompts; at most {} per set",
            prompts.len(),
            limits.max_prompts
        )));
    }
    if let Some((i, p)) = prompts
        .iter()
        .enumerate()
        .find(|(_, p)| p.chars().count() > limits.max_prompt_chars)
    {
        return Err(RequestError::TooLarge(format!(
            "`{flag}`: prompt {i} has {} characters; at most {}",
            p.chars().count(),
            limits.max_prompt_chars
        )));
    }
    if let Some(i) = prompts.iter().position(|p| p.trim().is_empty()) {
        return Err(invalid(format!("`{flag}`: prompt {i} is empty")));
    }
    Ok(())
}

/// A request the core's pipeline refuses (its own bounds, checked before the job is queued).
fn run_error(e: refusal_core::runs::RunError) -> RequestError {
    invalid(e.to_string())
}

/// The numeric limits, on the parsed command.
fn check_limits(command: &Command, limits: &Limits) -> Result<(), RequestError> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut tokens = None;
    match command {
        Command::Generate(a) => {
            a.request().validate().map_err(run_error)?;
            tokens = Some(a.max_new_tokens);
            let chars =
                a.prompt.chars().count() + a.system.as_deref().map_or(0, |s| s.chars().count());
            if chars > limits.max_prompt_chars {
                return Err(RequestError::TooLarge(format!(
                    "`prompt`: {chars} characters; at most {}",
                    limits.max_prompt_chars
                )));
            }
            // The compressed columns' prompt counts matter only when they are asked for.
            if a.compressed.is_some() {
                counts.push(("n-calib", a.calibration.n_calib));
                if a.direction.is_some() {
                    counts.push(("aird-prompts", a.aird_prompts));
                }
            }
        }
        Command::Directions(a) => {
            a.request().validate().map_err(run_error)?;
            counts.extend([("n-train", a.splits.n_train), ("n-val", a.splits.n_val)]);
        }
        Command::Eval(a) => {
            tokens = Some(a.judge.max_new_tokens);
            counts.extend(a.limit.map(|n| ("limit", n)));
        }
        Command::Compress(a) => counts.push(("n-calib", a.calibration.n_calib)),
        Command::Compare(a) => {
            a.request().validate().map_err(run_error)?;
            tokens = Some(a.judge.max_new_tokens);
            counts.extend(study_counts(&a.prompts, &a.calibration));
        }
        Command::Aird(a) => {
            a.request().validate().map_err(run_error)?;
            tokens = Some(a.judge.max_new_tokens);
            counts.extend(study_counts(&a.prompts, &a.calibration));
        }
        _ => return Err(invalid("not a job command")),
    }
    if let Some(n) = tokens
        && n > limits.max_new_tokens
    {
        return Err(RequestError::TooLarge(format!(
            "`max-new-tokens` {n}: at most {}",
            limits.max_new_tokens
        )));
    }
    if let Some((flag, n)) = counts.into_iter().find(|(_, n)| *n > limits.max_prompts) {
        return Err(RequestError::TooLarge(format!(
            "`{flag}` {n}: at most {}",
            limits.max_prompts
        )));
    }
    Ok(())
}

/// The prompt counts of `compare` and `aird`.
fn study_counts(prompts: &PromptArgs, calibration: &CalibrationArgs) -> [(&'static str, usize); 4] {
    [
        ("n-train", prompts.splits.n_train),
        ("n-val", prompts.splits.n_val),
        ("n-eval", prompts.n_eval),
        ("n-calib", calibration.n_calib),
    ]
}

/// One flag of a job kind, as `GET /api/jobs/kinds` describes it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FlagInfo {
    pub name: String,
    pub role: Role,
    pub help: String,
    pub default: Option<String>,
    /// The accepted values, when there is a fixed set.
    pub values: Vec<String>,
    pub required: bool,
}

/// One job kind and its flags.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KindInfo {
    pub kind: JobKind,
    pub about: String,
    pub flags: Vec<FlagInfo>,
}

/// Every job kind's flags, read from the CLI's definitions.
pub fn describe_kinds() -> Vec<KindInfo> {
    let cli = Cli::command();
    JobKind::ALL
        .iter()
        .filter_map(|&kind| {
            let sub = cli.find_subcommand(kind.command())?;
            let flags = sub
                .get_arguments()
                .filter_map(|arg| {
                    let name = arg.get_long()?.to_owned();
                    let role = role(&name, arg.get_action().takes_values())?;
                    Some(FlagInfo {
                        help: arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
                        default: (!arg.get_default_values().is_empty()).then(|| {
                            arg.get_default_values()
                                .iter()
                                .map(|v| v.to_string_lossy())
                                .collect::<Vec<_>>()
                                .join(",")
                        }),
                        values: arg
                            .get_possible_values()
                            .iter()
                            .filter(|v| !v.is_hide_set())
                            .map(|v| v.get_name().to_owned())
                            .collect(),
                        required: arg.is_required_set(),
                        name,
                        role,
                    })
                })
                .collect();
            Some(KindInfo {
                kind,
                about: sub.get_about().map(|a| a.to_string()).unwrap_or_default(),
                flags,
            })
        })
        .collect()
}

/// The roles of `kind`'s flags, by long name.
fn flag_roles(kind: JobKind) -> BTreeMap<String, Role> {
    describe_kinds()
        .into_iter()
        .find(|k| k.kind == kind)
        .map(|k| k.flags.into_iter().map(|f| (f.name, f.role)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flag that takes a path must have a role that keeps the request from naming one;
    /// this fails when a new path flag is added to a job command without one.
    #[test]
    fn every_path_flag_of_a_job_command_is_mapped() {
        let cli = Cli::command();
        for kind in JobKind::ALL {
            let sub = cli.find_subcommand(kind.command()).expect("subcommand");
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                let is_path = arg.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>();
                let role = role(long, arg.get_action().takes_values());
                if is_path || matches!(long, "model" | "base" | "compressed" | "prompts") {
                    assert!(
                        !matches!(role, Some(Role::Value | Role::Switch)),
                        "{} --{long} takes a path but is passed through as a value",
                        kind.command()
                    );
                }
            }
        }
    }
}
