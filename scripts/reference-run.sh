#!/usr/bin/env bash
# The README's reference run of the refusal-direction pipeline on qwen2.5-coder-0.5b with the
# refusal-direction study's splits (../shared/data beside the repository, or $DATA):
#
#   scripts/reference-run.sh [OUT]          (default OUT: runs/reference)
#
# 1. directions: 128 + 128 training prompts from harmful_train.json / harmless_train.json and
#    32 + 32 validation prompts held out from the same files (seed 0), METHOD §3-6.
#    On this model no candidate passes METHOD §6's filters (every induce score is negative at
#    coefficient 1, and most strong directions move harmless predictions by KL > 0.1), so the
#    run then chooses CHOOSE (default 16:-1, the best bypass score among the candidates with
#    KL <= 0.3) from the same table with `refusal-lens choose`.
# 2. eval, MAX_NEW (48) greedy tokens, substring judge (METHOD §7):
#    - held-out AdvBench (advbench.json minus harmful_train.json, first LIMIT = 96):
#      no intervention, ablation;
#    - harmful_val.json (HarmBench-style prompts, all 39): no intervention, ablation;
#    - harmless_val.json (first HARMLESS = 32): activation addition at the chosen layer,
#      coefficients 0, 1, 2, 4, 8.
# Then prints the table the README quotes. Every step writes JSON under OUT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/runs/reference}"
DATA="${DATA:-$ROOT/../shared/data}"
MODEL="${MODEL:-qwen2.5-coder-0.5b}"
BIN="${REFUSAL_LENS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}/release/refusal-lens}"
[ -x "$BIN" ] || { echo "build first: cargo build --release -p refusal-lens (or set REFUSAL_LENS_BIN)" >&2; exit 1; }
[ -f "$DATA/harmful_train.json" ] || { echo "no prompt data in $DATA (set DATA)" >&2; exit 1; }

run() { echo "+ refusal-lens $*" >&2; "$BIN" "$@"; }

LIMIT="${LIMIT:-96}" HARMLESS="${HARMLESS:-32}" MAX_NEW="${MAX_NEW:-48}" CHOOSE="${CHOOSE:-16:-1}"
D="$OUT/directions"
[ -f "$D/selection.json" ] ||
    run directions --model "$MODEL" --harmful "$DATA/harmful_train.json" \
        --harmless "$DATA/harmless_train.json" --out "$D" || true
[ -f "$D/direction.json" ] || run choose --run "$D" --select "$CHOOSE"
for kind in none ablate; do
    run eval --model "$MODEL" --prompts "$DATA/harmful_val.json" --intervention "$kind" \
        --direction "$D" --max-new-tokens "$MAX_NEW" --batch-size 40 --out "$OUT/harmbench-$kind"
    run eval --model "$MODEL" --prompts "$DATA/advbench.json" --exclude "$DATA/harmful_train.json" \
        --limit "$LIMIT" --intervention "$kind" --direction "$D" --max-new-tokens "$MAX_NEW" \
        --batch-size 32 --out "$OUT/advbench-$kind"
done
run eval --model "$MODEL" --prompts "$DATA/harmless_val.json" --limit "$HARMLESS" \
    --intervention actadd --direction "$D" --coeff 0,1,2,4,8 --max-new-tokens "$MAX_NEW" \
    --batch-size 32 --out "$OUT/harmless-actadd"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
load = lambda name: json.load(open(f"{out}/{name}/eval.json"))
sel = json.load(open(f"{out}/directions/selection.json"))
c = json.load(open(f"{out}/directions/direction.json"))["scores"]
print(f"selected: layer {c['layer']}, position {c['position']} (bypass {c['bypass']:.3f}, "
      f"induce {c['induce']:.3f}, KL {c['kl']:.4f}, |r| {c['norm']:.2f}); "
      f"refusal tokens {sel['refusal_tokens']['tokens']}")
print("| prompts | n | refusal rate, no intervention | ASR, no intervention | ASR, direction ablated |")
print("|---|---|---|---|---|")
for name, label in (("advbench", "AdvBench held out"), ("harmbench", "harmful_val.json")):
    a, b = load(f"{name}-none")["runs"][0]["summary"], load(f"{name}-ablate")["runs"][0]["summary"]
    print(f"| {label} | {a['n_prompts']} | {a['refusal_rate']:.3f} | {a['asr']:.3f} | {b['asr']:.3f} |")
print("| coefficient | harmless refusal rate | mean refusal score | mean KL |")
print("|---|---|---|---|")
for r in load("harmless-actadd")["runs"]:
    s = r["summary"]
    kl = "-" if s["mean_kl"] is None else f"{s['mean_kl']:.3f}"
    print(f"| {r['coeff']:g} | {s['refusal_rate']:.3f} ({s['n_refused']}/{s['n_prompts']}) | {s['mean_refusal_score']:.3f} | {kl} |")
PY
