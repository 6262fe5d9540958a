#!/usr/bin/env bash
# Browser end-to-end smoke test: build the web crate, compute the native reference logits,
# then drive headless Chromium (WebGPU via SwiftShader, and a CPU-only browser).
#
#   scripts/test-browser.sh [--no-build] [--no-native] [--no-opt]
#     --no-build   use the dist/ already there (skip scripts/build-web.sh)
#     --no-native  skip the native reference (compare WebGPU against CPU only)
#     --no-opt     build without wasm-opt (passed to build-web.sh)
#
# Exit status 0 only if every browser check passed; the last line of output is
# `browser: N passed, M failed`. Screenshots: target/browser/. Prerequisites: scripts/setup.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD=1
NATIVE=1
BUILD_ARGS=()
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        --no-native) NATIVE=0 ;;
        --no-opt) BUILD_ARGS+=(--no-opt) ;;
        -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "test-browser: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

if [ ! -f "$ROOT/tests/browser/node_modules/playwright-core/package.json" ]; then
    echo "test-browser: playwright-core is not installed in tests/browser; run scripts/setup.sh" >&2
    exit 1
fi

if [ "$BUILD" = 1 ]; then
    "$ROOT/scripts/build-web.sh" "${BUILD_ARGS[@]}"
fi

EXPECTED="$ROOT/target/smoke-expected.json"
if [ "$NATIVE" = 1 ]; then
    # The native engine's logits for the same smoke model (host toolchain, the workspace's
    # own target dir, so it shares the native build cache).
    rm -f "$EXPECTED"
    (cd "$ROOT" && nice -n 19 cargo run --quiet -p refusal-web --bin smoke-expected -- "$EXPECTED")
    export SMOKE_EXPECTED="$EXPECTED" SMOKE_REQUIRE_EXPECTED=1
else
    export SMOKE_EXPECTED="$ROOT/target/smoke-expected.skipped.json" # never written: no native comparison
fi

exec node "$ROOT/tests/browser/smoke.mjs"
