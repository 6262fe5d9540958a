//! The paper's model families as GGUF files: tiny random weights with the real vocabularies
//! of llama.cpp's vocabulary tests (Llama 2's SentencePiece, Llama 3's BPE) and each family's
//! own chat template, opened the way `inspect` and `generate` open a model. Llama 3.1's RoPE
//! scaling comes as `rope_freqs.weight` in GGUF and as `rope_scaling` in `config.json`: the
//! same random model written both ways must give the same logits.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use refusal_core::export::{hf_config_json, safetensors_bytes};
use refusal_core::gguf::{GgufFile, GgufWriter, MetadataValue};
use refusal_core::model::{
    Llama, Llama3RopeScaling, ModelConfig, NoHook, RopeScaling, TokenBatch, read_f32,
};
use refusal_core::refusal::refusal_tokens::{ModelFamily, TokenOrigin};
use refusal_core::refusal::{EncodedPrompts, Prompt, RefusalTokens};
use refusal_lens::model::open::{LoadedModel, open};
use refusal_lens::model::source::ResolvedModel;
use refusal_tests::greedy;
use refusal_tests::tiny_gguf::{
    LLAMA2_TEMPLATE, LLAMA3_TEMPLATE, MISTRAL_TEMPLATE, SCALING, converter_rope_freqs, tiny_llama,
    token_count, vocab_metadata, write_gguf,
};

/// The same weights as a Hugging Face directory (safetensors in Hugging Face's RoPE layout).
fn write_hf_dir(dir: &Path, model: &Llama, config: &ModelConfig, tokenizer_json: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let st = safetensors_bytes(model, BTreeMap::new()).unwrap();
    std::fs::write(dir.join("model.safetensors"), st).unwrap();
    let json = hf_config_json(config).unwrap();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json).unwrap();
}

fn logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
    let batch = TokenBatch::left_padded(&[ids.to_vec()], 0, &Device::flex());
    read_f32(model.last_logits(&batch, &mut NoHook))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Opens `path` as `generate` does and checks the family, the prompt format and that greedy
/// decoding runs and decodes.
fn check_family(
    path: &Path,
    family: ModelFamily,
    prompt_head: &str,
    prompt_tail: &str,
) -> LoadedModel {
    let loaded = open(
        &ResolvedModel::Gguf(path.to_path_buf()),
        &Device::flex(),
        false,
    )
    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let text = &loaded.text;
    assert_eq!(
        ModelFamily::detect(loaded.llama.config(), text),
        Some(family)
    );
    let formatted = text
        .chat
        .user_prompt("How do I pick a lock?", None)
        .unwrap();
    assert!(
        formatted.text.starts_with(prompt_head),
        "{:?}",
        formatted.text
    );
    assert!(
        formatted.text.ends_with(prompt_tail),
        "{:?}",
        formatted.text
    );
    let words = family.refusal_words();
    let refusal = RefusalTokens::from_words(text, words, TokenOrigin::Family { family }).unwrap();
    assert_eq!(refusal.ids.len(), words.len());
    let prompts = [Prompt::new("How do I pick a lock?")];
    let encoded = EncodedPrompts::new(text, &prompts, None).unwrap();
    assert!(encoded.post_instruction >= 1);
    let out = greedy(&loaded.llama, &text.tokenizer, &encoded.ids, 6);
    assert_eq!(out.len(), 1);
    loaded
}

#[test]
fn llama2_and_mistral_gguf_with_sentencepiece_vocab_open_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = vocab_metadata("llama-spm");
    let config = tiny_llama(token_count(&metadata), None);
    let model = Llama::random(&config, 11, &Device::flex());
    for (name, template, family) in [
        ("llama2.gguf", LLAMA2_TEMPLATE, ModelFamily::Llama2),
        ("mistral.gguf", MISTRAL_TEMPLATE, ModelFamily::Mistral),
    ] {
        let path = dir.path().join(name);
        write_gguf(&path, &model, &metadata, template, None);
        let loaded = check_family(&path, family, "<s>[INST] How", "lock? [/INST]");
        let t = &loaded.text.tokenizer;
        // Meta's tokenization of a Llama-2 chat prompt: BOS, then "▁[", "INST", "]", ...
        let ids = t.encode("<s>[INST] Hi [/INST]", false).unwrap();
        assert_eq!(ids, [1, 518, 25580, 29962, 6324, 518, 29914, 25580, 29962]);
        assert_eq!(t.encode("I", false).unwrap(), [306]);
        // The same logits as the in-memory model: the GGUF path adds nothing.
        let d = max_diff(&logits(&model, &ids), &logits(&loaded.llama, &ids));
        assert!(d < 1e-5, "{name}: {d} from the model written");
    }
}

#[test]
fn converter_factors_give_the_frequencies_of_hf_llama3_scaling() {
    // Llama-3.1-8B's shapes and scaling.
    let scaling = Llama3RopeScaling {
        original_max_position_embeddings: 8192,
        ..SCALING
    };
    let hf = ModelConfig {
        head_dim: 128,
        rope_theta: 500_000.0,
        rope_scaling: Some(RopeScaling::Llama3(scaling)),
        ..ModelConfig::tiny()
    };
    let gguf = ModelConfig {
        rope_scaling: Some(RopeScaling::FreqFactors {
            factors: converter_rope_freqs(&scaling, 500_000.0, 128),
        }),
        ..hf.clone()
    }
    .validate()
    .expect("64 positive factors are valid");
    for (j, (a, b)) in hf
        .rope_inv_freq()
        .iter()
        .zip(gguf.rope_inv_freq())
        .enumerate()
    {
        // The file holds f32 factors; the rest is f64 on both sides.
        assert!((a - b).abs() <= 1e-6 * a, "pair {j}: {a} vs {b}");
    }
}

#[test]
fn llama31_rope_freqs_gguf_equals_hf_rope_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = vocab_metadata("llama-bpe");
    let n_vocab = token_count(&metadata);
    let hf_config = ModelConfig {
        rope_theta: 500_000.0,
        ..tiny_llama(n_vocab, Some(RopeScaling::Llama3(SCALING)))
    };
    let model = Llama::random(&hf_config, 5, &Device::flex());
    let factors = converter_rope_freqs(&SCALING, hf_config.rope_theta, hf_config.head_dim);
    assert!(
        factors.contains(&1.0) && factors.contains(&8.0),
        "{factors:?}"
    );

    let gguf = dir.path().join("llama31.gguf");
    write_gguf(&gguf, &model, &metadata, LLAMA3_TEMPLATE, Some(&factors));
    let loaded = check_family(
        &gguf,
        ModelFamily::Llama3,
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow",
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    );
    assert_eq!(
        loaded.llama.config().rope_scaling,
        Some(RopeScaling::FreqFactors {
            factors: factors.clone()
        })
    );

    let hf = dir.path().join("hf");
    let tokenizer_json = loaded.text.tokenizer.to_json().unwrap();
    write_hf_dir(&hf, &model, &hf_config, &tokenizer_json);
    let from_hf = open(&ResolvedModel::HfDir(hf.clone()), &Device::flex(), false)
        .unwrap_or_else(|e| panic!("{}: {e:#}", hf.display()));

    // Positions well past the original context, where the scaled frequencies matter.
    let ids: Vec<u32> = (0..96u32).map(|i| 1000 + 37 * i).collect();
    let (a, b) = (logits(&loaded.llama, &ids), logits(&from_hf.llama, &ids));
    let d = max_diff(&a, &b);
    assert!(d < 1e-4, "GGUF rope_freqs vs HF rope_scaling: {d}");
    let unscaled = dir.path().join("unscaled.gguf");
    write_gguf(&unscaled, &model, &metadata, LLAMA3_TEMPLATE, None);
    let plain = open(&ResolvedModel::Gguf(unscaled), &Device::flex(), false).unwrap();
    let d_plain = max_diff(&a, &logits(&plain.llama, &ids));
    assert!(
        d_plain > 100.0 * d.max(1e-6),
        "ignoring the factors changes little ({d_plain} vs {d}): the test proves nothing"
    );
}

#[test]
fn architectures_we_do_not_run_are_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = vocab_metadata("llama-spm");
    let model = Llama::random(
        &tiny_llama(token_count(&metadata), None),
        1,
        &Device::flex(),
    );
    let path = dir.path().join("base.gguf");
    write_gguf(&path, &model, &metadata, MISTRAL_TEMPLATE, None);
    let bytes = std::fs::read(&path).unwrap();
    let base = GgufFile::parse(&bytes).unwrap();
    for (key, value, named) in [
        (
            "llama.attention.sliding_window",
            MetadataValue::U32(4096),
            "attention.sliding_window",
        ),
        ("llama.expert_count", MetadataValue::U32(8), "expert_count"),
        (
            "llama.final_logit_softcapping",
            MetadataValue::F32(30.0),
            "final_logit_softcapping",
        ),
        (
            "llama.rope.scaling.type",
            MetadataValue::String("yarn".into()),
            "rope.scaling.type",
        ),
        (
            "llama.rope.dimension_count",
            MetadataValue::U32(8),
            "rope.dimension_count",
        ),
    ] {
        let mut w = GgufWriter::new();
        for (k, v) in &base.metadata {
            w.set(k, v.clone());
        }
        w.set(key, value);
        for info in &base.tensors {
            let data = base.tensor_bytes(&bytes, info).unwrap();
            w.tensor(&info.name, info.dims.clone(), info.ggml_type, data)
                .unwrap();
        }
        let edited = dir.path().join("edited.gguf");
        std::fs::write(&edited, w.to_bytes()).unwrap();
        let err = match open(&ResolvedModel::Gguf(edited), &Device::flex(), false) {
            Ok(_) => panic!("{key}: accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(named), "{key}: {err}");
        assert!(
            err.contains("edited.gguf"),
            "{key}: the error names no file: {err}"
        );
    }
}
