#!/usr/bin/env bash
# Browser end-to-end tests on a tiny random model: build the web crate, compute the native
# reference logits, drive headless Chromium (WebGPU via SwiftShader, and a CPU-only browser)
# through the smoke test (the wasm engine loads the model and matches the native logits), then
# the web app against a real `refusal-lens serve`: server mode (app.mjs) and in-browser mode
# (in-browser.mjs, which also uses a static host).
#
#   scripts/test-browser.sh [--no-build] [--no-native] [--no-opt] [--no-app] [--app-only]
#     --no-build   use the wasm already in dist/ (only copy index.html and web/app/ there)
#     --no-native  skip the native reference (compare WebGPU against CPU only)
#     --no-opt     build without wasm-opt (passed to build-web.sh)
#     --no-app     skip the app tests (tests/browser/app.mjs, in-browser.mjs)
#     --app-only   run only the app tests
#   APP_BIN, APP_MODELS_DIR: the server binary and the models folder holding tiny-llama (see below)
#
# Exit status 0 only if every browser check passed; the last lines of output are
# `browser: N passed, M failed`, `app: N passed, M failed` and `in-browser: N passed, M failed`.
# Screenshots: target/browser/.
# Prerequisites: scripts/setup.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD=1
NATIVE=1
APP=1
SMOKE=1
BUILD_ARGS=()
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        --no-native) NATIVE=0 ;;
        --no-opt) BUILD_ARGS+=(--no-opt) ;;
        --no-app) APP=0 ;;
        --app-only) SMOKE=0 ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "test-browser: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

if [ ! -f "$ROOT/tests/browser/node_modules/playwright-core/package.json" ]; then
    echo "test-browser: playwright-core is not installed in tests/browser; run scripts/setup.sh" >&2
    exit 1
fi

if [ "$BUILD" = 1 ]; then
    "$ROOT/scripts/build-web.sh" "${BUILD_ARGS[@]}"
else
    # The app's files need no build: refresh them in dist/ (the wasm stays as it was).
    "$ROOT/scripts/build-web.sh" --app-only
fi

# The tiny random Llama as a Hugging Face directory in APP_MODELS_DIR, else the one the API
# tests wrote (cargo test -p refusal-lens --test api), else written now by
# tests/bin/write_tiny_model.rs (the same model; needs SmolLM2-135M in the model cache). The
# smoke test loads it too, and compares with the native engine's logits written by the same
# tool (the host toolchain and the workspace's target dir, so it shares the native build cache).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}"
if [ -z "${APP_MODELS_DIR:-}" ]; then
    APP_MODELS_DIR="$CARGO_TARGET_DIR/tmp/api-models"
    if [ ! -f "$APP_MODELS_DIR/tiny-llama/model.safetensors" ]; then
        APP_MODELS_DIR="$CARGO_TARGET_DIR/browser-models"
        [ -f "$APP_MODELS_DIR/tiny-llama/model.safetensors" ] ||
            (cd "$ROOT" && nice -n 19 cargo run --quiet -p refusal-tests --bin write-tiny-model -- "$APP_MODELS_DIR")
    fi
fi
native_logits() { # native_logits OUT.json PROMPT...
    (cd "$ROOT" && nice -n 19 cargo run --quiet -p refusal-tests --bin write-tiny-model -- \
        "$APP_MODELS_DIR" --logits "$@" >/dev/null)
}

STATUS=0
EXPECTED="$ROOT/target/smoke-expected.json"
if [ "$SMOKE" = 0 ]; then
    :
elif [ "$NATIVE" = 1 ]; then
    rm -f "$EXPECTED"
    native_logits "$EXPECTED" "Hi" "Write a haiku about the sea, then explain its imagery in two lines."
    export SMOKE_EXPECTED="$EXPECTED" SMOKE_REQUIRE_EXPECTED=1
else
    export SMOKE_EXPECTED="$ROOT/target/smoke-expected.skipped.json" # never written: no native comparison
fi

if [ "$SMOKE" = 1 ]; then
    SMOKE_MODEL_DIR="$APP_MODELS_DIR/tiny-llama" node "$ROOT/tests/browser/smoke.mjs" || STATUS=1
fi

if [ "$APP" = 1 ]; then
    # The server: APP_BIN, else the debug build (the workspace's target dir).
    if [ -z "${APP_BIN:-}" ]; then
        # The workspace's feature set, so the debug build `cargo test --workspace` made is reused.
        (cd "$ROOT" && nice -n 19 cargo build --quiet --workspace --bins)
        APP_BIN="$CARGO_TARGET_DIR/debug/refusal-lens"
    fi
    APP_BIN="$APP_BIN" APP_MODELS_DIR="$APP_MODELS_DIR" node "$ROOT/tests/browser/app.mjs" || STATUS=1
    # In-browser mode: the native engine's logits for the tiny model, which the tab must match.
    APP_EXPECTED="$CARGO_TARGET_DIR/browser-expected-logits.json"
    native_logits "$APP_EXPECTED" "Write a haiku about the sea."
    APP_BIN="$APP_BIN" APP_MODELS_DIR="$APP_MODELS_DIR" APP_EXPECTED="$APP_EXPECTED" \
        node "$ROOT/tests/browser/in-browser.mjs" || STATUS=1
fi
exit "$STATUS"
