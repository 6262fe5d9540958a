#!/usr/bin/env bash
# The family test models (tiny random Llama-2 and Llama-3.1 GGUFs with the real vocabularies,
# the latter with rope_freqs.weight) run by us and by llama.cpp (llama-cpp-python): the logits
# at the last position of a chat prompt followed by 80 more tokens must agree within the
# reference tolerance. Needs the llama.cpp venv (scripts/bench-llamacpp.sh --setup-only).
#
#   scripts/check-families.sh        # prints the largest difference per model
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLAMACPP_VENV:-$HOME/.cache/refusal-lens/llamacpp-venv}"
OUT="$ROOT/target/families"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}"

"$ROOT/scripts/bench-llamacpp.sh" --setup-only
"$ROOT/scripts/fetch-vocabs.sh"
(cd "$ROOT" && cargo run --quiet -p refusal-tests --bin write-family-ggufs -- "$OUT")
"$VENV/bin/python" - "$OUT" <<'PY'
import json, sys
import numpy as np
import llama_cpp

# The reference tests' tolerance on the f32 path (tests/reference.rs).
TOL = 2e-2
out = sys.argv[1]
worst = 0.0
for row in json.load(open(f"{out}/ours.json")):
    llm = llama_cpp.Llama(model_path=f"{out}/{row['file']}", n_ctx=512, n_batch=512, logits_all=True,
                          n_threads=2, verbose=False)
    llm.eval(row["ids"])
    theirs = np.asarray(llm.scores[len(row["ids"]) - 1], dtype=np.float64)
    ours = np.asarray(row["logits"], dtype=np.float64)
    d = float(np.max(np.abs(theirs - ours)))
    worst = max(worst, d)
    print(f"{row['file']}: {len(row['ids'])} tokens, max |ours - llama.cpp| = {d:.2e}"
          f" (logits span {ours.min():.2f}..{ours.max():.2f})")
sys.exit(0 if worst <= TOL else f"difference {worst:.3e} over the tolerance {TOL}")
PY
