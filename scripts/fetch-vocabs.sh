#!/usr/bin/env bash
# llama.cpp's vocabulary test files, for the tokenizer tests (tests/vocabs.rs): the vocab-only
# GGUF files of several tokenizer families and their expected tokenizations (`.inp` texts,
# `.out` token ids, made by llama.cpp's authors with each family's reference tokenizer). They
# come from the llama-cpp-python source distribution on PyPI (pinned, sha256-checked) and are
# kept in the cache, never committed.
#
#   scripts/fetch-vocabs.sh          # fetch once; silent when they are already there
#   REFUSAL_LENS_VOCABS=DIR          # where they go (default ~/.cache/refusal-lens/llamacpp-vocabs)
set -euo pipefail

# The release scripts/bench-llamacpp.sh builds llama.cpp from.
PIN=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$PIN.tar.gz"
DEST="${REFUSAL_LENS_VOCABS:-$HOME/.cache/refusal-lens/llamacpp-vocabs}"
STAMP="$DEST/.llama-cpp-python-$PIN"
# The families tests/vocabs.rs checks; the others in the archive are not extracted.
FAMILIES=(llama-spm phi-3 llama-bpe qwen2 gpt-2 starcoder refact command-r falcon deepseek-llm)

[ -f "$STAMP" ] && exit 0
log() { echo "fetch-vocabs: $*" >&2; }
mkdir -p "$DEST"
tmp="$(mktemp -d "$DEST/.download.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "downloading llama-cpp-python $PIN's source (77 MB) for llama.cpp's vocabulary tests"
curl -fsSL --retry 3 -o "$tmp/sdist.tar.gz" "$URL"
echo "$SHA256  $tmp/sdist.tar.gz" | sha256sum -c --quiet - ||
    { log "sha256 mismatch for $URL"; exit 1; }

root="llama_cpp_python-$PIN/vendor/llama.cpp"
tar tzf "$tmp/sdist.tar.gz" >"$tmp/listing"
members=("$root/LICENSE")
for f in "${FAMILIES[@]}"; do
    for ext in "" .inp .out; do
        m="$root/models/ggml-vocab-$f.gguf$ext"
        grep -qxF "$m" "$tmp/listing" && members+=("$m")
    done
done
tar xzf "$tmp/sdist.tar.gz" -C "$tmp" "${members[@]}"
mv -f "$tmp/$root/models/"ggml-vocab-* "$DEST/"
mv -f "$tmp/$root/LICENSE" "$DEST/LICENSE-llama.cpp"
touch "$STAMP"
log "vocabularies in $DEST"
