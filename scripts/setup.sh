#!/usr/bin/env bash
# Install what building and testing Refusal Lens needs on a fresh Debian 12 machine (run as root,
# or with sudo available). Idempotent, and silent when everything is already there.
#
#   scripts/setup.sh            # install what is missing
#   scripts/setup.sh --check    # only report what is missing (exit 1 if anything is)
#   REFUSAL_SETUP_TRY_RUSTUP=1 scripts/setup.sh   # retry `rustup target add` now, even if it
#                                                 # failed less than a day ago
#
# What it sets up:
#   - apt: binaryen (wasm-opt), chromium (headless browser tests), curl (scripts/fetch-vocabs.sh),
#     nodejs if node is missing,
#     and, unless rustup's toolchain has (or can get) the wasm32 target, Debian's wasm toolchain:
#     rustc-web cargo-web rust-web-src lld-19 (std for wasm32 is then built with -Zbuild-std;
#     see /work/shared/docs/TOOLCHAIN.md and scripts/wasm-env.sh).
#   - wasm-bindgen-cli, the exact version of the `wasm-bindgen` crate in Cargo.lock
#     (cargo install, compiled from source; --locked is deliberately not used, see TOOLCHAIN.md).
#   - playwright-core from tests/browser/package-lock.json (npm ci). No browser download:
#     the tests drive Debian's /usr/bin/chromium. Never run `npx playwright install`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK_ONLY=0
case "${1:-}" in
    --check) CHECK_ONLY=1 ;;
    "") ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "setup: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

say() { echo "setup: $*" >&2; }
missing=()
note_missing() { missing+=("$1"); say "missing: $1"; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi
fi

# ---------------------------------------------------------------- helpers
pkg_installed() { # true if the Debian package is fully installed
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

rustup_has_wasm() {
    command -v rustup >/dev/null 2>&1 &&
        rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown
}

# The cargo used for `cargo install`: rustup's if there is one, else Debian's.
host_cargo() {
    if command -v cargo >/dev/null 2>&1; then command -v cargo; else echo /usr/bin/cargo; fi
}

lock_version() { # version of a crate in Cargo.lock (first match)
    awk -v name="$1" '
        $0 == "name = \"" name "\"" { found = 1; next }
        found && /^version = / { gsub(/"/, "", $3); print $3; exit }
    ' "$ROOT/Cargo.lock"
}

APT_UPDATED=0
apt_install() { # apt_install PKG...; runs `apt-get update` once per setup run
    [ "$#" -gt 0 ] || return 0
    if [ "$CHECK_ONLY" = 1 ]; then return 0; fi
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
        say "need root (or sudo) to install: $*"; exit 1
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        say "apt-get update"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# ---------------------------------------------------------------- 1. apt packages + wasm toolchain
APT_BASE=(binaryen chromium curl)
APT_DEBIAN_WASM=(rustc-web cargo-web rust-web-src lld-19)

apt_needed=()
for p in "${APT_BASE[@]}"; do pkg_installed "$p" || apt_needed+=("$p"); done
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_needed+=(nodejs npm)
fi

debian_wasm_missing=()
for p in "${APT_DEBIAN_WASM[@]}"; do pkg_installed "$p" || debian_wasm_missing+=("$p"); done

# A failed `rustup target add` is remembered for a day, so that reruns stay fast and quiet.
RUSTUP_FAILED_STAMP="${XDG_CACHE_HOME:-$HOME/.cache}/refusal-lens/rustup-wasm32-failed"
rustup_failed_recently() {
    [ -f "$RUSTUP_FAILED_STAMP" ] && [ -n "$(find "$RUSTUP_FAILED_STAMP" -mmin -1440 2>/dev/null)" ]
}

if rustup_has_wasm; then
    : # rustup's toolchain builds wasm32 directly; Debian's is not needed.
else
    rustup_ok=0
    if [ "$CHECK_ONLY" = 1 ]; then
        [ "${#debian_wasm_missing[@]}" -eq 0 ] || note_missing "a wasm32 toolchain (rustup target or Debian's)"
        rustup_ok=1 # report only
    elif command -v rustup >/dev/null 2>&1 &&
        { ! rustup_failed_recently || [ "${REFUSAL_SETUP_TRY_RUSTUP:-0}" = 1 ]; }; then
        say "trying: rustup target add wasm32-unknown-unknown (20 s limit)"
        if timeout 20 rustup target add wasm32-unknown-unknown >/dev/null 2>&1 && rustup_has_wasm; then
            rustup_ok=1
            rm -f "$RUSTUP_FAILED_STAMP"
            say "rustup's toolchain now has wasm32-unknown-unknown"
        else
            mkdir -p "$(dirname "$RUSTUP_FAILED_STAMP")" && touch "$RUSTUP_FAILED_STAMP"
            if [ "${#debian_wasm_missing[@]}" -gt 0 ]; then
                say "rustup could not add the wasm32 target; falling back to Debian's toolchain (-Zbuild-std)"
            fi
        fi
    fi
    if [ "$rustup_ok" = 0 ]; then apt_needed+=("${debian_wasm_missing[@]}"); fi
fi

if [ "${#apt_needed[@]}" -gt 0 ]; then
    for p in "${apt_needed[@]}"; do note_missing "apt package $p"; done
    apt_install "${apt_needed[@]}"
fi

if ! rustup_has_wasm && [ "$CHECK_ONLY" = 0 ]; then
    # Debian's rustc needs the library source exactly where -Zbuild-std looks for it.
    if [ ! -d /usr/lib/rustlib/src/rust/library/std ]; then
        say "rust-web-src is installed but /usr/lib/rustlib/src/rust/library/std is absent"; exit 1
    fi
fi

NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if [ "$CHECK_ONLY" = 0 ] && [ "$NODE_MAJOR" -lt 20 ]; then
    say "warning: node $(node --version 2>/dev/null || echo missing) is older than 20, which playwright-core needs"
fi

# ---------------------------------------------------------------- 2. wasm-bindgen-cli == Cargo.lock
WBG_WANT="$(lock_version wasm-bindgen)"
if [ -z "$WBG_WANT" ]; then
    say "no wasm-bindgen in Cargo.lock (run a cargo command on the workspace first)"; exit 1
fi
WBG_HAVE=""
for wbg in "$(command -v wasm-bindgen 2>/dev/null || true)" "${CARGO_HOME:-$HOME/.cargo}/bin/wasm-bindgen"; do
    if [ -n "$wbg" ] && [ -x "$wbg" ]; then
        WBG_HAVE="$("$wbg" --version 2>/dev/null | awk '{print $2}')"
        [ "$WBG_HAVE" = "$WBG_WANT" ] && break
    fi
done
if [ "$WBG_HAVE" != "$WBG_WANT" ]; then
    note_missing "wasm-bindgen-cli $WBG_WANT (have: ${WBG_HAVE:-none})"
    if [ "$CHECK_ONLY" = 0 ]; then
        say "cargo install wasm-bindgen-cli --version =$WBG_WANT (compiles from source, several minutes)"
        # Not --locked: the crate's own lock names a webpki-roots release the registry lacks.
        nice -n 19 "$(host_cargo)" install --quiet wasm-bindgen-cli --version "=$WBG_WANT" --force
    fi
fi

# ---------------------------------------------------------------- 3. playwright-core (npm)
BROWSER_DIR="$ROOT/tests/browser"
PW_WANT="$(node -e 'const l=require(process.argv[1]);console.log(l.packages["node_modules/playwright-core"].version)' \
    "$BROWSER_DIR/package-lock.json" 2>/dev/null || true)"
PW_HAVE="$(node -e 'console.log(require(process.argv[1]).version)' \
    "$BROWSER_DIR/node_modules/playwright-core/package.json" 2>/dev/null || true)"
if [ -z "$PW_WANT" ] || [ "$PW_HAVE" != "$PW_WANT" ]; then
    note_missing "npm playwright-core ${PW_WANT:-?} in tests/browser (have: ${PW_HAVE:-none})"
    if [ "$CHECK_ONLY" = 0 ]; then
        say "npm ci in tests/browser"
        (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
    fi
fi

if [ "$CHECK_ONLY" = 1 ] && [ "${#missing[@]}" -gt 0 ]; then exit 1; fi
if [ "${#missing[@]}" -gt 0 ]; then say "done"; fi
