#!/usr/bin/env bash
# Checks that a direction exported with `refusal-lens control-vector` steers llama.cpp exactly as
# our activation addition does: refusal scores of the same prompts, with and without the vector.
#
#   scripts/check-control-vector.sh DIRECTION MODEL [COEFF] [PROMPTS]
#     DIRECTION  a `directions` output (its directory or direction.safetensors)
#     MODEL      the GGUF model the direction belongs to (alias or path)
#     COEFF      activation-addition coefficient (default 1)
#     PROMPTS    prompts to score (default builtin:harmless; the first 8 are used)
#
# Uses the llama.cpp venv of scripts/bench-llamacpp.sh (made on first use) plus gguf-py.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$#" -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
DIRECTION="$1" MODEL="$2" COEFF="${3:-1}" PROMPTS="${4:-builtin:harmless}"
VENV="${LLAMACPP_VENV:-$HOME/.cache/refusal-lens/llamacpp-venv}"
BIN="${REFUSAL_LENS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}/release/refusal-lens}"
[ -x "$BIN" ] || { echo "build first: cargo build --release -p refusal-lens" >&2; exit 1; }

"$ROOT/scripts/bench-llamacpp.sh" --setup-only
"$VENV/bin/python" -c "import gguf" 2>/dev/null || "$VENV/bin/python" -m pip install -q gguf

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$BIN" control-vector --direction "$DIRECTION" --out "$WORK/cv.gguf"
for kind in none actadd; do
    "$BIN" eval --model "$MODEL" --prompts "$PROMPTS" --limit 8 --max-new-tokens 0 \
        --intervention "$kind" --direction "$DIRECTION" --coeff "$COEFF" --out "$WORK/$kind" >/dev/null
done
GGUF="$("$BIN" inspect --model "$MODEL" --json | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["path"])')"
"$VENV/bin/python" "$ROOT/scripts/llamacpp_control_vector.py" --gguf "$GGUF" --cvec "$WORK/cv.gguf" \
    --coeff "$COEFF" --ours-none "$WORK/none/eval.json" --ours-actadd "$WORK/actadd/eval.json"
