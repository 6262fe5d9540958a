//! Writes a copy of a GGUF with every quantized matrix widened to F16 or BF16 (see
//! `refusal_tests::widened_gguf`): a 16-bit checkpoint of a built-in model, for
//! `scripts/bench-llamacpp.sh` to measure the 16-bit path on, ours and llama.cpp's, on the same
//! file. Test support, not product: the values are the source's dequantized blocks, rounded.
//!
//!   cargo run --release -p refusal-tests --bin write-float-gguf -- IN.gguf OUT.gguf f16|bf16

use std::path::PathBuf;

use refusal_core::gguf::GgmlType;
use refusal_tests::widened_gguf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out, ty] = &args[..] else {
        panic!("usage: write-float-gguf IN.gguf OUT.gguf f16|bf16");
    };
    let (input, out) = (PathBuf::from(input), PathBuf::from(out));
    let ty = match ty.as_str() {
        "f16" => GgmlType::F16,
        "bf16" => GgmlType::BF16,
        other => panic!("type `{other}`: f16 or bf16"),
    };
    let bytes = std::fs::read(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let widened = widened_gguf(&bytes, ty);
    // Written beside the destination and renamed, so a half-written file is never used.
    let partial = out.with_extension("gguf.partial");
    std::fs::write(&partial, widened).unwrap_or_else(|e| panic!("{}: {e}", partial.display()));
    std::fs::rename(&partial, &out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    println!("{}", out.display());
}
