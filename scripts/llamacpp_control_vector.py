#!/usr/bin/env python3
"""Checks a `refusal-lens control-vector` file in llama.cpp (driven by
scripts/check-control-vector.sh).

Reads the control vector with gguf-py (llama.cpp's own Python GGUF reader), applies it in
llama.cpp (llama-cpp-python, llama_apply_adapter_cvec, laid out as llama.cpp's
common_control_vector_load does: tensor `direction.k` at offset n_embd * (k - 1)), and computes
the refusal score (METHOD §4) of each prompt with and without it. Compares with our own
`eval --max-new-tokens 0` reports for the same prompts with no intervention and with activation
addition at the same coefficient.

    python scripts/llamacpp_control_vector.py --gguf M.gguf --cvec CV.gguf --coeff C \
        --ours-none NONE/eval.json --ours-actadd ACTADD/eval.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_llamacpp import Engine, fail  # noqa: E402


def refusal_score(engine: Engine, ctx, ids: list[int]) -> float:
    import numpy as np  # noqa: PLC0415

    ptr = engine.lc.llama_get_logits_ith(ctx, -1)
    logits = np.ctypeslib.as_array(ptr, shape=(engine.n_vocab,)).astype(np.float64)
    logits -= logits.max()
    probs = np.exp(logits) / np.exp(logits).sum()
    p = float(probs[ids].sum())
    return math.log(p + 1e-8) - math.log(1 - p + 1e-8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--cvec", required=True)
    ap.add_argument("--coeff", type=float, required=True)
    ap.add_argument("--ours-none", required=True)
    ap.add_argument("--ours-actadd", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import gguf  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    none = json.load(open(args.ours_none))
    actadd = json.load(open(args.ours_actadd))
    prompts = [c["instruction"] for c in none["runs"][0]["completions"]]
    ours_base = [c["refusal_score"] for c in none["runs"][0]["completions"]]
    ours_add = [c["refusal_score"] for c in actadd["runs"][0]["completions"]]
    words = none["refusal_tokens"]["tokens"]

    engine = Engine(args.gguf, args.threads)
    n_embd = engine.lc.llama_model_n_embd(engine.model)
    n_layer = engine.lc.llama_model_n_layer(engine.model)
    reader = gguf.GGUFReader(args.cvec)
    data = np.zeros(n_embd * n_layer, dtype=np.float32)
    for t in reader.tensors:
        k = int(t.name.split(".")[1])
        if k < 1:
            fail(f"{t.name}: llama.cpp refuses layer index 0")
        data[n_embd * (k - 1): n_embd * k] += args.coeff * np.asarray(t.data, dtype=np.float32)
        print(f"{t.name}: |v| = {float(np.linalg.norm(t.data)):.4f} (added to block {k}'s output)")

    ids = []
    for w in words:
        toks = engine.tokenize(w)
        if len(toks) != 1:
            fail(f"refusal token {w!r} is {len(toks)} tokens in llama.cpp")
        ids.append(toks[0])

    rows = []
    ctx = engine.context(512, 512)
    batch = engine.batch(512)
    try:
        for cvec in (False, True):
            if cvec:
                buf = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
                rc = engine.lc.llama_apply_adapter_cvec(ctx, buf, data.size, n_embd, 1, n_layer - 1)
                if rc != 0:
                    fail(f"llama_apply_adapter_cvec returned {rc}")
            scores = []
            for text in prompts:
                toks = engine.tokenize(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
                engine.clear(ctx)
                engine.decode(ctx, batch, [(toks, 0)])
                scores.append(refusal_score(engine, ctx, ids))
            rows.append(scores)
    finally:
        engine.free_batch(batch)
        engine.free_context(ctx)

    base_ll, add_ll = rows
    print(f"{'prompt':40} {'ours':>7} {'llama':>7}   {'ours+c':>7} {'llama+c':>7}")
    for p, a, b, c, d in zip(prompts, ours_base, base_ll, ours_add, add_ll):
        print(f"{p[:40]:40} {a:7.3f} {b:7.3f}   {c:7.3f} {d:7.3f}")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    shift_ours = mean(ours_add) - mean(ours_base)
    shift_ll = mean(add_ll) - mean(base_ll)
    worst = max(abs(c - d) for c, d in zip(ours_add, add_ll))
    noise = max(abs(a - b) for a, b in zip(ours_base, base_ll))
    print(f"mean shift of the refusal score from the vector: ours {shift_ours:+.3f}, "
          f"llama.cpp {shift_ll:+.3f}")
    print(f"max |ours - llama.cpp|: {noise:.3f} without the vector, {worst:.3f} with it")
    # llama.cpp quantizes activations to 8 bits in its matmuls; the plain models already differ
    # by `noise`. The vector must land on the same layer: a one-layer shift changes the steered
    # scores by far more than that.
    if abs(shift_ours - shift_ll) > max(0.25, 0.1 * abs(shift_ours)) or worst > noise + 0.5:
        fail("llama.cpp with the control vector does not reproduce our activation addition")
    print("ok: llama.cpp with the control vector reproduces our activation addition")


if __name__ == "__main__":
    main()
