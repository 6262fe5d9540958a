#!/usr/bin/env bash
# Every test: the Rust workspace (unit tests, the reference tests on both real built-in
# models and the tokenizer tests on llama.cpp's vocabularies, both fetched into the cache
# first) and the browser tests in headless Chromium
# (scripts/test-browser.sh: the engine smoke test, the app in server mode, the app in-browser).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
# Outside the clone, so repeated runs (and CI on the same machine) build incrementally.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}"
cd "$ROOT"
cargo run --quiet -p refusal-lens -- fetch
"$ROOT/scripts/fetch-vocabs.sh"
cargo test --workspace
"$ROOT/scripts/test-browser.sh"
