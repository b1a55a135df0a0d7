"""Tiny GGUF files for the generate tests: a random llama-architecture model that
llama.cpp loads in milliseconds, and broken files (not GGUF, truncated).

The model has random weights, so its text is noise, but it is a real model: llama.cpp
tokenizes with its SentencePiece-style vocabulary (every printable ASCII character,
a few words and byte fallbacks), evaluates it, samples, and obeys grammars, so
JSON-schema constraints still yield valid JSON.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EMBED = 64
LAYERS = 2
HEADS = 4
FF = 128
CONTEXT = 4096  # the model's trained context; jobs pick n_ctx up to this

# A Jinja template in the shape Hugging Face models ship (used when a test asks for a
# model "with a chat template"): llama.cpp's Python bindings render it themselves.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_WORDS = ["the", "a", "once", "upon", "time", "story", "true", "false", "null", "name"]


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types): control tokens, byte fallbacks, characters, words."""
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [TokenType.BYTE] * 256
    pieces = ["▁", *[chr(c) for c in range(33, 127)], *[f"▁{w}" for w in _WORDS]]
    tokens += pieces
    types += [TokenType.NORMAL] * len(pieces)
    # SentencePiece merges toward higher scores: prefer whole words over characters.
    scores = [0.0] * (3 + 256) + [-float(len(pieces) - len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


def write_tiny_llama(path: Path, *, chat_template: str | None = None, seed: int = 0) -> Path:
    """Write a random 2-layer llama model (≈0.5 MB, float32) to ``path``; returns it."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(EMBED // HEADS)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    vocab = len(tokens)
    tensor("token_embd.weight", vocab, EMBED)
    writer.add_tensor("output_norm.weight", np.ones(EMBED, dtype=np.float32))
    tensor("output.weight", vocab, EMBED)
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(EMBED, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(EMBED, dtype=np.float32))
        for part in ("q", "k", "v", "output"):
            tensor(f"blk.{i}.attn_{part}.weight", EMBED, EMBED)
        tensor(f"blk.{i}.ffn_gate.weight", FF, EMBED)
        tensor(f"blk.{i}.ffn_up.weight", FF, EMBED)
        tensor(f"blk.{i}.ffn_down.weight", EMBED, FF)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_not_gguf(path: Path) -> Path:
    """A file with a .gguf name that is not GGUF (text)."""
    path.write_text("this is not a model, just a text file with a .gguf name\n" * 20)
    return path


def write_truncated(source: Path, path: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` fraction of a real GGUF file: right magic, missing tensors."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
