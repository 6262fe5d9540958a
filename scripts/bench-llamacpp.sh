#!/usr/bin/env bash
# Peer benchmark: run `refusal-lens bench --json` and llama.cpp (through llama-cpp-python) on the
# same GGUF, with the same prompt token ids and thread count, in the same run, and print the
# ratios ours / llama.cpp for prefill and decode tokens/s, plus our peak RSS.
#
#   scripts/bench-llamacpp.sh [--setup-only] [MODEL...]
#     MODEL         a `--model` value for refusal-lens (default: smollm2-135m qwen2.5-coder-0.5b)
#     --setup-only  only create the llama.cpp venv (see below) and exit
#
#   cargo build --release -p refusal-lens   # first: the script runs the release binary
#
# Environment:
#   REFUSAL_LENS_BIN   our binary (default ${CARGO_TARGET_DIR:-~/.cache/refusal-lens/target}/release/refusal-lens)
#   RAYON_NUM_THREADS  passed through to our bench; llama.cpp then uses the `threads` it reports
#   LLAMACPP_VENV      venv for llama-cpp-python (default ~/.cache/refusal-lens/llamacpp-venv)
#   LLAMA_CPP_PYTHON_VERSION  the pinned llama-cpp-python (default 0.3.36, see PIN below)
#   LLAMACPP_AMX=1     build llama.cpp with AMX kernels (off by default: GCC 12 miscompiles them)
#   BENCH_REPEATS      runs per measurement on both sides, the medians are compared (default 3)
#   LLAMACPP_THREADS   give llama.cpp this many threads instead of our bench's `threads`
#   BENCH_NICE         run both benches under `nice -n BENCH_NICE` (e.g. -10 as root on a shared
#                      machine: llama.cpp's spinning threads collapse when the CPUs are oversubscribed)
#   BENCH_EXTRACT      harmful and harmless prompts each for the direction-extraction measurement
#                      (default 128; 0 skips it), read from BENCH_DATA (default ../shared/data
#                      beside the repository: harmful_train.json, harmless_train.json)
#   BENCH_7B=1         also measure a GGUF with Llama-2-7B's shapes and random Q4_K_M-type
#                      weights (3.9 GB, written once to BENCH_7B_FILE, default
#                      ~/.cache/refusal-lens/bench/llama2-7b-shaped.gguf, by the test-support
#                      binary write-7b-gguf): load time, peak RSS, prefill of 4 prompts and 16
#                      decoded tokens, once, with no extraction
#
# The venv is made on first use: `pip install llama-cpp-python==PIN` from PyPI compiles llama.cpp
# from source (CPU only, -march=native minus AMX, under `nice -n 19`; ~13 min on 2 busy cores),
# with cmake/ninja from PyPI. Results: a table on stdout, and target/bench/llamacpp-<model>.json
# (ours + llama.cpp + ratios) per model. The llama.cpp side is scripts/bench_llamacpp.py.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# PIN: the llama-cpp-python release known to build here (gcc 12, Debian 12) and bundling a
# llama.cpp with the Qwen2 and Llama architectures of both built-in models.
PIN="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
VENV="${LLAMACPP_VENV:-$HOME/.cache/refusal-lens/llamacpp-venv}"
BIN="${REFUSAL_LENS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}/release/refusal-lens}"
OUT_DIR="$ROOT/target/bench"
PY_SCRIPT="$ROOT/scripts/bench_llamacpp.py"

SETUP_ONLY=0
MODELS=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --setup-only) SETUP_ONLY=1 ;;
        -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
        -*) echo "bench-llamacpp: unknown option '$1' (try --help)" >&2; exit 2 ;;
        *) MODELS+=("$1") ;;
    esac
    shift
done
[ "${#MODELS[@]}" -gt 0 ] || MODELS=(smollm2-135m qwen2.5-coder-0.5b)

log() { echo "bench-llamacpp: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Check what is cheap to check before the (long) venv build.
if [ "$SETUP_ONLY" = 0 ] && [ ! -x "$BIN" ]; then
    die "our binary $BIN is missing or not executable.
  Build it with:  cargo build --release -p refusal-lens   (or set REFUSAL_LENS_BIN)"
fi

# CPU only: no CUDA/Vulkan/Metal/BLAS, no curl (model downloads), no tests/examples, no mtmd
# (multimodal) library. GGML_NATIVE tunes to this CPU (llama.cpp's default for local builds), but
# AMX is switched off: GCC 12 (Debian 12) drops the stores that fill ggml's AMX tile config before
# `ldtilecfg` (the builtin is not treated as reading memory), so on AMX CPUs the first quantized
# matmul dies with a general protection fault. LLAMACPP_AMX=1 keeps AMX (for GCC >= 13).
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
[ "${LLAMACPP_AMX:-0}" = 1 ] && NO_AMX=""
LLAMACPP_CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DGGML_HIP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF"
[ -n "$NO_AMX" ] && LLAMACPP_CMAKE_ARGS+=" -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
STAMP="$VENV/.refusal-lens-llamacpp-build"   # what the installed llama_cpp was built with
STAMP_TEXT="llama-cpp-python==$PIN $LLAMACPP_CMAKE_ARGS"

venv_ok() {
    [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$STAMP_TEXT" ] &&
        "$VENV/bin/python" -c "import sys, llama_cpp, numpy; sys.exit(llama_cpp.__version__ != '$PIN')" 2>/dev/null
}

setup_venv() {
    venv_ok && return 0
    command -v python3 >/dev/null || die "python3 is needed to create $VENV"
    command -v gcc >/dev/null && command -v g++ >/dev/null ||
        die "gcc and g++ are needed to compile llama.cpp (apt-get install build-essential)"
    log "building llama-cpp-python==$PIN into $VENV (compiles llama.cpp from source; ~13 min on 2 busy cores)"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # cmake/ninja wheels into the venv, so the build does not depend on a system cmake.
    "$VENV/bin/python" -m pip install -q "cmake>=3.21" ninja numpy
    # --no-cache-dir: pip would otherwise reuse a wheel it built earlier with other CMAKE_ARGS.
    PATH="$VENV/bin:$PATH" CMAKE_ARGS="$LLAMACPP_CMAKE_ARGS" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        nice -n 19 "$VENV/bin/python" -m pip install --no-cache-dir --force-reinstall \
        --no-binary llama-cpp-python "llama-cpp-python==$PIN" ||
        die "pip install llama-cpp-python==$PIN failed (see the compiler output above)"
    printf '%s\n' "$STAMP_TEXT" >"$STAMP"
    venv_ok || die "llama_cpp in $VENV does not import as version $PIN after installing it"
    log "llama-cpp-python $PIN ready in $VENV"
}

setup_venv
[ "$SETUP_ONLY" = 1 ] && exit 0

RUN=()
[ -n "${BENCH_NICE:-}" ] && RUN=(nice -n "$BENCH_NICE")

SEVEN_B=""
if [ "${BENCH_7B:-0}" = 1 ]; then
    SEVEN_B="${BENCH_7B_FILE:-$HOME/.cache/refusal-lens/bench/llama2-7b-shaped.gguf}"
    if [ ! -f "$SEVEN_B" ]; then
        log "writing $SEVEN_B (random weights with Llama-2-7B's shapes)"
        mkdir -p "$(dirname "$SEVEN_B")"
        (cd "$ROOT" && cargo run --release --quiet -p refusal-tests --bin write-7b-gguf -- "$SEVEN_B") ||
            die "could not write $SEVEN_B"
    fi
    MODELS+=("$SEVEN_B")
fi

mkdir -p "$OUT_DIR"
RESULTS=()
for model in "${MODELS[@]}"; do
    safe="$(printf '%s' "$model" | tr -c 'A-Za-z0-9._-' '_')"
    ours="$OUT_DIR/ours-$safe.json"
    result="$OUT_DIR/llamacpp-$safe.json"
    log "$model: refusal-lens bench"
    EXTRACT=()
    SIZES=(--repeats "${BENCH_REPEATS:-3}")
    DATA="${BENCH_DATA:-$ROOT/../shared/data}"
    if [ "$model" = "$SEVEN_B" ]; then
        SIZES=(--repeats 1 --batch 4 --decode-tokens 16)
    elif [ "${BENCH_EXTRACT:-128}" != 0 ]; then
        [ -f "$DATA/harmful_train.json" ] || die "no $DATA/harmful_train.json (set BENCH_DATA, or BENCH_EXTRACT=0)"
        EXTRACT=(--extract-prompts "${BENCH_EXTRACT:-128}" --harmful "$DATA/harmful_train.json"
            --harmless "$DATA/harmless_train.json")
    fi
    if ! "${RUN[@]}" "$BIN" bench --model "$model" "${EXTRACT[@]}" "${SIZES[@]}" --json >"$ours.tmp"; then
        rm -f "$ours.tmp"
        die "refusal-lens bench --model $model failed (is the model available? see its message above)"
    fi
    mv "$ours.tmp" "$ours"
    log "$model: llama.cpp on the same tokens"
    "${RUN[@]}" "$VENV/bin/python" "$PY_SCRIPT" run --ours "$ours" --out "$result" \
        --repeats "${SIZES[1]}" ${LLAMACPP_THREADS:+--threads "$LLAMACPP_THREADS"} ||
        die "the llama.cpp side failed for $model"
    RESULTS+=("$result")
done

"$VENV/bin/python" "$PY_SCRIPT" table "${RESULTS[@]}"
log "results: ${RESULTS[*]}"
