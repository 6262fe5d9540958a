//! Writes a GGUF with Llama-2-7B's shapes (32 layers, d_model 4096, d_ff 11008, 32 heads) and
//! random weights in Q4_K_M's types (Q4_K, with Q6_K for the output head, every `attn_v` and
//! every other `ffn_down`), SmolLM2-135M's tokenizer and chat template: a 7B-sized file for
//! `scripts/bench-llamacpp.sh` to measure load time, memory and decoding on, ours and
//! llama.cpp's, with no real 7B weights. Test support, not product: its completions are noise.
//!
//!   cargo run --release -p refusal-tests --bin write-7b-gguf -- OUT.gguf

use std::io::BufWriter;
use std::path::PathBuf;

use half::f16;
use refusal_core::gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};
use refusal_lens::model::builtin::BuiltinModel;
use refusal_tests::builtin_gguf;

const N_LAYERS: u32 = 32;
const D_MODEL: u64 = 4096;
const D_FF: u64 = 11008;
const N_HEADS: u32 = 32;

/// splitmix64: fast, and plenty random for weights nobody reads.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Random blocks of `ty` for `rows x cols` values, with scales small enough that the weights
/// look like a trained model's (|w| below about 0.06) and the forward pass stays finite.
fn blocks(ty: GgmlType, rows: u64, cols: u64, rng: &mut Rng) -> Vec<u8> {
    let n_blocks = (rows * cols) as usize / ty.block_size();
    let size = ty.type_size();
    let mut out = vec![0u8; n_blocks * size];
    rng.fill(&mut out);
    let scale = |v: f32| f16::from_f32(v).to_le_bytes();
    for b in out.chunks_exact_mut(size) {
        match ty {
            GgmlType::Q4K => {
                b[0..2].copy_from_slice(&scale(1e-4));
                b[2..4].copy_from_slice(&scale(1e-4));
            }
            GgmlType::Q6K => b[size - 2..].copy_from_slice(&scale(1e-5)),
            _ => unreachable!("only Q4_K and Q6_K are written"),
        }
    }
    out
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| panic!("usage: write-7b-gguf OUT.gguf")),
    );
    let source = builtin_gguf(BuiltinModel::SmolLm2_135m);
    let bytes = std::fs::read(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let smol = GgufFile::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let vocab = smol
        .tensor("token_embd.weight")
        .map(|t| t.dims[1])
        .unwrap_or_else(|| panic!("{}: no token_embd.weight", source.display()));

    let mut w = GgufWriter::new();
    for (key, value) in &smol.metadata {
        w.set(key, value.clone());
    }
    let u32v = MetadataValue::U32;
    w.set(
        "general.name",
        MetadataValue::String("Llama-2-7B-shaped (random weights)".into()),
    );
    w.set("llama.block_count", u32v(N_LAYERS));
    w.set("llama.embedding_length", u32v(D_MODEL as u32));
    w.set("llama.feed_forward_length", u32v(D_FF as u32));
    w.set("llama.attention.head_count", u32v(N_HEADS));
    w.set("llama.attention.head_count_kv", u32v(N_HEADS));
    w.set("llama.rope.dimension_count", u32v(D_MODEL as u32 / N_HEADS));
    w.set("llama.context_length", u32v(4096));
    w.set("llama.rope.freq_base", MetadataValue::F32(10_000.0));
    w.set(
        "llama.attention.layer_norm_rms_epsilon",
        MetadataValue::F32(1e-5),
    );

    let mut rng = Rng(7);
    let ones = |n: u64| vec![1.0f32; n as usize];
    let mut add = |w: &mut GgufWriter, name: &str, ty: GgmlType, [rows, cols]: [u64; 2]| {
        let data = blocks(ty, rows, cols, &mut rng);
        w.tensor(name, vec![cols, rows], ty, data)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    add(&mut w, "token_embd.weight", GgmlType::Q4K, [vocab, D_MODEL]);
    for l in 0..N_LAYERS {
        let name = |t: &str| format!("blk.{l}.{t}.weight");
        let norm = |w: &mut GgufWriter, t: &str| {
            w.tensor_f32(&name(t), &[D_MODEL as usize], &ones(D_MODEL))
                .unwrap_or_else(|e| panic!("{}: {e}", name(t)));
        };
        norm(&mut w, "attn_norm");
        norm(&mut w, "ffn_norm");
        for t in ["attn_q", "attn_k", "attn_output"] {
            add(&mut w, &name(t), GgmlType::Q4K, [D_MODEL, D_MODEL]);
        }
        add(&mut w, &name("attn_v"), GgmlType::Q6K, [D_MODEL, D_MODEL]);
        add(&mut w, &name("ffn_gate"), GgmlType::Q4K, [D_FF, D_MODEL]);
        add(&mut w, &name("ffn_up"), GgmlType::Q4K, [D_FF, D_MODEL]);
        let down = if l % 2 == 0 {
            GgmlType::Q6K
        } else {
            GgmlType::Q4K
        };
        add(&mut w, &name("ffn_down"), down, [D_MODEL, D_FF]);
    }
    w.tensor_f32("output_norm.weight", &[D_MODEL as usize], &ones(D_MODEL))
        .unwrap_or_else(|e| panic!("output_norm.weight: {e}"));
    add(&mut w, "output.weight", GgmlType::Q6K, [vocab, D_MODEL]);

    // Written beside the destination and renamed, so a half-written file is never used.
    let partial = out.with_extension("gguf.partial");
    let file =
        std::fs::File::create(&partial).unwrap_or_else(|e| panic!("{}: {e}", partial.display()));
    w.write_to(&mut BufWriter::new(file))
        .unwrap_or_else(|e| panic!("writing {}: {e}", partial.display()));
    std::fs::rename(&partial, &out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    println!("{}", out.display());
}
