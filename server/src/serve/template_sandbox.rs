//! Chat templates rendered in a child process with a memory limit, so that a model file's
//! template cannot take the server's memory (see [`refusal_core::chat`]: fuel bounds a
//! template's instructions and the output is capped, but a loop that doubles a string reaches
//! gigabytes within a few dozen instructions, and a failed allocation aborts the process).
//!
//! The child is this same binary (`refusal-lens render-templates`, a hidden subcommand) with
//! its data segment limited by `setrlimit` before it starts. It reads one request per line on stdin and answers
//! one line on stdout, both JSON; it is started at the first rendering, kept for the next, and
//! started again after it died. Rendering a prompt this way costs a pipe round trip and a
//! template compile, well under a millisecond, against the tokenization and forward pass that
//! follow it.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result};
use refusal_core::chat::{ChatError, ChatTemplate, Message, Renderer};
use serde::{Deserialize, Serialize};

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "render-templates";

/// One rendering, as sent to the child.
#[derive(Serialize, Deserialize)]
struct Request {
    source: String,
    bos_token: String,
    eos_token: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
}

/// Why the child could not render, as it answers.
#[derive(Serialize, Deserialize)]
enum Failure {
    /// The template called `raise_exception(message)`.
    Raised(String),
    /// The output passed its cap of this many bytes.
    TooLong(usize),
    /// Anything else, as the error reads.
    Other(String),
}

impl From<ChatError> for Failure {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::Raised(message) => Failure::Raised(message),
            ChatError::TooLong(limit) => Failure::TooLong(limit),
            other => Failure::Other(other.to_string()),
        }
    }
}

impl From<Failure> for ChatError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Raised(message) => ChatError::Raised(message),
            Failure::TooLong(limit) => ChatError::TooLong(limit),
            Failure::Other(message) => ChatError::Elsewhere(message),
        }
    }
}

type Reply = std::result::Result<String, Failure>;

/// The running child and its pipes.
struct Worker {
    process: Child,
    requests: BufWriter<ChildStdin>,
    replies: BufReader<ChildStdout>,
}

/// A [`Renderer`] that renders in a child process of `program` limited to `memory_mib` MiB of
/// data.
#[derive(Debug)]
pub struct TemplateSandbox {
    program: PathBuf,
    memory_mib: u64,
    child: Mutex<Option<Worker>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "template renderer (pid {})", self.process.id())
    }
}

impl TemplateSandbox {
    /// Renders through `program render-templates` (`program` is this binary) limited to
    /// `memory_mib` MiB of data; nothing starts until the first rendering.
    pub fn new(program: PathBuf, memory_mib: u64) -> Self {
        TemplateSandbox {
            program,
            memory_mib,
            child: Mutex::new(None),
        }
    }

    fn start(&self) -> Result<Worker, ChatError> {
        let mut command = Command::new(&self.program);
        command
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        limit_data(&mut command, self.memory_mib);
        let mut process = command.spawn().map_err(|e| {
            ChatError::Elsewhere(format!("cannot start the chat template renderer: {e}"))
        })?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            unreachable!("both pipes were asked for");
        };
        Ok(Worker {
            process,
            requests: BufWriter::new(stdin),
            replies: BufReader::new(stdout),
        })
    }

    /// What to say when the child stopped in the middle of a rendering.
    fn stopped(&self, status: std::io::Result<ExitStatus>) -> ChatError {
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("its status cannot be read: {e}"),
        };
        ChatError::Elsewhere(format!(
            "chat template stopped while rendering one prompt ({status}): it needed more than \
             its {} MiB (serve --template-memory-mib); a chat template adds markup around the \
             messages, not hundreds of megabytes",
            self.memory_mib
        ))
    }
}

/// Sends one request and reads its reply; `None` when the child is gone.
fn exchange(child: &mut Worker, request: &Request) -> Option<Reply> {
    serde_json::to_writer(&mut child.requests, request).ok()?;
    child.requests.write_all(b"\n").ok()?;
    child.requests.flush().ok()?;
    let mut line = String::new();
    match child.replies.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => serde_json::from_str(&line).ok(),
    }
}

impl Renderer for TemplateSandbox {
    fn render(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let request = Request {
            source: template.source().to_owned(),
            bos_token: template.bos_token().to_owned(),
            eos_token: template.eos_token().to_owned(),
            messages: messages.to_vec(),
            add_generation_prompt,
        };
        let mut slot = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = match slot.as_mut() {
            Some(child) => child,
            None => slot.insert(self.start()?),
        };
        match exchange(child, &request) {
            Some(reply) => reply.map_err(ChatError::from),
            None => {
                let mut gone = slot.take().expect("the child was just used");
                // A child that answered garbage is still running: stop it before waiting.
                let _ = gone.process.kill();
                Err(self.stopped(gone.process.wait()))
            }
        }
    }
}

/// The child's side: renders each request read from stdin in this process and answers on
/// stdout, until stdin closes. The last template compiled is kept for the next request, which
/// is nearly always for the same model.
///
/// # Errors
///
/// stdin or stdout fails, a request is not JSON.
pub fn serve_requests() -> Result<()> {
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut compiled = None;
    for line in stdin.lines() {
        let request: Request = serde_json::from_str(&line.context("reading a rendering request")?)
            .context("a rendering request is not valid JSON")?;
        serde_json::to_writer(&mut stdout, &render(&mut compiled, &request))?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
    }
    Ok(())
}

/// Renders `request` in this process, with `compiled` if it is the request's template, else
/// compiling it into `compiled`.
fn render(compiled: &mut Option<ChatTemplate>, request: &Request) -> Reply {
    let same = compiled.as_ref().is_some_and(|t| {
        t.source() == request.source
            && t.bos_token() == request.bos_token
            && t.eos_token() == request.eos_token
    });
    let template = match compiled {
        Some(template) if same => template,
        _ => compiled.insert(ChatTemplate::new(
            &request.source,
            &request.bos_token,
            &request.eos_token,
        )?),
    };
    Ok(template.render_here(&request.messages, request.add_generation_prompt)?)
}

/// Limits the data segment (heap and private mappings, Linux since 4.7) of the process
/// `command` starts to `memory_mib` MiB, from its first instruction: past it an allocation
/// fails, which ends the process. Set before `exec`, not by the child itself, because mimalloc
/// reserves its arena at start, and a limit set later leaves what was reserved unbounded
/// (measured: a doubling template reached 590 MB of RSS under a 64 MiB limit set in the child,
/// 52 MB with it set before `exec`).
#[cfg(unix)]
fn limit_data(command: &mut Command, memory_mib: u64) {
    use std::os::unix::process::CommandExt;
    let bytes = memory_mib.saturating_mul(1 << 20) as libc::rlim_t;
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: between fork and exec the closure makes one system call (async-signal-safe) on a
    // struct it owns; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// Without setrlimit (Windows) the child has no limit of its own: a template that takes all
/// memory still ends the child when an allocation fails, not the server.
#[cfg(not(unix))]
fn limit_data(_command: &mut Command, _memory_mib: u64) {}
