#!/usr/bin/env bash
# Build the browser crate (web/, package refusal-web) into dist/:
#   cargo build --release --target wasm32-unknown-unknown -p refusal-web
#   -> wasm-opt -Oz -> wasm-bindgen --target web -> dist/{index.html,refusal-web.js,refusal-web_bg.wasm}
# plus the app's ES modules and CSS (web/app/, no build step) -> dist/app/.
#
#   scripts/build-web.sh [--no-opt] [--app-only] [--out DIR] [-- EXTRA CARGO ARGS]
#     --no-opt    skip wasm-opt (saves ~1-4 min; the .wasm is about twice as large)
#     --app-only  only copy index.html and web/app/ (the wasm already in DIR stays)
#     --out DIR   output folder (default: dist/ in the repository root)
#
# The toolchain and its environment come from scripts/wasm-env.sh: rustup's toolchain when it
# has the wasm32 target, otherwise Debian's rustc-web with -Zbuild-std (TOOLCHAIN.md).
# Cargo's target dir is outside the clone: ${CARGO_TARGET_DIR:-~/.cache/refusal-lens/target}
# (rustup) or the same path + "-wasm" (Debian), so the toolchains never evict each other.
# Only -p refusal-web is built; cargo runs under `nice -n 19` (shared 2-core machines).
#
# Why not trunk: see the comment at the end of this file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/dist"
OPT=1
APP_ONLY=0
CARGO_EXTRA=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --no-opt) OPT=0 ;;
        --app-only) APP_ONLY=1 ;;
        --out) OUT="$2"; shift ;;
        --) shift; CARGO_EXTRA=("$@"); break ;;
        -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "build-web: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac

# The app's pages are plain files: copying them is the whole build.
copy_app() { # DIR
    cp "$ROOT/index.html" "$1/index.html"
    rm -rf "$1/app"
    cp -r "$ROOT/web/app" "$1/app"
}
if [ "$APP_ONLY" = 1 ]; then
    mkdir -p "$OUT"
    copy_app "$OUT"
    echo "build-web: copied index.html and web/app/ into $OUT" >&2
    exit 0
fi

CRATE=refusal-web
WASM_FILE=refusal_web.wasm   # cargo's cdylib output name
OUT_NAME=refusal-web         # -> dist/refusal-web.js + dist/refusal-web_bg.wasm (index.html imports these)

log() { echo "build-web: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# --- tools (resolved before wasm-env.sh may put /usr/bin first on PATH)
WASM_BINDGEN="$(command -v wasm-bindgen 2>/dev/null || true)"
if [ -z "$WASM_BINDGEN" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/wasm-bindgen" ]; then
    WASM_BINDGEN="${CARGO_HOME:-$HOME/.cargo}/bin/wasm-bindgen"
fi
WBG_WANT="$(awk '$0 == "name = \"wasm-bindgen\"" { f = 1; next } f && /^version = / { gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.lock")"
WBG_HAVE="$([ -n "$WASM_BINDGEN" ] && "$WASM_BINDGEN" --version | awk '{print $2}' || true)"
if [ "$WBG_HAVE" != "$WBG_WANT" ]; then
    log "wasm-bindgen CLI ${WBG_HAVE:-not found} does not match the wasm-bindgen crate $WBG_WANT in Cargo.lock;"
    log "run scripts/setup.sh (cargo install wasm-bindgen-cli --version =$WBG_WANT)"
    exit 1
fi
if [ "$OPT" = 1 ] && ! command -v wasm-opt >/dev/null 2>&1; then
    log "wasm-opt not found (apt-get install binaryen, or pass --no-opt)"; exit 1
fi

# shellcheck source=scripts/wasm-env.sh
source "$ROOT/scripts/wasm-env.sh"
log "toolchain: $WASM_TOOLCHAIN ($("$WASM_CARGO" --version)), target dir: $CARGO_TARGET_DIR"

# --- 1. cargo
t0="$(now)"
(cd "$ROOT" && nice -n 19 "$WASM_CARGO" build --release --target "$WASM_TARGET" -p "$CRATE" --lib "${CARGO_EXTRA[@]}")
log "cargo build: $(elapsed "$t0")"
RAW="$CARGO_TARGET_DIR/$WASM_TARGET/release/$WASM_FILE"
[ -f "$RAW" ] || { log "expected $RAW after the build"; exit 1; }

STAGE="$(mktemp -d "${TMPDIR:-/tmp}/refusal-web.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT

# --- 2. wasm-opt, on cargo's output, BEFORE wasm-bindgen. Debian's binaryen (108) breaks the
# externref table that wasm-bindgen adds ("WebAssembly.Table.set(): Argument 1 is invalid for
# table" at load time) when it runs after wasm-bindgen; on the raw module it never sees that table.
# Features named explicitly: rustc's wasm32 defaults plus simd128.
BINDGEN_INPUT="$RAW"
if [ "$OPT" = 1 ]; then
    t0="$(now)"
    nice -n 19 wasm-opt -Oz --strip-debug --strip-producers \
        --enable-simd --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
        --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue \
        "$RAW" -o "$STAGE/opt.wasm"
    BINDGEN_INPUT="$STAGE/opt.wasm"
    log "wasm-opt -Oz: $(elapsed "$t0")"
fi

# --- 3. wasm-bindgen (into a staging folder: dist/ only changes once everything succeeded)
t0="$(now)"
mkdir "$STAGE/out"
"$WASM_BINDGEN" --target web --no-typescript --out-name "$OUT_NAME" --out-dir "$STAGE/out" "$BINDGEN_INPUT"
log "wasm-bindgen: $(elapsed "$t0")"

# --- 4. assemble dist/
copy_app "$STAGE/out"
mkdir -p "$OUT"
rm -f "$OUT"/*.wasm "$OUT"/*.js "$OUT"/index.html
rm -rf "$OUT"/app
cp -r "$STAGE/out"/. "$OUT"/
RAW_SIZE="$(stat -c %s "$RAW")"
SIZE="$(stat -c %s "$OUT/${OUT_NAME}_bg.wasm")"
GZ="$(gzip -9 -c "$OUT/${OUT_NAME}_bg.wasm" | wc -c)"
awk -v f="${OUT#"$ROOT"/}/${OUT_NAME}_bg.wasm" -v s="$SIZE" -v g="$GZ" -v r="$RAW_SIZE" 'BEGIN {
    printf "build-web: %s: %.2f MB, gzip -9: %.2f MB (cargo output %.2f MB)\n", f, s / 1e6, g / 1e6, r / 1e6 }'

# Why not trunk (yet), checked 2026-11 on Debian 12:
#  - trunk 0.22.x declares rust-version 1.96.1: neither rustup's 1.95 nor Debian's rustc-web 1.96.0
#    may install it; 0.21.14 (rust-version 1.81) would, as a cold compile of several hundred
#    crates (swc, lightningcss, oxipng, tokio, reqwest) on the shared 2-core machines.
#  - trunk runs wasm-opt AFTER wasm-bindgen. Debian's binaryen 108 reads wasm-bindgen's externref
#    table as `anyref` and writes it back with the anyref encoding, and Chromium 156 then refuses
#    the module ("WebAssembly.Table.set(): Argument 1 is invalid for table"). With trunk the
#    wasm would have to ship unoptimized (28 MB instead of 14 MB; 4.3 MB instead of 3.5 MB gzip)
#    unless a newer binaryen is installed, which apt does not offer.
# So this script keeps the plain pipeline: cargo -> wasm-opt -> wasm-bindgen -> copy index.html
# and web/app/.
# index.html imports ./refusal-web.js itself; to move to trunk later, add
#   <link data-trunk rel="rust" href="web/Cargo.toml" data-bindgen-target="web" data-wasm-opt="z">
# plus a Trunk.toml with filehash = false (so the file names stay refusal-web*.{js,wasm}),
# run trunk with the environment of scripts/wasm-env.sh, and give it a binaryen >= 116.
