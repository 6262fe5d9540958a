#!/usr/bin/env bash
# The README's compression study (METHOD §8-10) on qwen2.5-coder-0.5b with the refusal-direction
# study's splits (../shared/data beside the repository, or $DATA):
#
#   scripts/compression-study.sh [OUT]          (default OUT: runs/compression-study)
#
# One `refusal-lens compare --aird` run: the base model and every recipe in RECIPES, each
# compressed on the fly (calibration: the built-in harmless prompts), with the same prompts:
# - directions: N_TRAIN + N_TRAIN training prompts from harmful_train.json / harmless_train.json,
#   N_VAL + N_VAL validation prompts held out from the same files (seed 0); candidates scored
#   at POSITIONS (default -1, where the reference run found the best direction) below 0.8 L;
#   when METHOD §6 leaves nothing (it does on this model), the lowest bypass score with KL <= 0.3;
# - ASR on held-out AdvBench (advbench.json minus harmful_train.json, first N_EVAL), harmless
#   refusal on harmless_val.json (first N_EVAL), MAX_NEW greedy tokens, substring judge;
# - AIRD at the base's selected layer, penalty chosen on the validation prompts; its scale is
#   ALPHA (default 1, the README's table), or with ALPHA_GRID (e.g. 1,2,4,8) chosen on the
#   validation prompts under a 5-point harmless-refusal bound.
# Writes OUT/compare.json, figures, and OUT/summary.txt (the table the README quotes).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/runs/compression-study}"
DATA="${DATA:-$ROOT/../shared/data}"
MODEL="${MODEL:-qwen2.5-coder-0.5b}"
BIN="${REFUSAL_LENS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}/release/refusal-lens}"
[ -x "$BIN" ] || { echo "build first: cargo build --release -p refusal-lens (or set REFUSAL_LENS_BIN)" >&2; exit 1; }
[ -f "$DATA/harmful_train.json" ] || { echo "no prompt data in $DATA (set DATA)" >&2; exit 1; }

RECIPES="${RECIPES:-rtn:8:128 rtn:4:128 gguf:q4_0 wanda:0.5 wanda:2:4 sparsegpt:0.5 magnitude:0.5}"
N_TRAIN="${N_TRAIN:-64}" N_VAL="${N_VAL:-16}" N_EVAL="${N_EVAL:-32}" MAX_NEW="${MAX_NEW:-32}"
POSITIONS="${POSITIONS:--1}"
if [ -n "${ALPHA_GRID:-}" ]; then alpha=(--alpha-grid "$ALPHA_GRID"); else alpha=(--alpha "${ALPHA:-1}"); fi
compressed=()
for r in $RECIPES; do compressed+=(--compressed "$r"); done
set -x
"$BIN" compare --base "$MODEL" "${compressed[@]}" \
    --harmful "$DATA/harmful_train.json" --harmless "$DATA/harmless_train.json" \
    --n-train "$N_TRAIN" --n-val "$N_VAL" \
    --eval-harmful "$DATA/advbench.json" --exclude "$DATA/harmful_train.json" \
    --eval-harmless "$DATA/harmless_val.json" --n-eval "$N_EVAL" \
    --positions="$POSITIONS" --max-new-tokens "$MAX_NEW" --aird "${alpha[@]}" --out "$OUT"
