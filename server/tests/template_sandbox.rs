//! The server's chat template renderer (`serve/template_sandbox.rs`) against the real child
//! process: what it renders equals rendering in process, and a template that takes the
//! memory limit fails its prompt while the next rendering starts a fresh child.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use refusal_core::chat::{ChatError, ChatTemplate, Message, Role};
use refusal_lens::serve::template_sandbox::TemplateSandbox;

fn sandbox(memory_mib: u64) -> Arc<TemplateSandbox> {
    Arc::new(TemplateSandbox::new(
        PathBuf::from(env!("CARGO_BIN_EXE_refusal-lens")),
        memory_mib,
    ))
}

fn user(content: &str) -> Vec<Message> {
    vec![Message::new(Role::User, content)]
}

/// Llama 3's shape: BOS, headers, `trim`, the generation prompt.
const LLAMA3_LIKE: &str = "{{- bos_token }}{%- for m in messages %}\
    {{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}\
    {%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

#[test]
fn renders_what_the_template_renders_in_process() {
    let sandbox = sandbox(64);
    for (source, bos, eos) in [
        (LLAMA3_LIKE, "<|begin_of_text|>", "<|eot_id|>"),
        (refusal_core::chat::CHATML_TEMPLATE, "", "<|im_end|>"),
    ] {
        let here = ChatTemplate::new(source, bos, eos).unwrap();
        let there = ChatTemplate::new(source, bos, eos)
            .unwrap()
            .rendered_by(sandbox.clone());
        for prompt in [
            "Why is the sky blue?",
            "  padded  ",
            "ünïcode \u{1F600}\n\"quoted\"",
        ] {
            assert_eq!(
                there.render(&user(prompt), true).unwrap(),
                here.render(&user(prompt), true).unwrap()
            );
            assert_eq!(
                there.user_prompt(prompt, Some("Be brief.")).unwrap(),
                here.user_prompt(prompt, Some("Be brief.")).unwrap()
            );
        }
    }
}

#[test]
fn a_template_error_comes_back_as_the_same_error() {
    let sandbox = sandbox(64);
    let raising = ChatTemplate::new("{{ raise_exception('no system turns') }}", "", "")
        .unwrap()
        .rendered_by(sandbox.clone());
    let err = raising.render(&user("x"), true).unwrap_err();
    assert!(
        matches!(&err, ChatError::Raised(m) if m == "no system turns"),
        "{err:?}"
    );
    let printing = ChatTemplate::new(
        "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
        "",
        "",
    )
    .unwrap()
    .rendered_by(sandbox.clone());
    let err = printing.render(&user("x"), true).unwrap_err();
    assert!(matches!(err, ChatError::TooLong(_)), "{err:?}");
    let looping = ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .unwrap()
    .rendered_by(sandbox);
    let err = looping.render(&user("x"), true).unwrap_err();
    assert!(err.to_string().contains("fuel"), "{err}");
}

#[test]
fn a_template_past_the_memory_limit_fails_and_the_next_one_renders() {
    let sandbox = sandbox(64);
    // 2^41 bytes by doubling, or 2^40 by recursion: a process abort in the server's memory.
    for source in [
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}\
         {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        "{% macro grow(s, n) %}{% if n > 0 %}{{ grow(s ~ s, n - 1) }}{% else %}{{ s|length }}\
         {% endif %}{% endmacro %}{{ grow('ab', 40) }}",
    ] {
        let hostile = ChatTemplate::new(source, "", "")
            .unwrap()
            .rendered_by(sandbox.clone());
        let started = Instant::now();
        let err = hostile.render(&user("x"), true).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        let message = err.to_string();
        assert!(
            message.contains("64 MiB") && message.contains("--template-memory-mib"),
            "{message}"
        );
        let chatml = ChatTemplate::chatml("", "")
            .unwrap()
            .rendered_by(sandbox.clone());
        assert_eq!(
            chatml.render(&user("x"), false).unwrap(),
            "<|im_start|>user\nx<|im_end|>\n"
        );
    }
}
