"""llama.cpp's token ids for texts, on a vocabulary-only GGUF (llama-cpp-python, vocab_only).

    llamacpp_tokenize.py VOCAB.gguf OUT.json TEXTS_FILE...

Each TEXTS_FILE is a llama.cpp `.inp` file (texts separated by `__ggml_vocab_test__` lines) or a
JSON list of prompts (`instruction` fields). Every instruction is also tokenized inside a chat
turn of the vocabulary's family, so that special tokens in text are covered. Writes
[{"text": ..., "ids": [...]}] with ids as llama.cpp gives them (no BOS added, special tokens
parsed), for tests/vocabs.rs to compare with ours.
"""

import json
import sys

import llama_cpp

SEPARATOR = "\n__ggml_vocab_test__\n"

# A user turn of each family's chat format, with {} for the instruction.
CHAT_TURNS = {
    "llama-spm": "<s>[INST] {} [/INST]",
    "llama-bpe": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen2": "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
}
# No Phi-3 chat turns: llama.cpp strips the whitespace after Phi-3's special tokens, a rule it
# keys on the model's name, for an architecture (phi3) we do not run; its plain texts are kept.


def texts_of(path):
    with open(path, encoding="utf-8") as f:
        if path.endswith(".inp"):
            return f.read().split(SEPARATOR)[:-1]
        return [p["instruction"] for p in json.load(f)]


def main():
    vocab, out, *sources = sys.argv[1:]
    family = vocab.rsplit("ggml-vocab-", 1)[-1].removesuffix(".gguf")
    model = llama_cpp.Llama(model_path=vocab, vocab_only=True, verbose=False)
    texts = []
    for source in sources:
        plain = texts_of(source)
        texts += plain
        if family in CHAT_TURNS and not source.endswith(".inp"):
            texts += [CHAT_TURNS[family].format(t) for t in plain]
    rows = [
        {"text": t, "ids": model.tokenize(t.encode("utf-8"), add_bos=False, special=True)}
        for t in texts
    ]
    with open(out, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False)
    print(f"{family}: {len(rows)} texts tokenized by llama.cpp", file=sys.stderr)


if __name__ == "__main__":
    main()
