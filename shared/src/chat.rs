//! Chat templates: renders a model's own Jinja chat template (GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json` `chat_template`) the way Hugging Face `apply_chat_template` does.
//!
//! Rendering uses minijinja with `trim_blocks` and `lstrip_blocks` (as transformers and
//! llama.cpp configure Jinja), Python string methods (`.strip()`, `.startswith()`, ...) through
//! minijinja-contrib's pycompat layer, and the globals templates expect: `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `tools` (none) and `raise_exception`.
//!
//! A template is code from the model file, so rendering is bounded: it runs on a fuel budget
//! (a template that loops ends with an error instead of holding its worker forever) and its
//! output is capped (one that prints gigabytes stops at the cap instead of filling memory).
//! What neither bounds is the memory of the values it builds: a loop that doubles a string
//! (`s ~ s`) reaches gigabytes in a few dozen instructions, and an allocation that fails aborts
//! the process. A server that renders other people's templates therefore hands rendering to a
//! [`Renderer`] outside its own memory.

use std::sync::Arc;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;

/// Name under which the template is stored in its environment.
const TEMPLATE_NAME: &str = "chat";

/// Stand-in instruction used to locate the instruction inside a rendered prompt. Plain ASCII
/// without whitespace, so templates that trim or strip content leave it intact.
const SENTINEL: &str = "REFUSAL_LENS_INSTRUCTION_SENTINEL_5f1c";

/// Instructions one rendering may execute. A single-turn prompt through the largest real
/// templates (Qwen's with its tools branch, Llama 3.1's) takes a few hundred; a template that
/// loops runs out of it in well under a second.
const FUEL: u64 = 1_000_000;

/// Output one rendering may produce beyond its messages' own text (each counted
/// [`CONTENT_ECHOES`] times, for templates that repeat a message): far past any real
/// template's markup, far below what would strain memory.
const MARKUP_BYTES: usize = 1 << 20;

/// How many times a template may repeat its messages' text in its output.
const CONTENT_ECHOES: usize = 4;

/// Stand-in system prompt used to find a system turn the template inserts by itself.
const SYSTEM_SENTINEL: &str = "REFUSAL_LENS_SYSTEM_SENTINEL_9b2e";

/// ChatML without a default system prompt, for models that ship no template.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/// Errors from compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template source is not valid Jinja.
    #[error("chat template does not compile: {0}")]
    Syntax(#[source] minijinja::Error),
    /// Rendering failed (undefined function, type error, ...).
    #[error("chat template failed to render: {0}")]
    Render(#[source] minijinja::Error),
    /// The template itself rejected the conversation through `raise_exception(message)`.
    #[error("chat template raised an exception: {0}")]
    Raised(String),
    /// Rendering printed more than a prompt's template could need ([`MARKUP_BYTES`] past its
    /// messages' text).
    #[error(
        "chat template printed more than {0} bytes for one prompt; a chat template adds \
             markup around the messages, not megabytes"
    )]
    TooLong(usize),
    /// The instruction does not appear exactly once in the rendered prompt, so the text after it
    /// cannot be determined.
    #[error("the instruction appears {0} times in the rendered prompt (expected once)")]
    InstructionNotFound(usize),
    /// Rendering the real instruction did not keep the text around it that a stand-in
    /// instruction produced; the template depends on the instruction's content.
    #[error("the template renders differently around different instructions")]
    InconsistentRendering,
    /// `tokenizer_config.json` is not valid JSON.
    #[error("invalid tokenizer_config.json: {0}")]
    Config(#[from] serde_json::Error),
    /// A [`Renderer`] outside this process stopped the rendering or failed on it; the message
    /// says which (a memory limit, an error the template raised there, ...).
    #[error("{0}")]
    Elsewhere(String),
}

/// Renders a template's conversations somewhere other than this process's memory (a child
/// process with a memory limit, say), for templates this process must not trust.
pub trait Renderer: Send + Sync + std::fmt::Debug {
    /// What [`ChatTemplate::render`] would return for `template`, rendered elsewhere.
    fn render(
        &self,
        template: &ChatTemplate,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError>;
}

/// Who speaks a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// System prompt.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

/// One chat message, serialized for templates as `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Speaker.
    pub role: Role,
    /// Text of the message.
    pub content: String,
}

impl Message {
    /// A message from `role` with `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// A single-turn prompt and the pieces of template text around the instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormattedPrompt {
    /// The complete rendered prompt, ending with the generation prompt.
    pub text: String,
    /// Template text before the instruction (system turn, user-turn header, BOS, ...).
    pub prefix: String,
    /// Template text after the instruction, e.g. `<|im_end|>\n<|im_start|>assistant\n` for
    /// ChatML: the post-instruction positions refusal directions are read from.
    pub suffix: String,
    /// A default system turn the template forced in although none was asked for (only for
    /// non-ChatML templates; see [`ChatTemplate::user_prompt`]).
    pub default_system: Option<String>,
}

/// Marker attached to the error `raise_exception` produces, so it can be told apart from other
/// rendering failures.
#[derive(Debug)]
struct TemplateException(String);

impl std::fmt::Display for TemplateException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateException {}

/// `raise_exception(message)`, which Hugging Face templates call to reject a conversation.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(TemplateException(message)),
    )
}

/// A rendering's output, which refuses to grow past `limit` bytes.
struct CappedOutput {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("past the output cap"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Maps a rendering error, surfacing `raise_exception` as [`ChatError::Raised`].
fn render_error(err: minijinja::Error) -> ChatError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(TemplateException(message)) = e.downcast_ref() {
            return ChatError::Raised(message.clone());
        }
        source = e.source();
    }
    ChatError::Render(err)
}

/// A compiled chat template with the special-token strings it may reference.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    /// Where [`ChatTemplate::render`] renders, when not here.
    renderer: Option<Arc<dyn Renderer>>,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` are the texts templates see under those
    /// names (empty when the model has none).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks; without them block tags
        // leave newlines and indentation behind.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(ChatError::Syntax)?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            renderer: None,
        })
    }

    /// This template, rendered by `renderer` from now on instead of in this process.
    pub fn rendered_by(self, renderer: Arc<dyn Renderer>) -> Self {
        ChatTemplate {
            renderer: Some(renderer),
            ..self
        }
    }

    /// The ChatML fallback ([`CHATML_TEMPLATE`]).
    pub fn chatml(bos_token: &str, eos_token: &str) -> Result<Self, ChatError> {
        Self::new(CHATML_TEMPLATE, bos_token, eos_token)
    }

    /// The model's own template, or ChatML when it ships none; BOS/EOS texts come from the
    /// tokenizer.
    pub fn for_model(source: Option<&str>, tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let bos = tokenizer.bos_token().unwrap_or_default();
        let eos = tokenizer.eos_token().unwrap_or_default();
        match source {
            Some(s) => Self::new(s, bos, eos),
            None => Self::chatml(bos, eos),
        }
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text the template sees as `bos_token`.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The text the template sees as `eos_token`.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders a conversation; `add_generation_prompt` appends the assistant-turn header.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        match &self.renderer {
            Some(renderer) => renderer.render(self, messages, add_generation_prompt),
            None => self.render_here(messages, add_generation_prompt),
        }
    }

    /// [`ChatTemplate::render`] in this process, whatever renderer the template was given.
    pub fn render_here(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(ChatError::Render)?;
        let content: usize = messages.iter().map(|m| m.content.len()).sum();
        let mut out = CappedOutput {
            bytes: Vec::new(),
            limit: MARKUP_BYTES.saturating_add(content.saturating_mul(CONTENT_ECHOES)),
            overflowed: false,
        };
        let context = context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => Value::from(()),
        };
        if let Err(e) = template.render_captured_to(context, &mut out) {
            return Err(if out.overflowed {
                ChatError::TooLong(out.limit)
            } else {
                render_error(e)
            });
        }
        String::from_utf8(out.bytes).map_err(|e| {
            ChatError::Render(minijinja::Error::new(
                ErrorKind::BadSerialization,
                format!("rendered text is not UTF-8: {e}"),
            ))
        })
    }

    /// Formats a single user turn (optionally after a system prompt) followed by the
    /// generation prompt, and reports the template text after the instruction.
    ///
    /// With `system = None` the prompt has no system turn (METHOD §2), even where the model's
    /// own template would insert a default one: a ChatML template (SmolLM2's and Qwen's both
    /// add one) is then rendered as plain ChatML, the format the refusal-direction study and
    /// our reference fixtures use. A non-ChatML template that forces a default system turn
    /// keeps it, and [`FormattedPrompt::default_system`] says so.
    ///
    /// The split is found by rendering a stand-in instruction, so it works for any template.
    pub fn user_prompt(
        &self,
        instruction: &str,
        system: Option<&str>,
    ) -> Result<FormattedPrompt, ChatError> {
        let mut default_system = None;
        if system.is_none() {
            default_system = self.injected_system_turn()?;
            if default_system.is_some() && self.source.contains("<|im_start|>") {
                let plain = ChatTemplate::chatml(&self.bos_token, &self.eos_token)?;
                return plain.split_prompt(instruction, None);
            }
        }
        let mut prompt = self.split_prompt(instruction, system)?;
        prompt.default_system = default_system;
        Ok(prompt)
    }

    /// The system turn the template adds on its own when the conversation has none, if any.
    ///
    /// Found by comparing a rendering with an explicit (stand-in) system prompt, `A + S + B`
    /// before the instruction, with one without: if the latter reads `A + X + B`, the template
    /// inserted `X`.
    fn injected_system_turn(&self) -> Result<Option<String>, ChatError> {
        let with_system = match self.split_prompt(SENTINEL, Some(SYSTEM_SENTINEL)) {
            Ok(prompt) => prompt,
            // A template that rejects system turns (Mistral's) inserts none of its own either.
            Err(ChatError::Raised(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some((a, b)) = with_system.prefix.split_once(SYSTEM_SENTINEL) else {
            return Ok(None);
        };
        let without = self.split_prompt(SENTINEL, None)?;
        let d = without.prefix;
        let injected = d.len() > a.len() + b.len() && d.starts_with(a) && d.ends_with(b);
        Ok(injected.then(|| d[a.len()..d.len() - b.len()].to_string()))
    }

    fn split_prompt(
        &self,
        instruction: &str,
        system: Option<&str>,
    ) -> Result<FormattedPrompt, ChatError> {
        let conversation = |content: &str| {
            let mut messages = Vec::with_capacity(2);
            if let Some(system) = system {
                messages.push(Message::new(Role::System, system));
            }
            messages.push(Message::new(Role::User, content));
            messages
        };

        let marked = self.render(&conversation(SENTINEL), true)?;
        let count = marked.matches(SENTINEL).count();
        let (prefix, suffix) = match marked.split_once(SENTINEL) {
            Some(parts) if count == 1 => parts,
            _ => return Err(ChatError::InstructionNotFound(count)),
        };

        let text = self.render(&conversation(instruction), true)?;
        if text.len() < prefix.len() + suffix.len()
            || !text.starts_with(prefix)
            || !text.ends_with(suffix)
        {
            return Err(ChatError::InconsistentRendering);
        }
        Ok(FormattedPrompt {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
            text,
            default_system: None,
        })
    }
}

/// The chat template in a `tokenizer_config.json`, if any. A list of named templates (the
/// newer format) yields the one named `"default"`, else the first.
pub fn template_from_tokenizer_config(config_json: &[u8]) -> Result<Option<String>, ChatError> {
    let config: serde_json::Value = serde_json::from_slice(config_json)?;
    let template = match config.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(named)) => {
            let source = |t: &serde_json::Value| t.get("template")?.as_str().map(str::to_owned);
            named
                .iter()
                .find(|t| t.get("name").and_then(serde_json::Value::as_str) == Some("default"))
                .or_else(|| named.first())
                .and_then(source)
        }
        _ => None,
    };
    Ok(template)
}

/// The chat template stored in GGUF metadata (`tokenizer.chat_template`), if any.
pub fn gguf_template(file: &crate::gguf::GgufFile) -> Option<&str> {
    file.get("tokenizer.chat_template")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(content: &str) -> Vec<Message> {
        vec![Message::new(Role::User, content)]
    }

    /// Renders in this process, counting the renderings it was asked for.
    #[derive(Debug, Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl Renderer for Counting {
        fn render(
            &self,
            template: &ChatTemplate,
            messages: &[Message],
            add_generation_prompt: bool,
        ) -> Result<String, ChatError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            template.render_here(messages, add_generation_prompt)
        }
    }

    /// Fails every rendering, as a renderer whose child ran out of memory does.
    #[derive(Debug)]
    struct OutOfMemory;

    impl Renderer for OutOfMemory {
        fn render(&self, _: &ChatTemplate, _: &[Message], _: bool) -> Result<String, ChatError> {
            Err(ChatError::Elsewhere("needed more than its 64 MiB".into()))
        }
    }

    const BRACKETS: &str = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}\
        {% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";

    #[test]
    fn a_template_given_a_renderer_renders_every_prompt_through_it() {
        let counting = Arc::new(Counting::default());
        let elsewhere = ChatTemplate::new(BRACKETS, "<s>", "</s>")
            .unwrap()
            .rendered_by(counting.clone());
        let here = ChatTemplate::new(BRACKETS, "<s>", "</s>").unwrap();
        for system in [None, Some("Be brief.")] {
            assert_eq!(
                elsewhere.user_prompt("Why?", system).unwrap(),
                here.user_prompt("Why?", system).unwrap()
            );
        }
        // Each prompt: the stand-in and the real instruction, plus the default-system probe.
        assert!(counting.0.load(std::sync::atomic::Ordering::SeqCst) >= 4);
        assert_eq!(elsewhere.bos_token(), "<s>");
        assert_eq!(elsewhere.eos_token(), "</s>");
    }

    #[test]
    fn a_renderer_that_fails_fails_the_prompt_with_its_reason() {
        let t = ChatTemplate::new(BRACKETS, "", "")
            .unwrap()
            .rendered_by(Arc::new(OutOfMemory));
        let err = t.user_prompt("Why?", None).unwrap_err();
        assert!(matches!(err, ChatError::Elsewhere(_)), "{err:?}");
        assert_eq!(err.to_string(), "needed more than its 64 MiB");
    }

    #[test]
    fn chatml_user_turn() {
        let t = ChatTemplate::chatml("", "").unwrap();
        let p = t.user_prompt("Hi there?", None).unwrap();
        assert_eq!(
            p.text,
            "<|im_start|>user\nHi there?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(p.prefix, "<|im_start|>user\n");
        assert_eq!(p.suffix, "<|im_end|>\n<|im_start|>assistant\n");
        assert_eq!(
            t.render(&user("x"), false).unwrap(),
            "<|im_start|>user\nx<|im_end|>\n"
        );
    }

    #[test]
    fn system_prompt_goes_into_prefix() {
        let t = ChatTemplate::chatml("", "").unwrap();
        let p = t.user_prompt("Q", Some("Be brief.")).unwrap();
        assert_eq!(
            p.prefix,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        );
        assert_eq!(p.text, format!("{}Q{}", p.prefix, p.suffix));
    }

    #[test]
    fn llama3_style_template_with_bos_trim_and_pycompat() {
        let source = "{{- bos_token }}{%- if strftime_now is defined %}{{ 'never' }}{% endif %}\n\
            {%- for m in messages %}\n\
                {%- if m.role == 'system' and not m.content.strip().startswith('You') %}\
                    {{- raise_exception('odd system prompt') }}{% endif %}\n\
                {{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}\n\
            {%- endfor %}\n\
            {%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}\n";
        let t = ChatTemplate::new(source, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let p = t.user_prompt("  Hello  ", Some("You are terse.")).unwrap();
        assert_eq!(
            p.text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            p.suffix,
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let err = t.user_prompt("Hello", Some("Be terse.")).unwrap_err();
        assert!(matches!(err, ChatError::Raised(ref m) if m == "odd system prompt"));
    }

    /// Llama-2-chat's template as Meta's `tokenizer_config.json` ships it.
    const LLAMA2_TEMPLATE: &str = include_str!("../../tests/templates/llama2.jinja");

    /// Mistral-7B-Instruct-v0.2's template as Mistral's `tokenizer_config.json` ships it.
    const MISTRAL_TEMPLATE: &str = include_str!("../../tests/templates/mistral.jinja");

    #[test]
    fn llama2_template_renders_inst_and_sys_blocks() {
        let t = ChatTemplate::new(LLAMA2_TEMPLATE, "<s>", "</s>").unwrap();
        let p = t.user_prompt("How do I bake bread? ", None).unwrap();
        assert_eq!(p.text, "<s>[INST] How do I bake bread? [/INST]");
        assert_eq!(p.prefix, "<s>[INST] ");
        assert_eq!(p.suffix, " [/INST]");
        assert_eq!(p.default_system, None);
        let p = t.user_prompt("Hi", Some("Be kind.")).unwrap();
        assert_eq!(
            p.text,
            "<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST]"
        );
        let turns = [
            Message::new(Role::User, "a"),
            Message::new(Role::Assistant, " b "),
            Message::new(Role::User, "c"),
        ];
        assert_eq!(
            t.render(&turns, true).unwrap(),
            "<s>[INST] a [/INST] b </s><s>[INST] c [/INST]"
        );
        let err = t.render(&turns[1..], true).unwrap_err();
        assert!(matches!(err, ChatError::Raised(ref m) if m.starts_with("Conversation roles")));
    }

    #[test]
    fn mistral_template_renders_inst_without_system() {
        let t = ChatTemplate::new(MISTRAL_TEMPLATE, "<s>", "</s>").unwrap();
        let p = t.user_prompt("Tell me a joke", None).unwrap();
        assert_eq!(p.text, "<s>[INST] Tell me a joke [/INST]");
        assert_eq!(p.suffix, " [/INST]");
        let err = t.user_prompt("x", Some("system")).unwrap_err();
        assert!(matches!(err, ChatError::Raised(ref m) if m.starts_with("Conversation roles")));
    }

    #[test]
    fn tools_is_none_and_missing_fields_are_falsy() {
        let source = "{% if tools %}T{% endif %}{% for m in messages %}\
            {% if not m.tool_calls %}{{ m.content }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        assert_eq!(t.render(&user("ok"), true).unwrap(), "ok");
    }

    #[test]
    fn syntax_and_render_errors_are_reported() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ChatError::Syntax(_))
        ));
        let t = ChatTemplate::new("{{ no_such_function() }}", "", "").unwrap();
        assert!(matches!(
            t.render(&user("x"), true),
            Err(ChatError::Render(_))
        ));
    }

    #[test]
    fn a_template_that_loops_runs_out_of_fuel() {
        let looping = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}\
                       {% endfor %}";
        let t = ChatTemplate::new(looping, "", "").unwrap();
        let started = std::time::Instant::now();
        let err = t.render(&user("x"), true).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
        // 10^10 iterations would take hours; the fuel ends it at a million instructions.
        assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
    }

    #[test]
    fn a_template_that_prints_megabytes_is_cut_off() {
        let t = ChatTemplate::new(
            "{% for i in range(50) %}{{ 'x' * 1000000 }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&user("hello"), true).unwrap_err();
        assert!(
            matches!(err, ChatError::TooLong(n) if n == MARKUP_BYTES + 20),
            "{err}"
        );
        assert!(err.to_string().contains("printed more than"), "{err}");
        // A long message is not markup: it may be echoed without reaching the cap.
        let long = "y".repeat(3 << 20);
        let echo = ChatTemplate::new("{{ messages[0]['content'] }}", "", "").unwrap();
        assert_eq!(echo.render(&user(&long), true).unwrap(), long);
    }

    #[test]
    fn instruction_must_appear_once() {
        let ignores = ChatTemplate::new("fixed", "", "").unwrap();
        assert!(matches!(
            ignores.user_prompt("x", None),
            Err(ChatError::InstructionNotFound(0))
        ));
        let echoes = ChatTemplate::new(
            "{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(matches!(
            echoes.user_prompt("x", None),
            Err(ChatError::InstructionNotFound(2))
        ));
    }

    #[test]
    fn model_template_or_chatml_fallback() {
        let tok = crate::tokenizer::tests::toy();
        let own = ChatTemplate::for_model(Some("{{ bos_token }}|{{ eos_token }}"), &tok).unwrap();
        assert_eq!(own.render(&[], false).unwrap(), "<|im_start|>|<|im_end|>");
        let fallback = ChatTemplate::for_model(None, &tok).unwrap();
        assert_eq!(fallback.source(), CHATML_TEMPLATE);
    }

    #[test]
    fn tokenizer_config_templates() {
        let plain = br#"{"chat_template": "{{ 1 }}"}"#;
        assert_eq!(
            template_from_tokenizer_config(plain).unwrap().as_deref(),
            Some("{{ 1 }}")
        );
        let named = br#"{"chat_template": [{"name": "tool_use", "template": "a"},
                                          {"name": "default", "template": "b"}]}"#;
        assert_eq!(
            template_from_tokenizer_config(named).unwrap().as_deref(),
            Some("b")
        );
        assert_eq!(template_from_tokenizer_config(b"{}").unwrap(), None);
        assert!(matches!(
            template_from_tokenizer_config(b"{"),
            Err(ChatError::Config(_))
        ));
    }
}
