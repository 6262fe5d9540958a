#!/usr/bin/env bash
# The refusal-direction pipeline on a real 7-8B Hugging Face checkpoint, on a GPU:
#
#   scripts/run-7b.sh MODEL_DIR [OUT]       (or MODEL_DIR=... scripts/run-7b.sh; OUT: runs/NAME)
#
# MODEL_DIR holds config.json, tokenizer.json and safetensors shards (bf16/f16 stay 16-bit on the
# device). BACKEND=cuda (default) or wgpu; the binary is built with that feature. Prompts: the
# study's splits in DATA (../shared/data) if present, else the built-in sets. Steps: `directions`
# (N_TRAIN + N_TRAIN training, N_VAL + N_VAL validation prompts; if no candidate passes METHOD §6,
# `choose` takes CHOOSE, default the middle layer at the last position), then `eval` on LIMIT
# held-out harmful prompts with no intervention and with the direction ablated.
set -euo pipefail
fail() { echo "run-7b: $*" >&2; exit 1; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="${1:-${MODEL_DIR:-}}"
BACKEND="${BACKEND:-cuda}"

[ -n "$MODEL" ] || fail "no checkpoint: give a Hugging Face model directory (argument or MODEL_DIR)"
[ -d "$MODEL" ] || fail "no checkpoint directory: $MODEL does not exist"
[ -f "$MODEL/config.json" ] || fail "$MODEL has no config.json"
[ -f "$MODEL/tokenizer.json" ] || fail "$MODEL has no tokenizer.json"
compgen -G "$MODEL/*.safetensors" >/dev/null || fail "$MODEL has no .safetensors weights"
case "$BACKEND" in
    cuda) command -v nvidia-smi >/dev/null || fail "no GPU: nvidia-smi not found (BACKEND=cuda)"
          nvidia-smi -L 2>/dev/null | grep -q GPU || fail "no GPU: nvidia-smi lists no device" ;;
    wgpu) ;;
    *) fail "BACKEND must be cuda or wgpu, not $BACKEND" ;;
esac

OUT="${2:-$ROOT/runs/$(basename "$MODEL")}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}"
cargo build --release -p refusal-lens --features "$BACKEND" --manifest-path "$ROOT/Cargo.toml"
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
layers=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["num_hidden_layers"])' "$MODEL/config.json")
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
