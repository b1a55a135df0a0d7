"""The `stoker` command's shared parts: the typer apps, settings, output, errors.

Every failure a user can cause ends as one line, `error: ...`, and a non-zero exit
(2 for bad input or configuration, 1 for a job that failed or an unreachable service).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stoker.config import Priority, Settings, load_settings
from stoker.errors import InvalidInput, PermanentError, StokerError

app = typer.Typer(
    help="stoker: batch jobs for local AI inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
submit_app = typer.Typer(help="Queue a job and print its id.", no_args_is_help=True)
run_app = typer.Typer(
    help="Submit, run on an in-process worker, wait, download: one machine.", no_args_is_help=True
)
app.add_typer(submit_app, name="submit")
app.add_typer(run_app, name="run")

#: Columns for tables when the output is not a terminal (a file, a pipe into grep):
#: rich's own 80 folds model paths letter by letter across lines.
PIPED_WIDTH = 200


def _console(stderr: bool = False) -> Console:
    """A console whose lines rich never breaks (soft wrap: a terminal wraps them, and
    a URL or path stays one string to copy or grep); piped, tables get PIPED_WIDTH."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, soft_wrap=True, width=PIPED_WIDTH if piped else None)


console = _console()
err = _console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]
PriorityOpt = Annotated[str, typer.Option(help="interactive, normal or bulk.")]
JobArg = Annotated[str, typer.Argument(help="Job id, as printed by `stoker submit`.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Directory for the outputs.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda:N.")]


@app.callback()
def _main(ctx: typer.Context, config: ConfigOpt = None) -> None:
    ctx.obj = {"config": config}


#: Columns of job ids: never broken across lines, in a terminal of any width, since
#: a job id is copied from the table into the next command.
WHOLE_COLUMNS = ("id", "job")


def table_of(*headers: str) -> Table:
    """A table whose cells wrap instead of being cut with "…" (paths must be whole);
    job ids (WHOLE_COLUMNS) are not wrapped either: the other columns give way."""
    table = Table()
    for header in headers:
        table.add_column(header, overflow="fold", no_wrap=header in WHOLE_COLUMNS)
    return table


def settings_of(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    if "settings" not in root.obj:
        root.obj["settings"] = load_settings(root.obj.get("config"))
    return root.obj["settings"]


def client_of(ctx: typer.Context) -> Any:
    from stoker.client import Stoker

    return Stoker(settings_of(ctx))


def parse_priority(value: str) -> Priority:
    if value not in ("interactive", "normal", "bulk"):
        raise InvalidInput(f"--priority must be interactive, normal or bulk, not {value!r}.")
    return value  # type: ignore[return-value]


def main() -> None:
    """Console entry point: run the app, turning stoker errors into one line."""
    try:
        app()
    except StokerError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2 if isinstance(exc, PermanentError) else 1)
    except TimeoutError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
