#!/usr/bin/env bash
# The refusing model in a browser tab: build the web app, then drive headless Chromium
# through tests/browser/qwen-tab.mjs: Qwen2.5-Coder-0.5B loaded into the tab's CPU engine
# (its WebAssembly memory checked against 1 GiB), then Compressed vs base and Repair run in
# the tab with the page's settings for a tab. About 45 min on 2 cores; not part of CI.
#
#   scripts/bench-browser.sh [--no-build]
#     --no-build   use the app already in dist/
#
# Environment: QWEN_GGUF (default: the file `refusal-lens fetch qwen2.5-coder-0.5b` keeps in
# ~/.cache/refusal-lens/models), QWEN_TAB_MEMORY, QWEN_TAB_TIMEOUT_MS (see qwen-tab.mjs).
# Results: target/browser/qwen-tab.json and screenshots target/browser/qwen-tab-*.png.
# Prerequisites: scripts/setup.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD=1
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "bench-browser: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

export QWEN_GGUF="${QWEN_GGUF:-$HOME/.cache/refusal-lens/models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf}"
if [ ! -f "$QWEN_GGUF" ]; then
    echo "bench-browser: $QWEN_GGUF is missing; fetch it with: refusal-lens fetch qwen2.5-coder-0.5b (or set QWEN_GGUF)" >&2
    exit 1
fi
if [ ! -f "$ROOT/tests/browser/node_modules/playwright-core/package.json" ]; then
    echo "bench-browser: playwright-core is not installed in tests/browser; run scripts/setup.sh" >&2
    exit 1
fi
[ "$BUILD" = 0 ] || "$ROOT/scripts/build-web.sh"
node "$ROOT/tests/browser/qwen-tab.mjs"
