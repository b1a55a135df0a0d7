"""The `stoker` command. Thin: parse options, call stoker.client / workers, render.

Every failure a user can cause ends as one line, `error: ...`, and a non-zero exit
(2 for bad input or configuration, 1 for a job that failed or an unreachable service).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from stoker.config import Priority, Settings, load_settings
from stoker.errors import InvalidInput, PermanentError, StokerError
from stoker.queues.records import JobFilter, JobRecord, JobState

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

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]
PriorityOpt = Annotated[str, typer.Option(help="interactive, normal or bulk.")]
JobArg = Annotated[str, typer.Argument(help="Job id, as printed by `stoker submit`.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.callback()
def _main(ctx: typer.Context, config: ConfigOpt = None) -> None:
    ctx.obj = {"config": config}


def table_of(*headers: str) -> Table:
    """A table whose cells wrap instead of being cut with "…" (paths must be whole)."""
    table = Table()
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def settings_of(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    if "settings" not in root.obj:
        root.obj["settings"] = load_settings(root.obj.get("config"))
    return root.obj["settings"]


def client_of(ctx: typer.Context) -> Any:
    from stoker.client import Stoker

    return Stoker(settings_of(ctx))


def _priority(value: str) -> Priority:
    if value not in ("interactive", "normal", "bulk"):
        raise InvalidInput(f"--priority must be interactive, normal or bulk, not {value!r}.")
    return value  # type: ignore[return-value]


# --- speak / echo requests --------------------------------------------------------------


def _read_text(text: str | None, file: Path | None, limit_bytes: int) -> str:
    from stoker.jobs.text import decode_text

    if (text is None) == (file is None):
        raise InvalidInput("give exactly one of --text or --file.")
    if text is not None:
        return text
    assert file is not None
    if not file.is_file():
        raise InvalidInput(f"--file {file} does not exist or is not a file.")
    size = file.stat().st_size
    if size > limit_bytes:
        raise InvalidInput(
            f"{file} is {size / 1e6:.1f} MB, over the {limit_bytes / 1e6:.1f} MB limit "
            f"(max_text_bytes); split it, or use `stoker submit audiobook` for books."
        )
    return decode_text(file.read_bytes(), str(file))


TextOpt = Annotated[str | None, typer.Option("--text", help="The text itself.")]
FileOpt = Annotated[Path | None, typer.Option("--file", help="A UTF-8 text file.")]
VoiceOpt = Annotated[str | None, typer.Option(help="Voice name (`stoker models`).")]
FormatOpt = Annotated[str, typer.Option("--format", help="wav, flac, mp3 or ogg.")]
SpeakerOpt = Annotated[str | None, typer.Option(help="Speaker id or name.")]
LengthOpt = Annotated[float, typer.Option(help="Speech length scale; >1 is slower.")]
SilenceOpt = Annotated[float, typer.Option(help="Seconds of silence between sentences.")]


def _speak_request(
    ctx: typer.Context,
    text: str | None,
    file: Path | None,
    voice: str | None,
    fmt: str,
    speaker: str | None,
    length_scale: float,
    silence: float,
) -> dict[str, Any]:
    body = _read_text(text, file, settings_of(ctx).max_text_bytes)
    return {
        "text": body,
        "voice": voice,
        "format": fmt,
        "speaker": speaker,
        "length_scale": length_scale,
        "sentence_silence_s": silence,
    }


@submit_app.command("speak")
def submit_speak(
    ctx: typer.Context,
    text: TextOpt = None,
    file: FileOpt = None,
    voice: VoiceOpt = None,
    fmt: FormatOpt = "wav",
    speaker: SpeakerOpt = None,
    length_scale: LengthOpt = 1.0,
    sentence_silence: SilenceOpt = 0.2,
    priority: PriorityOpt = "normal",
) -> None:
    """Queue text to be spoken by a Piper voice."""
    request = _speak_request(ctx, text, file, voice, fmt, speaker, length_scale, sentence_silence)
    _submit(ctx, "speak", request, priority)


@submit_app.command("echo")
def submit_echo(
    ctx: typer.Context,
    text: Annotated[str, typer.Option(help="Text to echo.")],
    priority: PriorityOpt = "normal",
) -> None:
    """Queue a no-model job that returns its text (a round-trip check)."""
    _submit(ctx, "echo", {"text": text}, priority)


def _submit(ctx: typer.Context, kind: str, request: dict[str, Any], priority: str) -> None:
    with client_of(ctx) as client:
        record = client.submit(kind, request, priority=_priority(priority))
    console.print(record.id)


OutOpt = Annotated[Path, typer.Option("--out", help="Directory for the outputs.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda:N.")]


@run_app.command("speak")
def run_speak(
    ctx: typer.Context,
    text: TextOpt = None,
    file: FileOpt = None,
    voice: VoiceOpt = None,
    fmt: FormatOpt = "wav",
    speaker: SpeakerOpt = None,
    length_scale: LengthOpt = 1.0,
    sentence_silence: SilenceOpt = 0.2,
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Speak text on this machine and write the audio to --out."""
    request = _speak_request(ctx, text, file, voice, fmt, speaker, length_scale, sentence_silence)
    _run(ctx, "speak", request, out, device)


@run_app.command("echo")
def run_echo(
    ctx: typer.Context,
    text: Annotated[str, typer.Option(help="Text to echo.")],
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Echo text through an in-process worker (a round-trip check)."""
    _run(ctx, "echo", {"text": text}, out, device)


def _run(ctx: typer.Context, kind: str, request: dict[str, Any], out: Path, device: str) -> None:
    from stoker.workers.inprocess import inprocess_worker

    settings = settings_of(ctx)
    with client_of(ctx) as client:
        record = client.submit(kind, request, priority="interactive")
        with inprocess_worker(settings, [kind], device):
            record = _follow(client, record.id)
        _exit_unless_succeeded(record)
        for path in client.download(record.id, out):
            console.print(str(path))


# --- following jobs -----------------------------------------------------------------------


def _follow(client: Any, job_id: str, timeout_s: float | None = None) -> JobRecord:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[chunks]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(job_id, total=None, chunks="")

        def update(rec: JobRecord) -> None:
            bar.update(
                task,
                description=f"{rec.kind} {rec.id} [{rec.progress.stage}]",
                completed=rec.progress.done,
                total=rec.progress.total or None,
                chunks=f"{rec.progress.done}/{rec.progress.total} chunks",
            )

        return client.wait(job_id, timeout_s=timeout_s, on_update=update)


def _exit_unless_succeeded(record: JobRecord) -> None:
    if record.state is JobState.SUCCEEDED:
        return
    reason = record.error.message if record.error else record.state.value
    err.print(
        f"error: job {record.id} {record.state.value}: {reason}", markup=False, soft_wrap=True
    )
    raise typer.Exit(1)


@app.command()
def status(
    ctx: typer.Context,
    job_id: JobArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Show a job's state, progress, outputs and error."""
    with client_of(ctx) as client:
        record = client.status(job_id)
        if as_json:
            console.print_json(record.model_dump_json())
            return
        _print_record(record, client)


def _print_record(record: JobRecord, client: Any) -> None:
    p = record.progress
    console.print(
        f"[bold]{record.id}[/] {record.kind} · [bold]{record.state.value}[/] · "
        f"{p.done}/{p.total} chunks · stage {p.stage} · attempts {record.attempts}"
    )
    if record.error:
        console.print(f"[red]error ({record.error.kind}):[/] {record.error.message}")
    for out in record.outputs:
        tag = " (partial)" if out.partial else ""
        console.print(f"  {out.name}{tag}  {out.size_bytes} bytes  {client.output_url(out.key)}")


@app.command()
def wait(
    ctx: typer.Context,
    job_id: JobArg,
    timeout: Annotated[float | None, typer.Option(help="Give up after seconds.")] = None,
) -> None:
    """Wait for a job with a progress bar; exit 1 unless it succeeded."""
    with client_of(ctx) as client:
        _exit_unless_succeeded(_follow(client, job_id, timeout))


@app.command()
def get(
    ctx: typer.Context,
    job_id: JobArg,
    out: OutOpt = Path("."),
    partial: Annotated[bool, typer.Option(help="Include a cancelled job's chunks.")] = False,
) -> None:
    """Download a job's outputs into --out."""
    with client_of(ctx) as client:
        for path in client.download(job_id, out, include_partial=partial):
            console.print(str(path))


@app.command()
def cancel(ctx: typer.Context, job_id: JobArg) -> None:
    """Cancel a queued or running job (finished chunks are kept as partial outputs)."""
    with client_of(ctx) as client:
        record = client.cancel(job_id)
    console.print(f"{record.id} {record.state.value}")


@app.command()
def jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
) -> None:
    """List recent jobs, newest first."""
    try:
        flt = JobFilter(state=JobState(state) if state else None, kind=kind, limit=limit)
    except ValueError as exc:
        raise InvalidInput(
            f"--state must be one of {', '.join(s.value for s in JobState)}."
        ) from exc
    with client_of(ctx) as client:
        table = table_of("id", "kind", "state", "progress", "stage")
        for r in client.jobs(flt):
            table.add_row(
                r.id,
                r.kind,
                r.state.value,
                f"{r.progress.done}/{r.progress.total}",
                r.progress.stage,
            )
    console.print(table)


# --- workers, models, health ------------------------------------------------------------------


@app.command()
def worker(
    ctx: typer.Context,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default: all).")
    ] = None,
    device: DeviceOpt = "cpu",
    preload: Annotated[list[str] | None, typer.Option(help="Model to load at start.")] = None,
    loglevel: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING.")] = None,
) -> None:
    """Run a worker for one device until SIGTERM (the running chunk finishes first)."""
    from stoker.workers.process import default_queues, run_worker

    settings = settings_of(ctx)
    level = (loglevel or settings.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [q.strip() for q in queues.split(",")] if queues else default_queues()
    run_worker(settings, queues=names, device=device, preload_models=preload or [], loglevel=level)


@app.command()
def models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The models and voices this machine can load, and where they come from."""
    from stoker.workers.catalog import ModelCatalog

    catalog = ModelCatalog(settings_of(ctx))
    if as_json:
        rows = [
            {
                "name": s.name,
                "backend": s.backend,
                "source": s.source,
                "path": str(s.path),
                "missing": [str(p) for p in catalog.missing_files(s)],
            }
            for s in catalog.all()
        ]
        print(json.dumps(rows, indent=2))
        return
    table = table_of("name", "backend", "source", "path", "status")
    for spec in catalog.all():
        missing = catalog.missing_files(spec)
        table.add_row(
            spec.name,
            spec.backend,
            spec.source,
            str(spec.path),
            f"[red]missing {missing[0]}[/]" if missing else "[green]ok[/]",
        )
    console.print(table)


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check the broker, the job store, storage, engines and models; say how to fix each."""
    from stoker.doctor import run_checks

    checks = run_checks(settings_of(ctx))
    table = table_of("check", "", "detail", "fix")
    for c in checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", c.detail, c.fix)
    console.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


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


if __name__ == "__main__":
    main()
