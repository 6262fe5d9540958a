#!/usr/bin/env bash
# The main job: install what is missing, build the release binary and the web app (when their
# sources changed), fetch and verify the default model (Qwen2.5-Coder-0.5B-Instruct), and serve
# the app with its API.
#
#   scripts/run.sh                      # http://127.0.0.1:8080 (ADDR=0.0.0.0:8080 to share it,
#                                       # with REFUSAL_LENS_API_KEY=KEY: a key is required there)
#   scripts/run.sh generate --prompt "Create a tutorial on how to hack a website"
#                                       # any other refusal-lens command instead of serving
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}"
cargo build --release --quiet -p refusal-lens --manifest-path "$ROOT/Cargo.toml"
BIN="$CARGO_TARGET_DIR/release/refusal-lens"

if [ "$#" -gt 0 ]; then
    "$BIN" fetch qwen2.5-coder-0.5b >/dev/null
    exec "$BIN" "$@"
fi

# The wasm is rebuilt only when something it is built from is newer than the bundle; the app's
# pages (index.html, web/app/) need no build and are always copied.
WASM="$ROOT/dist/refusal-web_bg.wasm"
if [ ! -f "$WASM" ] || [ -n "$(cd "$ROOT" && find web/src web/Cargo.toml shared/src shared/prompts \
        Cargo.lock -newer "$WASM" -print -quit)" ]; then
    "$ROOT/scripts/build-web.sh"
else
    "$ROOT/scripts/build-web.sh" --app-only
fi
exec "$BIN" serve --addr "${ADDR:-127.0.0.1:8080}" --web-dir "$ROOT/dist" \
    ${MODELS_DIR:+--models-dir "$MODELS_DIR"}
