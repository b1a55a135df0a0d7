"""`stoker run embed` / `stoker get` on the embedded default, with the real MiniLM."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from stoker.client import Stoker
from stoker.config import load_settings
from tests.documents import write_pdf
from tests.integration.test_cli import stoker
from tests.texts import story

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


def test_run_embed_warns_of_a_text_longer_than_the_model_reads(
    data_dir: Path, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    # Given a file of three texts, the second ~600 words: past MiniLM's 256 tokens
    texts = tmp_path / "texts.txt"
    texts.write_text(f"Where is the lighthouse?\n{story(600)}\nThe keeper lit the lamp.\n")
    out = tmp_path / "out"

    # When `stoker run embed` embeds them as parquet
    ran = stoker(
        "run", "embed", "--file", str(texts), "--format", "parquet", "--out", str(out),
        data_dir=data_dir,
    )  # fmt: skip

    # Then the job succeeds with every vector, the long text's row marked, and stderr
    # says which text was cut, and what to do
    assert ran.returncode == 0, ran.stderr
    table = pq.read_table(io.BytesIO((out / "embeddings.parquet").read_bytes()))
    assert table.column("id").to_pylist() == ["1", "2", "3"]  # line numbers
    assert table.column("truncated").to_pylist() == [False, True, False]
    assert table.column("tokens").to_pylist()[1] == 256
    warning = (
        "warning: embeddings.parquet: 1 of 3 texts were longer than the model's window of "
        "256 tokens and were embedded from their first 256 tokens only (ids: 2); embed with "
        "split (--split) for a row per passage that fits."
    )
    assert warning in ran.stderr.replace("\n", " ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"][0]["meta"]["truncated_ids"] == ["2"]

    # And `stoker get` of the same job says it again; a job of short texts says nothing
    with Stoker(load_settings(data_dir=data_dir)) as client:
        (job,) = client.jobs()
    got = stoker("get", job.id, "--out", str(tmp_path / "again"), data_dir=data_dir)
    assert got.returncode == 0, got.stderr
    assert warning in got.stderr.replace("\n", " ")
    short = stoker(
        "run", "embed", "--text", "The keeper lit the lamp.", "--out", str(tmp_path / "short"),
        data_dir=data_dir,
    )  # fmt: skip
    assert short.returncode == 0, short.stderr
    assert "warning" not in short.stderr


def test_run_embed_split_gives_every_passage_of_a_long_text_a_row(
    data_dir: Path, tmp_path: Path
) -> None:
    # Given the same kind of file: a sentence, ~600 words, a sentence
    texts = tmp_path / "texts.txt"
    long = story(600)
    texts.write_text(f"Where is the lighthouse?\n{long}\nThe keeper lit the lamp.\n")
    out = tmp_path / "out"

    # When `stoker run embed --split --overlap 16` embeds them
    ran = stoker(
        "run", "embed", "--file", str(texts), "--split", "--overlap", "16", "--out", str(out),
        data_dir=data_dir,
    )  # fmt: skip

    # Then nothing was cut: no warning, and the long line's passages, numbered, span it
    assert ran.returncode == 0, ran.stderr
    assert "warning" not in ran.stderr
    lines = [json.loads(x) for x in (out / "embeddings.jsonl").read_text().splitlines()]
    ids = [line["id"] for line in lines]
    assert ids[0] == "1" and ids[-1] == "3" and len(ids) >= 5
    passages = [line for line in lines if line["id"] == "2"]
    assert [p["passage"] for p in passages] == list(range(len(passages)))
    assert passages[0]["start"] == 0 and passages[-1]["end"] == len(long)
    assert all(long[p["start"] - 1] == " " for p in passages[1:])  # each begins a word
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"][0]["meta"]["texts"] == 3
    assert manifest["params"]["split"] is True and manifest["params"]["overlap"] == 16

    # And what split cannot do is refused before anything is queued, saying why
    for args, message in (
        (["--split", "--format", "npy"], "give format jsonl or parquet"),
        (["--overlap", "8"], "--overlap is the tokens passages share; give it with --split"),
    ):
        refused = stoker("submit", "embed", "--file", str(texts), *args, data_dir=data_dir)
        assert refused.returncode != 0
        assert message in refused.stderr.replace("\n", " "), refused.stderr


def test_run_embed_of_a_folder_of_documents_split_into_passages(
    data_dir: Path, tmp_path: Path
) -> None:
    # Given a folder of documents: one of ~600 words, one short, a PDF of two pages
    docs = tmp_path / "docs"
    (docs / "notes").mkdir(parents=True)
    long = story(600)
    (docs / "log.md").write_text(long)
    (docs / "notes" / "tea.txt").write_text("The keeper drank his tea.")
    write_pdf(docs / "report.pdf", ["The lamp was lit at dusk.", "The ship came home."])
    out = tmp_path / "out"

    # When `stoker run embed --file FOLDER --split` embeds it as parquet
    ran = stoker(
        "run", "embed", "--file", str(docs), "--split", "--format", "parquet",
        "--out", str(out), data_dir=data_dir,
    )  # fmt: skip

    # Then each row names its document by its path in the folder (a PDF's by its
    # page too), the long one in passages that span it
    assert ran.returncode == 0, ran.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO((out / "embeddings.parquet").read_bytes()))
    ids, ends = table.column("id").to_pylist(), table.column("end").to_pylist()
    assert ids[-3:] == ["notes/tea.txt", "report.pdf#page=1", "report.pdf#page=2"]
    assert set(ids[:-3]) == {"log.md"} and len(ids) >= 6
    assert ends[-4] == len(long) and ends[-3:] == [25, 25, 19]
