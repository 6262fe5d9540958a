#!/usr/bin/env bash
# The refusal-direction pipeline on a real 7-8B model, on a GPU or the CPU:
#
#   scripts/run-7b.sh MODEL [OUT]           (or MODEL_DIR=... scripts/run-7b.sh; OUT: runs/NAME)
#
# MODEL is a Hugging Face directory (config.json, tokenizer.json and safetensors shards; bf16/f16
# stay 16-bit on the device) or a GGUF file (Llama-2-7b-chat, Llama-3-8B-Instruct, Mistral-7B-
# Instruct, Qwen2.5; on the CPU its quantized blocks are multiplied as they are).
# BACKEND=cuda (default), wgpu or cpu; the binary is built with that feature. Prompts: the
# study's splits in DATA (../shared/data) if present, else the built-in sets. Steps: `directions`
# (N_TRAIN + N_TRAIN training, N_VAL + N_VAL validation prompts; if no candidate passes METHOD §6,
# `choose` takes CHOOSE, default the middle layer at the last position), then `eval` on LIMIT
# held-out harmful prompts with no intervention and with the direction ablated.
set -euo pipefail
fail() { echo "run-7b: $*" >&2; exit 1; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="${1:-${MODEL_DIR:-}}"
BACKEND="${BACKEND:-cuda}"

[ -n "$MODEL" ] || fail "no model: give a Hugging Face model directory or a .gguf file (argument or MODEL_DIR)"
if [ -f "$MODEL" ]; then
    case "$MODEL" in *.gguf) ;; *) fail "$MODEL is a file but not a .gguf" ;; esac
else
    [ -d "$MODEL" ] || fail "no model: $MODEL does not exist"
    [ -f "$MODEL/config.json" ] || fail "$MODEL has no config.json"
    [ -f "$MODEL/tokenizer.json" ] || fail "$MODEL has no tokenizer.json"
    compgen -G "$MODEL/*.safetensors" >/dev/null || fail "$MODEL has no .safetensors weights"
fi
features=(--features "$BACKEND")
case "$BACKEND" in
    cuda) command -v nvidia-smi >/dev/null || fail "no GPU: nvidia-smi not found (BACKEND=cuda)"
          nvidia-smi -L 2>/dev/null | grep -q GPU || fail "no GPU: nvidia-smi lists no device" ;;
    wgpu) ;;
    cpu) features=() ;;
    *) fail "BACKEND must be cuda, wgpu or cpu, not $BACKEND" ;;
esac

OUT="${2:-$ROOT/runs/$(basename "$MODEL" .gguf)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}"
cargo build --release -p refusal-lens "${features[@]}" --manifest-path "$ROOT/Cargo.toml"
BIN="$CARGO_TARGET_DIR/release/refusal-lens"
run() { echo "+ refusal-lens $*" >&2; "$BIN" "$@"; }

DATA="${DATA:-$ROOT/../shared/data}" LIMIT="${LIMIT:-64}" MAX_NEW="${MAX_NEW:-48}"
if [ -f "$DATA/harmful_train.json" ]; then
    N_TRAIN="${N_TRAIN:-128}" N_VAL="${N_VAL:-32}"
    splits=(--harmful "$DATA/harmful_train.json" --harmless "$DATA/harmless_train.json")
    eval_set=(--prompts "$DATA/harmful_val.json")
else
    echo "run-7b: no splits in $DATA, using the built-in prompts" >&2
    N_TRAIN="${N_TRAIN:-64}" N_VAL="${N_VAL:-16}"
    splits=()
    eval_set=(--prompts builtin:harmful)
fi
# Refused here, before any prompt runs, if the model cannot be opened (the error names why).
layers=$("$BIN" inspect --model "$MODEL" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["n_layers"])') ||
    fail "cannot open $MODEL (see the error above)"
CHOOSE="${CHOOSE:-$((layers / 2)):-1}"
common=(--model "$MODEL" --backend "$BACKEND")

D="$OUT/directions"
run directions "${common[@]}" "${splits[@]}" --n-train "$N_TRAIN" --n-val "$N_VAL" --out "$D" || true
[ -f "$D/selection.json" ] || fail "directions wrote no selection table (see its error above)"
[ -f "$D/direction.json" ] || run choose --run "$D" --select "$CHOOSE"
for kind in none ablate; do
    run eval "${common[@]}" "${eval_set[@]}" --limit "$LIMIT" --intervention "$kind" \
        --direction "$D" --max-new-tokens "$MAX_NEW" --out "$OUT/eval-$kind"
done
echo "run-7b: results in $OUT (directions/, eval-none/eval.json, eval-ablate/eval.json)" >&2
