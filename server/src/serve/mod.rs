//! `refusal-lens serve`: the web app and the JSON API behind it. Jobs run the CLI's own
//! commands; their results are stored in SQLite and shared as links.

pub mod access;
pub mod api;
pub mod jobs;
pub mod listen;
pub mod models;
pub mod quick_direction;
pub mod redact;
pub mod request;
pub mod retention;
pub mod store;
pub mod template_sandbox;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use self::access::{Access, AccessPolicy};
use self::jobs::Jobs;
use self::listen::ConnectionLimits;
use self::models::Registry;
use self::quick_direction::QuickDirection;
use self::redact::Redactor;
use self::request::{KindInfo, Limits};
use self::retention::Retention;
use self::store::Store;
use self::template_sandbox::TemplateSandbox;
use crate::device::Backend;
use crate::model::builtin::BuiltinModel;
use crate::model::fetch::{Cache, ensure_builtin};

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Where results, job records and derived models are kept (default: the user's data
    /// directory, e.g. ~/.local/share/refusal-lens).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A directory of models to offer besides the built-in ones: .gguf files and Hugging Face
    /// directories.
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// The built web app (scripts/build-web.sh writes dist/).
    #[arg(long)]
    pub web_dir: Option<PathBuf>,
    /// Jobs run at once (each uses every core).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Jobs that may wait; more are refused with 503 and Retry-After.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Where jobs run their models.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
    /// Do not download the default model at start.
    #[arg(long)]
    pub no_fetch: bool,
    /// The model whose refusal direction is found in the background at start, on the built-in
    /// prompt sets, for the Playground to open with; `none` for no such job (default: the
    /// default model, unless --no-fetch). Found again at the next start while the model's
    /// files are the same.
    #[arg(long)]
    pub quick_direction: Option<String>,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub connections: ConnectionLimits,
    #[command(flatten)]
    pub access: Access,
    #[command(flatten)]
    pub retention: Retention,
}

/// How often results are checked against the retention policy besides after each job.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// What every request handler shares.
pub struct AppState {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub jobs: Arc<Jobs>,
    pub limits: Limits,
    pub backend: Backend,
    pub web_dir: Option<PathBuf>,
    /// Which hosts, origins and keys are answered.
    pub access: Arc<AccessPolicy>,
    /// Takes server paths out of error answers.
    pub redactor: Redactor,
    /// The job kinds and their flags, from the command line the server was started by.
    pub kinds: Vec<KindInfo>,
    /// The direction the Playground opens with.
    pub quick_direction: QuickDirection,
}

/// 128 random bits, hex: ids of jobs and results, unguessable.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` has the form of [`new_id`]'s ids (jobs and results).
pub fn is_generated_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ServeArgs {
    /// The model `--quick-direction` names, if any.
    fn quick_direction_model(&self) -> Option<String> {
        match self.quick_direction.as_deref() {
            Some("none") => None,
            Some(model) => Some(model.to_owned()),
            None if self.no_fetch => None,
            None => Some(BuiltinModel::default().alias().to_owned()),
        }
    }

    /// Opens the database and starts the job workers, which take the job kinds of `cli`.
    ///
    /// # Errors
    ///
    /// Unwritable data directory, unreadable database.
    pub fn state(&self, cli: &clap::Command) -> Result<Arc<AppState>> {
        let access = Arc::new(self.access.policy()?);
        let data_dir = match &self.data_dir {
            Some(d) => d.clone(),
            None => dirs::data_dir()
                .context("cannot find the user's data directory; pass --data-dir")?
                .join("refusal-lens"),
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let store = Arc::new(Store::open(&data_dir.join("refusal-lens.sqlite3"))?);
        let interrupted = store.fail_unfinished_jobs()?;
        if interrupted > 0 {
            tracing::warn!("{interrupted} jobs of a previous run were left unfinished");
        }
        let registry = Arc::new(Registry::new(
            Cache::from_env()?,
            self.models_dir.clone(),
            data_dir.join("models"),
        ));
        let redactor = Redactor::new(
            registry
                .directories()
                .chain([data_dir.as_path()])
                .chain(self.web_dir.as_deref()),
        );
        let jobs = Jobs::start(
            store.clone(),
            registry.clone(),
            data_dir.join("jobs"),
            self.workers,
            self.queue,
            Duration::from_secs(self.limits.job_timeout_s),
            self.retention.clone(),
            redactor.clone(),
        )?;
        // Results also age while no job runs.
        let weak = Arc::downgrade(&jobs);
        std::thread::Builder::new()
            .name("retention".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(SWEEP_EVERY);
                    let Some(jobs) = weak.upgrade() else { return };
                    jobs.sweep();
                }
            })
            .context("starting the retention sweep")?;
        Ok(Arc::new(AppState {
            redactor,
            store,
            registry,
            jobs,
            limits: self.limits.clone(),
            backend: self.backend,
            web_dir: self.web_dir.clone(),
            access,
            kinds: self::request::describe_kinds(cli),
            quick_direction: QuickDirection::new(self.quick_direction_model()),
        }))
    }
}

/// Serves until Ctrl-C or SIGTERM, with the job kinds of the command line `cli`.
///
/// # Errors
///
/// The address is taken, the data directory is unusable, the default model cannot be fetched.
pub fn run(args: &ServeArgs, cli: &clap::Command) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    args.access.check_listen(args.addr)?;
    args.backend.device()?;
    if !args.no_fetch {
        let model = BuiltinModel::default();
        ensure_builtin(&model.artifact(), model.alias(), &Cache::from_env()?, true)
            .with_context(|| format!("fetching the default model {model}"))?;
    }
    if let Some(web) = &args.web_dir
        && !web.join("index.html").is_file()
    {
        anyhow::bail!(
            "--web-dir {}: no index.html (build the app with scripts/build-web.sh)",
            web.display()
        );
    }
    // Before any job can open a model: a model opened earlier (and kept for the next job)
    // would render its template in this process.
    let program = std::env::current_exe().context("finding this program, to render templates")?;
    crate::model::open::render_templates_with(Arc::new(TemplateSandbox::new(
        program,
        args.limits.template_memory_mib,
    )));
    let state = args.state(cli)?;
    crate::model::kept::keep_last_model();
    quick_direction::start(&state);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("listening on {}", args.addr))?;
        let addr = listener.local_addr()?;
        let jobs = state.jobs.clone();
        // The first line on stdout, for scripts and tests that start the server on port 0.
        println!("listening on http://{addr}");
        tracing::info!("Refusal Lens at http://{addr} (API docs at /api/docs)");
        listen::serve(
            listener,
            api::router(state),
            &args.connections,
            shutdown_signal(jobs),
        )
        .await;
        Ok(())
    })
}

/// Resolves at Ctrl-C or SIGTERM, after asking every job to stop (so their event streams end
/// and the server can close its connections); a second Ctrl-C exits at once.
async fn shutdown_signal(jobs: std::sync::Arc<Jobs>) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: cancelling jobs (Ctrl-C again to quit at once)");
    jobs.cancel_all();
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
}
