# shellcheck shell=bash
# Sourced by scripts/build-web.sh (and scripts/setup.sh): picks the toolchain that builds
# the browser crate for wasm32-unknown-unknown and exports the environment it needs.
# See shared/docs/TOOLCHAIN.md (outside this repo: /work/shared/docs/TOOLCHAIN.md).
#
# Result:
#   WASM_TOOLCHAIN   "rustup" (rustup's toolchain has the wasm32 target installed) or
#                    "debian" (Debian's rustc-web + rust-web-src, std built with -Zbuild-std)
#   WASM_CARGO       the cargo binary to call
#   CARGO_TARGET_DIR a cargo target dir outside the clone, one per toolchain, so the two
#                    never invalidate each other's artifacts:
#                      rustup: ${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}
#                      debian: the same path with "-wasm" appended
#   plus RUSTFLAGS, CARGO_PROFILE_RELEASE_DEBUG=false and (debian) RUSTC_BOOTSTRAP, CARGO_UNSTABLE_BUILD_STD, PATH, linker.
#
# Override the choice with REFUSAL_WASM_TOOLCHAIN=rustup|debian.

WASM_TARGET=wasm32-unknown-unknown
_refusal_target_base="${CARGO_TARGET_DIR:-$HOME/.cache/refusal-lens/target}"
_refusal_target_base="${_refusal_target_base%/}"

refusal_rustup_has_wasm() {
    command -v rustup >/dev/null 2>&1 &&
        rustup target list --installed 2>/dev/null | grep -qx "$WASM_TARGET"
}

if [ -z "${REFUSAL_WASM_TOOLCHAIN:-}" ]; then
    if refusal_rustup_has_wasm; then
        REFUSAL_WASM_TOOLCHAIN=rustup
    else
        REFUSAL_WASM_TOOLCHAIN=debian
    fi
fi
WASM_TOOLCHAIN="$REFUSAL_WASM_TOOLCHAIN"

# The getrandom 0.3/0.4 browser backend is chosen by cfg; SIMD128 works in every current browser.
export RUSTFLAGS='--cfg getrandom_backend="wasm_js" -C target-feature=+simd128'
# No line tables in the wasm: wasm-opt strips them anyway, and with them cargo's output is
# about 300 MB, which made the cold build and wasm-opt take minutes longer.
export CARGO_PROFILE_RELEASE_DEBUG=false

case "$WASM_TOOLCHAIN" in
    rustup)
        WASM_CARGO="$(command -v cargo)"
        export CARGO_TARGET_DIR="$_refusal_target_base"
        ;;
    debian)
        # Debian's cargo/rustc live in /usr/bin; rustup's shims (~/.cargo/bin) must not win.
        export PATH="/usr/bin:$PATH"
        WASM_CARGO=/usr/bin/cargo
        export RUSTC=/usr/bin/rustc
        unset RUSTUP_TOOLCHAIN
        export RUSTC_BOOTSTRAP=1
        export CARGO_UNSTABLE_BUILD_STD=std,panic_abort
        export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-19
        export CARGO_TARGET_DIR="${_refusal_target_base}-wasm"
        ;;
    *)
        echo "wasm-env: REFUSAL_WASM_TOOLCHAIN must be rustup or debian, not '$WASM_TOOLCHAIN'" >&2
        return 1 2>/dev/null || exit 1
        ;;
esac
export WASM_TARGET WASM_TOOLCHAIN WASM_CARGO
unset _refusal_target_base
