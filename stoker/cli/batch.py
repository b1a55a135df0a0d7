"""`stoker run batch FILE`: an OpenAI Batch input file run on this machine, its output
and error files written to --out as OpenAI writes them.

The lines are read as the HTTP API's Batches read an uploaded file (api/batch_lines.py):
``{"custom_id", "method": "POST", "url", "body"}``, every line for the same endpoint
(the first line's ``url``). A line that cannot run is a line of the error file; the
others run as one batch of jobs on an in-process worker. For a fleet, or to come back
later, upload the file to the HTTP API (`POST /v1/files`, `POST /v1/batches`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from stoker.cli.app import DeviceOpt, OutOpt, run_app, settings_of
from stoker.cli.capabilities import run_with
from stoker.errors import InvalidInput
from stoker.queues.records import JobRecord

FileArg = Annotated[
    Path, typer.Argument(help="OpenAI Batch input (JSONL: custom_id, method, url, body).")
]
OUTPUT_NAME, ERRORS_NAME = "output.jsonl", "errors.jsonl"


def numbered_lines(path: Path, limit: int) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines of ``path``; InvalidInput naming the
    file when it cannot be read or holds more than ``limit`` lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path} is not UTF-8 text (byte {exc.start}).") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}.") from None
    lines = [(n, t.strip()) for n, t in enumerate(text.splitlines(), start=1) if t.strip()]
    if len(lines) > limit:
        raise InvalidInput(
            f"{path} has {len(lines):,} requests, over the {limit:,} a batch may hold "
            f"(api.max_batch_lines); split it."
        )
    return lines


def endpoint_of(path: Path, lines: list[tuple[int, str]]) -> str:
    """The batch's endpoint: the first line's ``url``, as OpenAI's batch names one."""
    from stoker.api.openai_shapes import ADAPTERS

    for number, text in lines:
        try:
            url = json.loads(text).get("url")
        except (json.JSONDecodeError, AttributeError):
            continue  # refused as its line; the endpoint comes from a readable one
        if url in ADAPTERS:
            return str(url)
        raise InvalidInput(
            f"{path} line {number}: url {url!r} is not an endpoint stoker serves; "
            f"use one of {', '.join(sorted(ADAPTERS))}."
        )
    raise InvalidInput(f"{path} has no request line (a JSON object with a url).")


@run_app.command("batch")
def run_batch(
    ctx: typer.Context, file: FileArg, out: OutOpt = Path("."), device: DeviceOpt = "cpu"
) -> None:
    """Run an OpenAI Batch file here; its output.jsonl and errors.jsonl go to --out."""
    from stoker.api import batch_lines
    from stoker.api.openai_shapes import adapter_for

    lines = numbered_lines(file, settings_of(ctx).api.max_batch_lines)
    adapter = adapter_for(endpoint_of(file, lines))
    try:
        custom_ids, requests, options = batch_lines.read_requests(lines, adapter)
    except batch_lines.BatchFileError as exc:
        raise InvalidInput(f"{file}: {exc}") from None

    def submit(client: Any) -> JobRecord:
        return client.submit_batch(
            adapter.kind, requests, source=file.name, priority="interactive", unit="requests"
        )

    def deliver(client: Any, batch: JobRecord, out: Path) -> list[Path]:
        """Each request's line, in input order, in the output or the error file."""
        from stoker.queues.batches import children

        out.mkdir(parents=True, exist_ok=True)
        paths = {True: out / OUTPUT_NAME, False: out / ERRORS_NAME}
        with paths[True].open("w") as good, paths[False].open("w") as bad:
            for kid in children(client.store, batch.id):
                index = kid.parent_index or 0
                ok, line = batch_lines.result_line(
                    client, adapter, kid, custom_ids[index], options.get(str(index), {})
                )
                (good if ok else bad).write(json.dumps(line) + "\n")
        return [paths[True], paths[False]]

    run_with(ctx, adapter.kind, submit, out, device, deliver)
