//! GGUF tokenizers against llama.cpp's own vocabulary tests: the vocab-only GGUF files it
//! ships for several tokenizer families, with texts (`.inp`) chosen to break tokenizers
//! (whitespace runs, digits, accents, CJK, emoji, code) and the token ids each family's
//! reference tokenizer gives them (`.out`). Families we do not implement must be refused
//! naming the value, never tokenized approximately.

use refusal_core::gguf::GgufFile;
use refusal_core::tokenizer::{Tokenizer, TokenizerError, gguf_vocab};
use refusal_tests::llamacpp_vocab_file;

/// llama.cpp's separator between test texts in `.inp` files (tests/test-tokenizer-0.cpp).
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn tokenizer(family: &str) -> Result<Tokenizer, TokenizerError> {
    let path = llamacpp_vocab_file(&format!("ggml-vocab-{family}.gguf"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf_vocab(&gguf_vocab(&file)?)
}

/// The test texts and their expected ids, read as llama.cpp's test does: texts up to each
/// separator (what follows the last one is not a test), one line of ids per text.
fn cases(family: &str) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let path = llamacpp_vocab_file(&format!("ggml-vocab-{family}.gguf.{ext}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let inputs = read("inp");
    let mut texts: Vec<&str> = inputs.split(SEPARATOR).collect();
    texts.pop();
    let outputs = read("out");
    let ids: Vec<Vec<u32>> = outputs
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), ids.len(), "{family}: .inp and .out disagree");
    texts.into_iter().map(str::to_owned).zip(ids).collect()
}

fn assert_matches_llama_cpp(family: &str) {
    let t = tokenizer(family).unwrap_or_else(|e| panic!("{family}: {e}"));
    let cases = cases(family);
    assert!(cases.len() >= 30, "{family}: only {} cases", cases.len());
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(text, want)| {
            let got = t.encode(text, false).unwrap();
            (&got != want).then(|| format!("{text:?}\n  ours      {got:?}\n  reference {want:?}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{family}: {} of {} texts tokenize differently:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    // What the reference splits, decoding joins back (byte fallback and the space prefix
    // included).
    for (text, want) in &cases {
        assert_eq!(
            &t.decode(want, false).unwrap(),
            text,
            "{family}: decoding {want:?}"
        );
    }
}

#[test]
fn sentencepiece_llama_matches_llama_cpp() {
    assert_matches_llama_cpp("llama-spm");
}

#[test]
fn sentencepiece_phi3_matches_llama_cpp() {
    assert_matches_llama_cpp("phi-3");
}

#[test]
fn llama3_bpe_matches_llama_cpp() {
    assert_matches_llama_cpp("llama-bpe");
}

#[test]
fn byte_level_bpe_families_match_llama_cpp() {
    for family in ["qwen2", "gpt-2", "starcoder", "refact", "command-r"] {
        assert_matches_llama_cpp(family);
    }
}

#[test]
fn families_we_do_not_implement_are_refused_by_name() {
    for (family, pre) in [("falcon", "falcon"), ("deepseek-llm", "deepseek-llm")] {
        match tokenizer(family) {
            Err(TokenizerError::UnknownPreTokenizer(name)) => assert_eq!(name, pre, "{family}"),
            other => panic!("{family}: expected an unknown pre-tokenizer, got {other:?}"),
        }
    }
}

/// Our ids against llama.cpp's own on every text `scripts/check-tokenizers.sh` tokenized with
/// it (`LLAMACPP_TOKENS_DIR/llamacpp-FAMILY.json`); run by that script.
#[test]
#[ignore = "needs llama.cpp's ids: run scripts/check-tokenizers.sh"]
fn same_ids_as_llama_cpp() {
    #[derive(serde::Deserialize)]
    struct Row {
        text: String,
        ids: Vec<u32>,
    }
    let dir = std::env::var("LLAMACPP_TOKENS_DIR").unwrap_or_else(|_| {
        panic!("LLAMACPP_TOKENS_DIR is not set: run scripts/check-tokenizers.sh")
    });
    for family in [
        "llama-spm",
        "phi-3",
        "llama-bpe",
        "qwen2",
        "gpt-2",
        "starcoder",
    ] {
        let path = std::path::Path::new(&dir).join(format!("llamacpp-{family}.json"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let rows: Vec<Row> = serde_json::from_slice(&bytes).unwrap();
        let t = tokenizer(family).unwrap_or_else(|e| panic!("{family}: {e}"));
        let wrong: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                let got = t.encode(&r.text, false).unwrap();
                (got != r.ids)
                    .then(|| format!("{:?}\n  ours     {got:?}\n  llama.cpp {:?}", r.text, r.ids))
            })
            .collect();
        println!(
            "{family}: {} of {} texts as llama.cpp",
            rows.len() - wrong.len(),
            rows.len()
        );
        assert!(
            wrong.is_empty(),
            "{family}:\n{}",
            wrong.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}
