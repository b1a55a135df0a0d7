"""`stoker submit embed` and `stoker run embed`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from stoker.cli.app import DeviceOpt, OutOpt, PriorityOpt, run_app, settings_of, submit_app
from stoker.cli.capabilities import run_job, submit_job
from stoker.errors import InvalidInput

TextOpt = Annotated[str | None, typer.Option("--text", help="One text to embed.")]
FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        help='Texts to embed: one per line, a .jsonl file of {"id", "text"} lines, a '
        "document (.html, .pdf: a text per page, .epub: per chapter), or a folder of "
        "documents (.txt, .md too; id: the file's path in it).",
    ),
]
ModelOpt = Annotated[
    str | None, typer.Option(help="Embedding model name (`stoker models`) or model folder.")
]
FormatOpt = Annotated[str, typer.Option("--format", help="jsonl, parquet or npy.")]
NormalizeOpt = Annotated[bool, typer.Option("--normalize", help="Unit-length vectors.")]
PromptOpt = Annotated[
    str | None,
    typer.Option(help="Text before every text, as retrieval models ask (E5: 'query: ')."),
]

SplitOpt = Annotated[
    bool,
    typer.Option(
        "--split",
        help="Embed a text longer than the model's window as passages that fit it, a row "
        "each, with its passage number and character span (jsonl or parquet).",
    ),
]
OverlapOpt = Annotated[
    int, typer.Option(help="With --split: tokens shared by consecutive passages.")
]


def read_texts(path: Path, limit_bytes: int) -> tuple[list[str], list[str]]:
    """Texts and their ids from ``path``; InvalidInput naming the line at fault.

    A text file's ids are line numbers (from 1), as a JSONL line without an ``id``
    gets: blank lines are skipped, so an output row still maps back to its line.
    Texts over ``limit_bytes`` are refused here, where the line number is known
    (the job's own check can only count texts).
    """
    from stoker.jobs.documents import RICH_SUFFIXES
    from stoker.jobs.text import decode_text

    # A folder, or a PDF, HTML page or EPUB: documents. Any other file: a text a line.
    if path.is_dir() or (path.suffix.lower() in RICH_SUFFIXES and path.is_file()):
        return _read_documents(path, limit_bytes)
    if not path.is_file():
        raise InvalidInput(f"--file {path} does not exist or is not a file or a folder.")
    lines = decode_text(path.read_bytes(), str(path)).splitlines()
    jsonl = path.suffix.lower() == ".jsonl"
    texts, ids = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        text, id_ = _jsonl_row(line, path, number) if jsonl else (line, str(number))
        if len(text.encode("utf-8")) > limit_bytes:
            raise InvalidInput(
                f"{path} line {number}: the text is over the {limit_bytes:,}-byte limit "
                f"(max_text_bytes); split it over several lines."
            )
        texts.append(text)
        ids.append(id_)
    return _some(texts, path), ids


def _read_documents(root: Path, limit_bytes: int) -> tuple[list[str], list[str]]:
    """The texts and ids of the documents under the folder ``root``, or of the one
    document ``root`` (:func:`stoker.jobs.documents.read_documents`). A file with no
    text is skipped with a warning naming it; none with text is InvalidInput."""
    from stoker.cli.app import err
    from stoker.jobs.documents import DOCUMENT_SUFFIXES, read_documents

    found = read_documents(root, limit_bytes)
    if not found.texts and root.is_dir():
        raise InvalidInput(
            f"--file {root} has no document with text in it ({', '.join(DOCUMENT_SUFFIXES)}); "
            f"give a folder of documents, or a file of one text per line."
        )
    if not found.texts:
        raise InvalidInput(
            f"--file {root} has no text in it (a PDF of scanned pages has none: run OCR "
            f"on it first)."
        )
    if found.empty:
        shown = ", ".join(found.empty[:5]) + (", …" if len(found.empty) > 5 else "")
        err.print(
            f"warning: skipped {len(found.empty)} file(s) with no text (blank, or a PDF "
            f"of scanned pages): {shown}",
            markup=False,
        )
    return found.texts, found.ids


def _jsonl_row(line: str, path: Path, number: int) -> tuple[str, str]:
    """The text and id of one JSONL line, or InvalidInput saying what is wrong with it."""
    where, shape = f"{path} line {number}", 'write each line as {"id": "...", "text": "..."}'
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise InvalidInput(f"{where} is not JSON ({exc}); {shape}.") from exc
    if not isinstance(row, dict):
        raise InvalidInput(f"{where} is JSON but not an object ({line[:40]}); {shape}.")
    if "text" not in row:
        raise InvalidInput(f'{where} has no "text" field; {shape}.')
    text, id_ = row["text"], row.get("id", number)
    if not isinstance(text, str):
        raise InvalidInput(f'{where}: "text" must be a string, not {json.dumps(text)[:40]}.')
    if not isinstance(id_, str | int):
        raise InvalidInput(
            f'{where}: "id" must be a string or a number, not {json.dumps(id_)[:40]}.'
        )
    return text, str(id_)


def _some(texts: list[str], path: Path) -> list[str]:
    if not texts:
        raise InvalidInput(f"--file {path} has no text (only blank lines); give one text per line.")
    return texts


def _request(
    ctx: typer.Context,
    text: str | None,
    file: Path | None,
    model: str | None,
    fmt: str,
    normalize: bool,
    prompt: str | None,
    split: bool = False,
    overlap: int = 0,
) -> dict[str, Any]:
    if (text is None) == (file is None):
        raise InvalidInput("give exactly one of --text or --file.")
    if overlap and not split:
        raise InvalidInput("--overlap is the tokens passages share; give it with --split.")
    request: dict[str, Any] = {"model": model, "format": fmt, "normalize": normalize}
    if prompt is not None:
        request["prompt"] = prompt
    if split:
        request |= {"split": True, "overlap": overlap}
    if text is not None:
        return request | {"text": text}
    assert file is not None
    texts, ids = read_texts(file, settings_of(ctx).max_text_bytes)
    return request | {"texts": texts, "ids": ids}


@submit_app.command("embed")
def submit_embed(
    ctx: typer.Context,
    text: TextOpt = None,
    file: FileOpt = None,
    model: ModelOpt = None,
    fmt: FormatOpt = "jsonl",
    normalize: NormalizeOpt = False,
    prompt: PromptOpt = None,
    split: SplitOpt = False,
    overlap: OverlapOpt = 0,
    priority: PriorityOpt = "normal",
) -> None:
    """Queue texts to be embedded as vectors."""
    request = _request(ctx, text, file, model, fmt, normalize, prompt, split, overlap)
    submit_job(ctx, "embed", request, priority)


@run_app.command("embed")
def run_embed(
    ctx: typer.Context,
    text: TextOpt = None,
    file: FileOpt = None,
    model: ModelOpt = None,
    fmt: FormatOpt = "jsonl",
    normalize: NormalizeOpt = False,
    prompt: PromptOpt = None,
    split: SplitOpt = False,
    overlap: OverlapOpt = 0,
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Embed texts on this machine and write the vectors to --out."""
    request = _request(ctx, text, file, model, fmt, normalize, prompt, split, overlap)
    run_job(ctx, "embed", request, out, device)
