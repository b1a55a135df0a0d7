"""`stoker submit|run batch FILE`: an OpenAI Batch input file as one batch of jobs,
without the HTTP API; `stoker get BATCH` (and `run`, once it is done) writes its
output.jsonl and errors.jsonl as OpenAI writes them.

The lines are read as the HTTP API's Batches read an uploaded file
(api/batch_lines.py): ``{"custom_id", "method": "POST", "url", "body"}``, every line
for the same endpoint (the first line's ``url``). A line that cannot run is a line of
the error file; the others run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stoker.cli.app import (
    DeviceOpt,
    OutOpt,
    PriorityOpt,
    parse_priority,
    run_app,
    settings_of,
    submit_app,
)
from stoker.cli.capabilities import run_with, submit_with
from stoker.queues.records import JobRecord

FileArg = Annotated[
    Path, typer.Argument(help="OpenAI Batch input (JSONL: custom_id, method, url, body).")
]


@submit_app.command("batch")
def submit_batch(ctx: typer.Context, file: FileArg, priority: PriorityOpt = "bulk") -> None:
    """Queue an OpenAI Batch file; `stoker get` writes its output.jsonl and errors.jsonl."""
    value = parse_priority(priority)
    submit_with(ctx, lambda client: client.submit_openai_batch(file, priority=value))


@run_app.command("batch")
def run_batch(
    ctx: typer.Context, file: FileArg, out: OutOpt = Path("."), device: DeviceOpt = "cpu"
) -> None:
    """Run an OpenAI Batch file here; its output.jsonl and errors.jsonl go to --out."""
    from stoker.api.batch_lines import read_file

    # Read before the in-process worker starts: it serves only the file's capability.
    batch_file = read_file(file, settings_of(ctx).api.max_batch_lines)

    def submit(client: Any) -> JobRecord:
        return client.submit_openai_batch(batch_file, priority="interactive")

    run_with(ctx, batch_file.adapter.kind, submit, out, device)
