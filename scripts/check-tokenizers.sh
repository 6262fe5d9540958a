#!/usr/bin/env bash
# Our GGUF tokenizers against llama.cpp itself (llama-cpp-python, vocab_only) on the same
# vocabularies: llama.cpp's vocabulary-test texts, our built-in prompt sets and the study's
# datasets (../shared/data, if present), each also inside a chat turn of the family.
# The `.out` files of those tests are checked in CI (tests/vocabs.rs); this adds llama.cpp's
# own tokenizer on many more texts, and needs the llama.cpp venv (~13 min to build once).
#
#   scripts/check-tokenizers.sh        # prints one line per vocabulary; fails on any difference
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLAMACPP_VENV:-$HOME/.cache/refusal-lens/llamacpp-venv}"
VOCABS="${REFUSAL_LENS_VOCABS:-$HOME/.cache/refusal-lens/llamacpp-vocabs}"
OUT="$ROOT/target/tokenizers"
DATA="${DATA:-$ROOT/../shared/data}"

"$ROOT/scripts/bench-llamacpp.sh" --setup-only
"$ROOT/scripts/fetch-vocabs.sh"
mkdir -p "$OUT"
sources=("$ROOT"/shared/prompts/*.json)
for f in harmful_train harmless_train harmful_val harmless_val advbench; do
    [ -f "$DATA/$f.json" ] && sources+=("$DATA/$f.json")
done
for family in llama-spm phi-3 llama-bpe qwen2 gpt-2 starcoder; do
    "$VENV/bin/python" "$ROOT/scripts/llamacpp_tokenize.py" "$VOCABS/ggml-vocab-$family.gguf" \
        "$OUT/llamacpp-$family.json" "$VOCABS/ggml-vocab-$family.gguf.inp" "${sources[@]}"
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}"
cd "$ROOT"
LLAMACPP_TOKENS_DIR="$OUT" cargo test -p refusal-tests --test vocabs -- \
    --ignored --nocapture same_ids_as_llama_cpp
