"""embed's pure parts: request checks, chunk packing, the CLI's text files."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.cli.embed import read_texts
from stoker.errors import InvalidInput
from stoker.jobs import embed


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
