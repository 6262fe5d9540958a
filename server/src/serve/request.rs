//! A job request turned into the core request it runs.
//!
//! A request names a kind (a CLI subcommand) and its flags by their long names, so a job takes
//! exactly the CLI's parameters; the flags become the fields of the kind's core request
//! (`runs::*`), checked against its bounds before the job is queued. What would be a path on
//! the command line never comes from the request as a path: models are ids from the server's
//! listing, prompt sets are inline lists (or `builtin:*`), texts are inline strings, directions
//! are stored result ids. The job's I/O answers for them (`jobs::io`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use refusal_core::compress::Method;
use refusal_core::compress::recipe::looks_like_recipe;
use refusal_core::refusal::judge::JudgeKind;
use refusal_core::runs::aird::AirdRequest;
use refusal_core::runs::compare::CompareRequest;
use refusal_core::runs::compress::CompressRequest;
use refusal_core::runs::directions::DirectionsRequest;
use refusal_core::runs::eval::EvalRequest;
use refusal_core::runs::generate::GenerateRequest;
use refusal_core::runs::{Bounds, RunError, request_from_fields};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::models::{Format, LookupError, ModelEntry, Registry};
use super::store::{Lookup, Store};
use crate::device::Backend;
use crate::direction_file::DirectionFile;
use crate::model::builtin::BuiltinModel;
use crate::model_args::{ModelArgs, Weights};

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
    /// `GET /api/jobs/kinds` lists them: the fields of the kind's core request. A flag's value
    /// is a string, number or boolean (a switch), or a list; a string reads as on the command
    /// line where a number, switch or list is expected. Models are ids from `GET /api/models`;
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
    #[arg(long, default_value_t = Bounds::DEFAULT.prompts)]
    pub max_prompts: usize,
    /// Longest prompt, in characters.
    #[arg(long, default_value_t = Bounds::DEFAULT.prompt_chars)]
    pub max_prompt_chars: usize,
    /// Most tokens generated per completion.
    #[arg(long, default_value_t = Bounds::DEFAULT.new_tokens)]
    pub max_new_tokens: usize,
    /// Largest model a job may load, in bytes.
    #[arg(long, default_value_t = 20_000_000_000)]
    pub max_model_bytes: u64,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_request_bytes: usize,
    /// Most values in a list flag (variants, coeff, compressed, positions, refusal-tokens,
    /// alpha-grid).
    #[arg(long, default_value_t = Bounds::DEFAULT.list_items)]
    pub max_list_items: usize,
    /// Longest token window (window, calib-seq); eval's holds [window, vocab] logits.
    #[arg(long, default_value_t = Bounds::DEFAULT.window_tokens)]
    pub max_window_tokens: usize,
    /// Largest batch-size.
    #[arg(long, default_value_t = Bounds::DEFAULT.batch_size)]
    pub max_batch_size: usize,
    /// Most tokens one job may generate and read for calibration, all told (judged completions
    /// × max-new-tokens + n-calib × calib-seq).
    #[arg(long, default_value_t = Bounds::DEFAULT.work_tokens)]
    pub max_work_tokens: u64,
    /// Longest a job may run, in seconds, before it is stopped and recorded as failed (the
    /// README's compare and aird runs take 20-40 minutes on 2 cores).
    #[arg(long, default_value_t = 7200, value_parser = clap::value_parser!(u64).range(1..))]
    pub job_timeout_s: u64,
    /// Memory a model's chat template may use while rendering one prompt, in MiB: templates
    /// render in a child process with this limit, so a hostile one fails its job instead of
    /// taking the server's memory.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..))]
    pub template_memory_mib: u64,
}

impl Limits {
    /// What a job's request is checked against.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            prompts: self.max_prompts,
            prompt_chars: self.max_prompt_chars,
            new_tokens: self.max_new_tokens,
            list_items: self.max_list_items,
            window_tokens: self.max_window_tokens,
            batch_size: self.max_batch_size,
            work_tokens: self.max_work_tokens,
        }
    }
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

/// A job's core request.
#[derive(Debug)]
pub enum JobRun {
    Generate(GenerateRequest),
    Directions(DirectionsRequest),
    Eval(EvalRequest),
    Compress(CompressRequest),
    Compare(CompareRequest),
    Aird(AirdRequest),
}

impl JobRun {
    /// The request of `kind` from its fields, over the kind's defaults.
    fn from_fields(kind: JobKind, fields: Map<String, Value>) -> Result<JobRun, RequestError> {
        fn read<R: Default + Serialize + DeserializeOwned>(
            fields: Map<String, Value>,
        ) -> Result<R, RequestError> {
            request_from_fields(&R::default(), fields).map_err(run_error)
        }
        Ok(match kind {
            JobKind::Generate => JobRun::Generate(read(fields)?),
            JobKind::Directions => JobRun::Directions(read(fields)?),
            JobKind::Eval => JobRun::Eval(read(fields)?),
            JobKind::Compress => JobRun::Compress(read(fields)?),
            JobKind::Compare => JobRun::Compare(read(fields)?),
            JobKind::Aird => JobRun::Aird(read(fields)?),
        })
    }
}

/// What a job reads that its request names instead of holding: the texts given inline (by
/// flag name) and the stored direction (by result id).
#[derive(Debug, Default)]
pub struct JobInputs {
    pub texts: BTreeMap<String, String>,
    pub direction: Option<(String, DirectionFile)>,
}

/// A request checked: the core request, what it reads, the model and where it writes.
#[derive(Debug)]
pub struct Prepared {
    /// The command line the job corresponds to, shown with its result.
    pub argv: Vec<String>,
    pub run: JobRun,
    pub inputs: JobInputs,
    /// The model the job runs on (`--model`, or `--base`).
    pub model: ModelEntry,
    /// How it is opened: its files, the server's backend, the request's weights.
    pub models: ModelArgs,
    /// The output the job writes: a directory, or a model file.
    pub out: PathBuf,
}

/// Everything preparing a request needs from the server.
pub struct Context<'a> {
    /// The job kinds and their flags ([`describe_kinds`]).
    pub kinds: &'a [KindInfo],
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

/// How the command line the job corresponds to shows a flag's value.
fn shown(role: Role, value: &Value) -> String {
    match (role, value) {
        (Role::Prompts | Role::PromptsOrBuiltin, Value::Array(p)) => {
            format!("<{} inline prompts>", p.len())
        }
        (Role::Text, Value::String(t)) => {
            format!("<inline text, {} characters>", t.chars().count())
        }
        (_, Value::Array(items)) => items
            .iter()
            .map(|i| scalar("", i).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(","),
        (_, v) => scalar("", v).unwrap_or_default(),
    }
}

/// Checks `request` and turns it into its kind's core request, with the stored direction it
/// names read and the texts it holds set aside.
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
    let flags = kind_flags(cx.kinds, kind);
    let mut argv = vec!["refusal-lens".to_owned(), kind.command().to_owned()];
    let mut fields = Map::new();
    let mut inputs = JobInputs::default();
    let mut model_id = None;
    let mut weights = Weights::default();
    for (key, value) in &request.args {
        let flag = key.replace('_', "-");
        if SERVER_FLAGS.contains(&flag.as_str()) {
            return Err(invalid(format!("`{flag}` is set by the server")));
        }
        let Some(info) = flags.get(&flag) else {
            return Err(invalid(format!(
                "`{flag}` is not a flag of {} (GET /api/jobs/kinds lists them)",
                kind.command()
            )));
        };
        if value.is_null() {
            continue;
        }
        let role = info.role;
        match role {
            Role::Switch => match value {
                Value::Bool(true) => argv.push(format!("--{flag}")),
                Value::Bool(false) => {}
                _ => return Err(invalid(format!("`{flag}` is a switch: true or false"))),
            },
            // The model is shown once, by the id it resolves to, after the loop.
            Role::Model => {}
            _ => argv.push(format!("--{flag}={}", shown(role, value))),
        }
        let field = match role {
            Role::Switch => value.clone(),
            Role::Value if flag == "weights" => {
                let name = scalar(&flag, value)?;
                weights = clap::ValueEnum::from_str(&name, false).map_err(|_| {
                    invalid(format!(
                        "`weights`: `{name}` is not one of {}",
                        info.values.join(", ")
                    ))
                })?;
                continue;
            }
            Role::Value if flag == "judge" => {
                let name = scalar(&flag, value)?;
                let judge: JudgeKind =
                    name.parse().map_err(|e| invalid(format!("`judge`: {e}")))?;
                if let JudgeKind::Model(id) = &judge {
                    check_size(&cx.registry.find(id)?, cx.limits)?;
                }
                value.clone()
            }
            Role::Value => value.clone(),
            Role::Model => {
                let id = scalar(&flag, value)?;
                check_size(&cx.registry.find(&id)?, cx.limits)?;
                model_id.get_or_insert(id);
                continue;
            }
            Role::ModelOrRecipe => {
                for spec in strings(&flag, value)? {
                    check_model_or_recipe(&flag, &spec, cx)?;
                }
                value.clone()
            }
            Role::Direction => {
                let id = scalar(&flag, value)?;
                inputs.direction = Some((id.clone(), stored_direction(&id, cx.store)?));
                Value::String(id)
            }
            Role::Prompts | Role::PromptsOrBuiltin => match value {
                Value::String(s)
                    if role == Role::PromptsOrBuiltin
                        && matches!(s.as_str(), "builtin:harmful" | "builtin:harmless") =>
                {
                    value.clone()
                }
                Value::Array(_) => {
                    check_prompts(&flag, &strings(&flag, value)?, cx.limits)?;
                    value.clone()
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
                inputs.texts.insert(flag.clone(), text.clone());
                Value::String(flag.clone())
            }
        };
        fields.insert(flag, field);
    }
    let given = |name: &str| {
        request
            .args
            .iter()
            .any(|(k, v)| k.replace('_', "-") == name && !v.is_null())
    };
    if let Some(missing) = flags.values().find(|f| f.required && !given(&f.name)) {
        return Err(invalid(format!(
            "the required flag `--{}` is missing",
            missing.name
        )));
    }
    let run = JobRun::from_fields(kind, fields)?;
    check_limits(&run, cx.limits)?;
    let default = BuiltinModel::default().alias().to_owned();
    let model = cx.registry.find(model_id.as_deref().unwrap_or(&default))?;
    check_size(&model, cx.limits)?;
    let model_flag = if flags.contains_key("base") {
        "base"
    } else {
        "model"
    };
    argv.insert(2, format!("--{model_flag}={}", model.id));
    if let Some(backend) = clap::ValueEnum::to_possible_value(&cx.backend) {
        argv.push(format!("--backend={}", backend.get_name()));
    }
    let out_dir = job_dir.join("out");
    let out = match (kind.writes_model(), model.format) {
        (false, _) => out_dir,
        (true, Format::Gguf) => out_dir.join("model.gguf"),
        (true, Format::Safetensors) => out_dir.join("model").join("model.safetensors"),
    };
    let models = ModelArgs {
        model: Registry::cli_value(&model),
        backend: cx.backend,
        weights,
    };
    Ok(Prepared {
        argv,
        run,
        inputs,
        model,
        models,
        out,
    })
}

/// A `compressed` value: a model id from the listing, or a recipe that parses.
fn check_model_or_recipe(flag: &str, spec: &str, cx: &Context<'_>) -> Result<(), RequestError> {
    match cx.registry.find(spec) {
        Ok(entry) => check_size(&entry, cx.limits),
        Err(LookupError::Io(e)) => Err(e.into()),
        Err(_) => match spec.parse::<Method>() {
            Ok(_) => Ok(()),
            // A mistyped recipe: what is wrong with it says more.
            Err(e) if looks_like_recipe(spec) => Err(invalid(format!("`{flag}`: {e}"))),
            Err(_) => Err(invalid(format!(
                "`{flag}`: `{spec}` is neither a model id (GET /api/models) nor a compression \
                 recipe such as wanda:2:4 or rtn:4:128"
            ))),
        },
    }
}

/// The direction of the stored `directions` result `id`.
fn stored_direction(id: &str, store: &Store) -> Result<DirectionFile, RequestError> {
    let not_stored = || {
        invalid(format!(
            "`direction`: `{id}` is not the id of a stored directions result"
        ))
    };
    if !super::is_generated_id(id) {
        return Err(not_stored());
    }
    let result = match store.result(id)? {
        Lookup::Found(r) => r,
        Lookup::Removed { reason, .. } => {
            return Err(invalid(format!(
                "`direction`: the result `{id}` was {reason} and is no longer stored"
            )));
        }
        Lookup::Missing => return Err(not_stored()),
    };
    let meta = result.report.get("direction.json").cloned();
    let vector = store.result_file(id, "direction.safetensors")?.found();
    let (Some(meta), Some(vector)) = (meta, vector) else {
        return Err(not_stored());
    };
    let json = serde_json::to_vec(&meta).map_err(anyhow::Error::from)?;
    DirectionFile::from_bytes(
        &vector,
        &json,
        &format!("{id}/direction.safetensors"),
        &format!("{id}/direction.json"),
    )
    .map_err(|e| invalid(format!("`direction`: {e:#}")))
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

/// A request the core's pipeline refuses: over what the server lends a job (413), or invalid
/// in itself (422).
fn run_error(e: RunError) -> RequestError {
    match e {
        RunError::TooLarge { .. } | RunError::TooMuchWork { .. } => {
            RequestError::TooLarge(e.to_string())
        }
        _ => invalid(e.to_string()),
    }
}

/// The request's own checks, then the bounds the server lends a job.
fn check_limits(run: &JobRun, limits: &Limits) -> Result<(), RequestError> {
    let bounds = limits.bounds();
    match run {
        JobRun::Generate(r) => r.validate().and_then(|()| r.check_bounds(&bounds)),
        JobRun::Directions(r) => r.validate().and_then(|()| r.check_bounds(&bounds)),
        JobRun::Eval(r) => r.validate().and_then(|()| r.check_bounds(&bounds)),
        JobRun::Compress(r) => r.validate().and_then(|()| r.check_bounds(&bounds)),
        JobRun::Compare(r) => r.validate().and_then(|()| r.check_bounds(&bounds)),
        JobRun::Aird(r) => r.validate().and_then(|()| r.check_bounds(&bounds)),
    }
    .map_err(run_error)
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

/// Every job kind's flags, read from the CLI's definitions (`cli`, the command line the
/// server was started by, so the server needs no copy of them).
pub fn describe_kinds(cli: &clap::Command) -> Vec<KindInfo> {
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

/// `kind`'s flags, by long name.
fn kind_flags(kinds: &[KindInfo], kind: JobKind) -> BTreeMap<String, FlagInfo> {
    kinds
        .iter()
        .find(|k| k.kind == kind)
        .map(|k| {
            k.flags
                .iter()
                .map(|f| (f.name.clone(), f.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

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

    /// The request's default of every field, by flag name.
    fn request_defaults(kind: JobKind) -> Map<String, Value> {
        let value = match kind {
            JobKind::Generate => serde_json::to_value(GenerateRequest::default()),
            JobKind::Directions => serde_json::to_value(DirectionsRequest::default()),
            JobKind::Eval => serde_json::to_value(EvalRequest::default()),
            JobKind::Compress => serde_json::to_value(CompressRequest::default()),
            JobKind::Compare => serde_json::to_value(CompareRequest::default()),
            JobKind::Aird => serde_json::to_value(AirdRequest::default()),
        };
        match value.expect("a request serialises") {
            Value::Object(fields) => fields,
            other => panic!("{other} is not an object"),
        }
    }

    /// Every flag a job takes is a field of its kind's core request (but the model's), with
    /// the flag's default: `GET /api/jobs/kinds` lists the defaults a job runs with.
    #[test]
    fn every_flag_of_a_job_kind_is_a_field_of_its_request_with_the_same_default() {
        let same = |a: &str, b: &str| {
            let (a, b): (Vec<&str>, Vec<&str>) = (a.split(',').collect(), b.split(',').collect());
            a.len() == b.len()
                && a.iter().zip(&b).all(|(x, y)| {
                    // f32 defaults widen to f64 in JSON (0.9 reads as 0.8999999761581421).
                    x == y
                        || matches!((x.parse::<f64>(), y.parse::<f64>()),
                            (Ok(x), Ok(y)) if (x - y).abs() <= 1e-6 * x.abs().max(1.0))
                })
        };
        for kind in JobKind::ALL {
            let defaults = request_defaults(kind);
            for flag in kind_flags(&describe_kinds(&Cli::command()), kind).values() {
                if flag.role == Role::Model || flag.name == "weights" {
                    continue;
                }
                let name = format!("{} --{}", kind.command(), flag.name);
                let Some(default) = defaults.get(&flag.name) else {
                    panic!("{name} is not a field of the {kind:?} request");
                };
                match &flag.default {
                    Some(d) => assert!(
                        same(&shown(flag.role, default), d),
                        "{name}: the flag's default is {d}, the request's {default}"
                    ),
                    None => assert!(
                        matches!(default, Value::Null | Value::Bool(false))
                            || default.as_array().is_some_and(Vec::is_empty)
                            || (flag.required && default.as_str() == Some("")),
                        "{name}: no default on the command line, {default} in the request"
                    ),
                }
            }
        }
    }
}
