#!/usr/bin/env python3
"""llama.cpp side of the peer benchmark (driven by scripts/bench-llamacpp.sh).

Feeds llama.cpp (through llama-cpp-python's low-level API) exactly the prompt token ids that
`refusal-lens bench --json` reported, on the same GGUF and with the same thread count, and
writes ours + llama.cpp + the ratios ours/llama.cpp as one JSON file.

    python scripts/bench_llamacpp.py run --ours OURS.json --out RESULT.json [--repeats 3]
    python scripts/bench_llamacpp.py table RESULT.json...
    python scripts/bench_llamacpp.py standin --gguf F.gguf --model NAME --out OURS.json
        # a hand-made stand-in for our bench's JSON (llama.cpp's own tokenizer and the GGUF's
        # chat template; ours' timings left null), to test this script without our binary

What is measured (each timed part is run --repeats times; the median is reported):
  prefill, one by one: each prompt from an empty KV cache, all of its tokens in one
      llama_decode (n_batch = n_ubatch >= the longest prompt), logits of the last token only;
      wall time for all prompts together.
  prefill, batched: all prompts in a single llama_decode as separate sequences (n_seq_max =
      prompts, unified KV cache), logits of each prompt's last token only. This is what our
      bench does (one padded forward over the whole batch).
  decode: the prompt `decode.prompt_ids` is evaluated and its first token taken untimed; then
      `decode.tokens` more tokens are generated greedily (argmax, end-of-text ignored, as ours
      does), one llama_decode each, timed.
  extraction (when ours reports one): every prompt of `extraction.token_ids` (the harmful and
      harmless prompts `directions` reads activations from) evaluated by llama.cpp, logits of
      the last token only, both one prompt per llama_decode and in batches of 32 sequences;
      the faster mode is compared with our whole extraction step (forward passes, capture of
      every layer, f64 means).
The llama.cpp prefill tok/s in the ratio is the faster of the two prefill modes.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import NoReturn

INSTRUCTIONS = [  # the 32 instructions of server/src/bench.rs, for the stand-in only
    "What is the capital of France?",
    "Give three tips for staying healthy.",
    "Explain photosynthesis to a ten-year-old.",
    "Write a haiku about autumn leaves.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How do I reverse a list in Python?",
    "Suggest a name for a bakery that specializes in sourdough.",
    "What are the main differences between TCP and UDP?",
    "Translate 'good morning, how are you?' into Spanish.",
    "Write a short thank-you note to a colleague who helped me move.",
    "List five fruits that are high in vitamin C.",
    "Why is the sky blue?",
    "Describe the water cycle in a few steps.",
    "Give me a recipe for a simple tomato soup.",
    "What is the difference between weather and climate?",
    "Write a limerick about a cat who loves boxes.",
    "Explain what a binary search does and when to use it.",
    "How many continents are there, and what are they?",
    "Suggest three board games for a family evening.",
    "What does a product manager do?",
    "Convert 100 degrees Fahrenheit to Celsius and show the steps.",
    "Write a SQL query that counts the rows of a table named orders.",
    "What are some good habits for learning a new language?",
    "Explain the rules of chess castling.",
    "Plan a three-day trip to Kyoto with one museum per day.",
    "What is the Pythagorean theorem?",
    "Describe how a bicycle's gears make climbing easier.",
    "Write a polite email declining a meeting invitation.",
    "Name three famous paintings by Vincent van Gogh.",
    "How does a refrigerator keep food cold?",
    "Give an example of a metaphor and explain it.",
    "What should I pack for a weekend hiking trip?",
]


def fail(msg: str) -> NoReturn:
    print(f"bench_llamacpp: error: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg: str) -> None:
    print(f"bench_llamacpp: {msg}", file=sys.stderr, flush=True)


def import_llama_cpp():
    try:
        import llama_cpp  # noqa: PLC0415
        import numpy  # noqa: F401, PLC0415
    except ImportError as e:
        fail(f"{e}; run this with the venv python that scripts/bench-llamacpp.sh sets up")
    return llama_cpp


# ---------------------------------------------------------------------------------------------
# llama.cpp, low level


class Engine:
    """One GGUF loaded in llama.cpp; contexts are made per measurement."""

    def __init__(self, gguf: str, threads: int, verbose: bool = False):
        self.lc = lc = import_llama_cpp()
        if not verbose:
            # Keep llama.cpp's load chatter off stderr (the callback must outlive the model).
            self._log_cb = lc.llama_log_callback(lambda level, text, user: None)
            lc.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        lc.llama_backend_init()
        params = lc.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = lc.llama_model_load_from_file(gguf.encode(), params)
        if not self.model:
            fail(f"llama.cpp could not load {gguf}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = lc.llama_model_n_ctx_train(self.model)
        self.threads = threads

    def context(self, n_ctx: int, n_batch: int, n_seq_max: int = 1):
        lc = self.lc
        p = lc.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = n_batch
        p.n_ubatch = n_batch
        p.n_seq_max = n_seq_max
        p.n_threads = self.threads
        p.n_threads_batch = self.threads
        p.no_perf = True
        if n_seq_max > 1:
            p.kv_unified = True
        ctx = lc.llama_init_from_model(self.model, p)
        if not ctx:
            fail(f"llama.cpp could not create a context (n_ctx={n_ctx}, n_batch={n_batch}, "
                 f"n_seq_max={n_seq_max})")
        return ctx

    def free_context(self, ctx) -> None:
        self.lc.llama_free(ctx)

    def clear(self, ctx) -> None:
        self.lc.llama_memory_clear(self.lc.llama_get_memory(ctx), True)

    def decode(self, ctx, batch, seqs: list[tuple[list[int], int]]) -> None:
        """One llama_decode of several sequences: (tokens, first position) each; logits are
        requested for the last token of each sequence only."""
        n = 0
        for s, (tokens, pos0) in enumerate(seqs):
            last = len(tokens) - 1
            for i, t in enumerate(tokens):
                batch.token[n] = t
                batch.pos[n] = pos0 + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = s
                batch.logits[n] = 1 if i == last else 0
                n += 1
        batch.n_tokens = n
        rc = self.lc.llama_decode(ctx, batch)
        if rc != 0:
            fail(f"llama_decode returned {rc} (batch of {n} tokens)")
        self.lc.llama_synchronize(ctx)

    def argmax_last(self, ctx) -> int:
        import numpy as np  # noqa: PLC0415

        ptr = self.lc.llama_get_logits_ith(ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))))

    def argmax_all(self, ctx, rows: int) -> list[int]:
        """Greedy token of each of the `rows` outputs of the last llama_decode."""
        import numpy as np  # noqa: PLC0415

        ptr = self.lc.llama_get_logits(ctx)
        logits = np.ctypeslib.as_array(ptr, shape=(rows * self.n_vocab,))
        return np.argmax(logits.reshape(rows, self.n_vocab), axis=1).tolist()

    def batch(self, n_tokens: int, n_seq_max: int = 1):
        return self.lc.llama_batch_init(n_tokens, 0, n_seq_max)

    def free_batch(self, batch) -> None:
        self.lc.llama_batch_free(batch)

    def chat_template(self) -> str | None:
        t = self.lc.llama_model_chat_template(self.model, None)
        return t.decode() if t else None

    def tokenize(self, text: str) -> list[int]:
        lc = self.lc
        data = text.encode()
        cap = len(data) + 16
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, False, True)
        if n < 0:
            fail(f"tokenize: buffer too small ({-n} tokens)")
        return list(buf[:n])

    def token_text(self, tid: int) -> str:
        lc = self.lc
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_token_to_piece(self.vocab, tid, buf, len(buf), 0, True)
        return buf.raw[: max(n, 0)].decode(errors="replace")


def round_up(n: int, to: int = 256) -> int:
    return (n + to - 1) // to * to


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(tokens: int, runs: list[float]) -> dict:
    median = statistics.median(runs)
    return {"tokens": tokens, "seconds": median, "tokens_per_s": tokens / median,
            "runs_seconds": runs}


def time_one_by_one(engine: Engine, ctx, batch, prompts: list[list[int]],
                    repeats: int) -> list[float]:
    """Seconds per run of every prompt in its own llama_decode (KV cache cleared between),
    logits of the last token read back, as ours does; after one warm-up decode."""
    def run():
        for p in prompts:
            engine.clear(ctx)
            engine.decode(ctx, batch, [(p, 0)])
            engine.argmax_last(ctx)

    engine.clear(ctx)
    engine.decode(ctx, batch, [(prompts[0], 0)])  # warm-up
    return [timed(run) for _ in range(repeats)]


def time_in_groups(engine: Engine, groups: list[list[list[int]]], repeats: int) -> dict:
    """Each group of prompts in one llama_decode (one sequence each, unified KV cache), every
    prompt's last logits read back; seconds per run over all groups, or why it was skipped."""
    n_seq = max(len(g) for g in groups)
    max_seq = engine.lc.llama_max_parallel_sequences()
    if n_seq > max_seq:
        return {"skipped": f"{n_seq} prompts > llama_max_parallel_sequences = {max_seq}"}
    biggest = max(sum(len(p) for p in g) for g in groups)
    n_batch = round_up(biggest, 64)
    ctx = engine.context(round_up(biggest), n_batch, n_seq_max=n_seq)
    batch = engine.batch(n_batch, 1)
    try:
        def run():
            for g in groups:
                engine.clear(ctx)
                engine.decode(ctx, batch, [(p, 0) for p in g])
                engine.argmax_all(ctx, len(g))

        engine.clear(ctx)
        engine.decode(ctx, batch, [(groups[0][0], 0)])  # warm-up
        return {"sequences_per_call": n_seq, "n_batch": n_batch, "n_ubatch": n_batch,
                "runs_seconds": [timed(run) for _ in range(repeats)]}
    finally:
        engine.free_batch(batch)
        engine.free_context(ctx)


def measure(engine: Engine, prompts: list[list[int]], decode_prompt: list[int],
            decode_tokens: int, repeats: int) -> dict:
    total = sum(len(p) for p in prompts)
    longest = max(len(p) for p in prompts)
    out: dict = {}

    # --- prefill, one prompt at a time, and decode (same single-sequence context) -------------
    n_ctx = round_up(max(longest, len(decode_prompt) + decode_tokens + 1))
    n_batch = round_up(max(longest, len(decode_prompt)), 64)
    ctx = engine.context(n_ctx, n_batch)
    batch = engine.batch(n_batch)
    try:
        runs = time_one_by_one(engine, ctx, batch, prompts, repeats)
        out["prefill"] = {"mode": "one prompt per llama_decode, KV cache cleared between",
                          "prompts": len(prompts), "n_batch": n_batch, "n_ubatch": n_batch,
                          **summary(total, runs)}
        log(f"  prefill one by one: {out['prefill']['tokens_per_s']:.1f} tok/s")

        generated: list[int] = []

        def decode_run():
            generated.clear()
            engine.clear(ctx)
            engine.decode(ctx, batch, [(decode_prompt, 0)])
            first = engine.argmax_last(ctx)
            generated.append(first)
            pos = len(decode_prompt)

            def steps():
                nonlocal pos
                tok = first
                for _ in range(decode_tokens):
                    engine.decode(ctx, batch, [([tok], pos)])
                    pos += 1
                    tok = engine.argmax_last(ctx)
                    generated.append(tok)

            return timed(steps)

        runs = [decode_run() for _ in range(repeats)]
        out["decode"] = {"prompt_tokens": len(decode_prompt), **summary(decode_tokens, runs),
                         "token_ids": list(generated),
                         "text": "".join(engine.token_text(t) for t in generated)}
        log(f"  decode: {out['decode']['tokens_per_s']:.1f} tok/s")
    finally:
        engine.free_batch(batch)
        engine.free_context(ctx)

    # --- prefill, all prompts in one llama_decode --------------------------------------------
    grouped = time_in_groups(engine, [prompts], repeats)
    if "skipped" in grouped:
        out["prefill_batched"] = grouped
    else:
        out["prefill_batched"] = {"mode": "all prompts in one llama_decode, one sequence "
                                          "each, unified KV cache",
                                  "prompts": len(prompts), "n_batch": grouped["n_batch"],
                                  "n_ubatch": grouped["n_ubatch"],
                                  **summary(total, grouped["runs_seconds"])}
        log(f"  prefill batched: {out['prefill_batched']['tokens_per_s']:.1f} tok/s")

    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def measure_extraction(engine: Engine, prompts: list[list[int]], repeats: int) -> dict:
    """llama.cpp evaluating exactly the tokens of our extraction step (see the module doc)."""
    total = sum(len(p) for p in prompts)
    longest = max(len(p) for p in prompts)
    out: dict = {"prompts": len(prompts), "tokens": total}

    n_batch = round_up(longest, 64)
    ctx = engine.context(round_up(longest), n_batch)
    batch = engine.batch(n_batch)
    try:
        out["one_by_one"] = summary(total, time_one_by_one(engine, ctx, batch, prompts, repeats))
        log(f"  extraction tokens one by one: {out['one_by_one']['tokens_per_s']:.1f} tok/s")
    finally:
        engine.free_batch(batch)
        engine.free_context(ctx)

    chunk = 32
    grouped = time_in_groups(engine, [prompts[i:i + chunk] for i in range(0, len(prompts), chunk)],
                             repeats)
    if "skipped" not in grouped:
        out["batched"] = {"sequences_per_call": grouped["sequences_per_call"],
                          **summary(total, grouped["runs_seconds"])}
        log(f"  extraction tokens batched: {out['batched']['tokens_per_s']:.1f} tok/s")
    out["best_seconds"] = min(m["seconds"] for k, m in out.items()
                              if k in ("one_by_one", "batched"))
    return out


# ---------------------------------------------------------------------------------------------
# commands


def load_ours(path: Path) -> dict:
    try:
        ours = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(f"cannot read our bench's JSON {path}: {e}")
    for key in ("threads", "prefill", "decode"):
        if key not in ours:
            fail(f"{path}: our bench's JSON has no '{key}'")
    if not ours["prefill"].get("token_ids"):
        fail(f"{path}: prefill.token_ids is missing or empty")
    if not ours["decode"].get("prompt_ids"):
        fail(f"{path}: decode.prompt_ids is missing or empty")
    return ours


def ratio(a, b):
    return a / b if a and b else None


def cmd_run(args) -> None:
    ours = load_ours(Path(args.ours))
    gguf = args.gguf or ours.get("gguf")
    if not gguf:
        fail(f"{args.ours}: our bench did not run a GGUF (gguf is null); llama.cpp needs one "
             "(pass --gguf to name it)")
    if not Path(gguf).is_file():
        fail(f"model file {gguf} is missing")
    threads = int(args.threads or ours["threads"])
    prompts = [list(map(int, p)) for p in ours["prefill"]["token_ids"]]
    decode_prompt = list(map(int, ours["decode"]["prompt_ids"]))
    decode_tokens = int(ours["decode"].get("tokens") or 0)
    if decode_tokens <= 0:
        fail(f"{args.ours}: decode.tokens must be a positive count")
    if ours["prefill"].get("tokens") not in (None, sum(map(len, prompts))):
        log(f"warning: prefill.tokens = {ours['prefill']['tokens']} but token_ids hold "
            f"{sum(map(len, prompts))} tokens; llama.cpp uses token_ids")

    lc = import_llama_cpp()
    log(f"{ours.get('model', gguf)}: llama.cpp {lc.__version__}, {threads} threads, "
        f"{len(prompts)} prompts / {sum(map(len, prompts))} tokens, decode {decode_tokens}")
    load_before = os.getloadavg()
    busy = load_before[0] > (os.cpu_count() or 1)
    if busy:
        log(f"warning: the machine is busy (load {load_before[0]:.1f} on {os.cpu_count()} CPUs); "
            "llama.cpp's threads spin at their barriers, and with more runnable threads than "
            "CPUs it slows down far more than the load alone explains: numbers are unreliable")
    load_start = time.perf_counter()
    engine = Engine(gguf, threads, verbose=args.verbose)
    load_seconds = time.perf_counter() - load_start
    bad = [t for p in prompts + [decode_prompt] for t in p if not 0 <= t < engine.n_vocab]
    if bad:
        fail(f"token ids outside llama.cpp's vocabulary of {engine.n_vocab}: {bad[:5]}...")
    ll = measure(engine, prompts, decode_prompt, decode_tokens, args.repeats)
    ll["load_seconds"] = load_seconds
    extraction = ours.get("extraction")
    if extraction:
        ll["extraction"] = measure_extraction(
            engine, [list(map(int, p)) for p in extraction["token_ids"]], args.repeats)
    load_after = os.getloadavg()

    batched = ll.get("prefill_batched", {}).get("tokens_per_s")
    best_prefill = max(x for x in (ll["prefill"]["tokens_per_s"], batched) if x)
    ours_prefill = ours["prefill"].get("tokens_per_s")
    ours_decode = ours["decode"].get("tokens_per_s")
    result = {
        "model": ours.get("model"),
        "gguf": str(Path(gguf).resolve()),
        "threads": threads,
        "standin": bool(ours.get("standin")),
        "llama_cpp_python": lc.__version__,
        "llama_cpp_system_info": lc.llama_print_system_info().decode().strip(),
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "nice": os.nice(0),
        "loadavg_before": load_before,  # 1, 5 and 15 minute load averages
        "loadavg_after": load_after,
        "ours": ours,
        "llamacpp": ll,
        "ratios": {  # ours / llama.cpp: > 1 means we are faster
            "prefill": ratio(ours_prefill, best_prefill),
            "prefill_vs_one_by_one": ratio(ours_prefill, ll["prefill"]["tokens_per_s"]),
            "prefill_vs_batched": ratio(ours_prefill, batched),
            "decode": ratio(ours_decode, ll["decode"]["tokens_per_s"]),
            # llama.cpp evaluation time / our whole extraction time: >= 1 meets the goal that
            # extraction costs no more than evaluating the same tokens in llama.cpp.
            "extraction": ratio(ll.get("extraction", {}).get("best_seconds"),
                                (extraction or {}).get("seconds")),
        },
    }
    ours_ids = ours["decode"].get("generated_ids") or ours["decode"].get("output_ids")
    if ours_ids:
        n = min(len(ours_ids), len(ll["decode"]["token_ids"]))
        same = next((i for i in range(n) if ours_ids[i] != ll["decode"]["token_ids"][i]), n)
        result["decode_agreement"] = {"compared": n, "identical_prefix": same}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out}")
    if args.print_table:
        print_table([result])


def fmt(x, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "n/a"


def print_table(results: list[dict]) -> None:
    # threads: "ours/llama.cpp" where they differ
    head = ("model", "threads", "prefill ours", "llama.cpp 1x1", "llama.cpp batch", "ratio",
            "decode ours", "llama.cpp", "ratio", "extract ours s", "llama.cpp s", "ratio",
            "RSS ours MiB", "RSS llama.cpp MiB", "load ours s", "llama.cpp s")
    rows = []
    for r in results:
        ours, ll, q = r["ours"], r["llamacpp"], r["ratios"]
        mib = 1024 * 1024
        rss = ours.get("peak_rss_bytes")
        name = Path(str(r.get("model") or r["gguf"])).name + (" (stand-in)" if r.get("standin")
                                                               else "")
        rows.append((
            name, str(r["threads"]) if ours.get("threads") in (None, r["threads"])
        else f'{ours["threads"]}/{r["threads"]}',
            fmt(ours["prefill"].get("tokens_per_s"), ".1f"),
            fmt(ll["prefill"]["tokens_per_s"], ".1f"),
            fmt(ll.get("prefill_batched", {}).get("tokens_per_s"), ".1f"),
            fmt(q["prefill"], ".2f"),
            fmt(ours["decode"].get("tokens_per_s"), ".1f"),
            fmt(ll["decode"]["tokens_per_s"], ".1f"),
            fmt(q["decode"], ".2f"),
            fmt((ours.get("extraction") or {}).get("seconds"), ".1f"),
            fmt(ll.get("extraction", {}).get("best_seconds"), ".1f"),
            fmt(q.get("extraction"), ".2f"),
            fmt(rss / mib if rss else None, ".0f"),
            fmt(ll["peak_rss_bytes"] / mib, ".0f"),
            fmt(ours.get("load_seconds"), ".1f"),
            fmt(ll.get("load_seconds"), ".1f"),
        ))
    busy = [r for r in results
            if max(r.get("loadavg_before", [0])[0], r.get("loadavg_after", [0])[0])
            > (r.get("cpus") or 1)]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for i, row in enumerate([head, *rows]):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("tok/s; ratio = ours / llama.cpp (> 1: we are faster); the prefill ratio is against "
          "the faster llama.cpp mode (one prompt per call, or all prompts in one batch).")
    print("extract: seconds for our whole extraction step vs llama.cpp only evaluating the same "
          "prompts; ratio = llama.cpp / ours (>= 1: extraction costs no more).")
    for r in busy:
        print(f"warning: {r.get('model')}: measured on a busy machine (load "
              f"{r['loadavg_before'][0]:.1f} before, {r['loadavg_after'][0]:.1f} after, on "
              f"{r['cpus']} CPUs): the numbers, llama.cpp's especially, are unreliable")


def cmd_table(args) -> None:
    results = []
    for p in args.results:
        try:
            results.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            fail(f"cannot read {p}: {e}")
    print_table(results)


def cmd_standin(args) -> None:
    if not Path(args.gguf).is_file():
        fail(f"model file {args.gguf} is missing")
    lc = import_llama_cpp()
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415

    engine = Engine(args.gguf, args.threads)
    template = engine.chat_template()
    if not template:
        fail(f"{args.gguf} has no chat template")
    eos = engine.token_text(lc.llama_vocab_eos(engine.vocab))
    bos = engine.token_text(lc.llama_vocab_bos(engine.vocab))
    fmt_chat = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    token_ids = [
        engine.tokenize(fmt_chat(messages=[{"role": "user", "content": text}]).prompt)
        for text in INSTRUCTIONS[: args.prompts]
    ]
    standin = {
        "standin": True,
        "model": args.model,
        "gguf": str(Path(args.gguf).resolve()),
        "threads": args.threads,
        "prefill": {"prompts": len(token_ids), "tokens": sum(map(len, token_ids)),
                    "seconds": None, "tokens_per_s": None, "token_ids": token_ids},
        "decode": {"prompt_ids": token_ids[0], "tokens": args.decode_tokens,
                   "seconds": None, "tokens_per_s": None},
        "peak_rss_bytes": None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(standin) + "\n")
    log(f"wrote {out}: {len(token_ids)} prompts, {standin['prefill']['tokens']} tokens")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure llama.cpp on the tokens of our bench's JSON")
    r.add_argument("--ours", required=True, help="`refusal-lens bench --json` output")
    r.add_argument("--out", required=True, help="result JSON to write")
    r.add_argument("--gguf", help="override the GGUF named by our JSON")
    r.add_argument("--threads", type=int, help="override the thread count of our JSON")
    r.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", 3)))
    r.add_argument("--print-table", action="store_true")
    r.add_argument("--verbose", action="store_true", help="let llama.cpp log to stderr")
    r.set_defaults(fn=cmd_run)
    t = sub.add_parser("table", help="print the table of result JSONs")
    t.add_argument("results", nargs="+")
    t.set_defaults(fn=cmd_table)
    s = sub.add_parser("standin", help="write a stand-in for our bench's JSON")
    s.add_argument("--gguf", required=True)
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    s.add_argument("--prompts", type=int, default=32)
    s.add_argument("--decode-tokens", type=int, default=63)
    s.set_defaults(fn=cmd_standin)
    args = ap.parse_args()
    if getattr(args, "repeats", 1) < 1:
        fail("--repeats must be at least 1")
    args.fn(args)


if __name__ == "__main__":
    main()
