"""Following jobs: status, wait, get, cancel, jobs; and removing them: delete, prune."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from stoker.cli.app import (
    JobArg,
    OutOpt,
    app,
    client_of,
    console,
    err,
    table_of,
)
from stoker.errors import InvalidInput
from stoker.jobs.base import ERRORS_NAME
from stoker.queues.batches import BATCH_KIND, batch_unit
from stoker.queues.records import TERMINAL_STATES, JobFilter, JobRecord, JobState

if TYPE_CHECKING:  # the client is imported when a command runs (startup time)
    from stoker.client import Retried, Swept
    from stoker.workers.coverage import QueueCover

# --- following jobs -----------------------------------------------------------------------


def follow(
    client: Any, job_id: str, timeout_s: float | None = None, *, hint_queued: bool = True
) -> JobRecord:
    """Wait for the job with a progress bar: chunks (or files of a batch), audio, ETA.

    ``hint_queued``: a job still queued after QUEUED_HINT_AFTER_S that no live worker
    can take gets a warning saying why, once."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    audio = _audio_hours(client, client.status(job_id))
    with Progress(*columns, console=err, transient=False) as bar:
        task = bar.add_task(job_id, total=None, counts="")

        queued_since, hinted = time.monotonic(), not hint_queued

        def update(rec: JobRecord) -> None:
            nonlocal hinted
            if not hinted and time.monotonic() - queued_since >= QUEUED_HINT_AFTER_S:
                # Once: a job nobody can take otherwise waits here without a word.
                hinted = True
                waits = waiting_hint(client, rec)
                if waits is not None and not waits.served:
                    bar.console.print(
                        f"[yellow]warning:[/] {rec.id} is still queued. "
                        f"{waits.describe(client.settings)}",
                        highlight=False,
                    )
            p = rec.progress
            book = _book_progress(rec, client.done_chunks(rec.id)) if _is_book(rec) else ""
            bar.update(
                task,
                description=f"{rec.kind} {rec.id} [{p.stage}]",
                completed=p.done,
                total=p.total or None,
                counts=f"{p.done}/{p.total} {units_of(rec)}{audio}{book}",
            )

        return client.wait(job_id, timeout_s=timeout_s, on_update=update)


def waiting_hint(client: Any, record: JobRecord) -> QueueCover | None:
    """:meth:`Stoker.waiting`, or None if the broker cannot say: a hint, never a
    reason for `stoker status` to fail."""
    try:
        return cast("QueueCover | None", client.waiting(record))
    except Exception:
        return None


#: `stoker wait` says why a job is still queued once it has been for this long.
QUEUED_HINT_AFTER_S = 5.0


def _audio_hours(client: Any, record: JobRecord) -> str:
    """ " · 3.2 h audio" for work on recordings, else ""; read once, not every poll."""
    if record.kind == BATCH_KIND and record.params.get("kind") != "transcribe":
        return ""  # a batch of prompts or texts: no audio, and no 50,000 records to read
    kids = client.children(record.id) if record.kind == BATCH_KIND else [record]
    seconds = sum(float(k.params.get("duration_s") or 0) for k in kids)
    return f" · {seconds / 3600:.2f} h audio" if seconds else ""


#: Words a minute of narration holds at length scale 1 (Piper voices: ~150-160).
WORDS_PER_MINUTE = 155


def _is_book(record: JobRecord) -> bool:
    return bool(record.params.get("chapters")) and not record.state.terminal


def _book_progress(record: JobRecord, done: set[int]) -> str:
    """ " · chapter 3/20 · ≈ 14/95 min audio": chapters finished, narration estimated
    from the words of the finished chunks' chapters (exact lengths come at assembly)."""
    chapters = record.params["chapters"]
    finished, words_done = 0, 0.0
    for chapter in chapters:
        indexes = range(chapter["first"], chapter["first"] + chapter["count"])
        n_done = sum(i in done for i in indexes)
        finished += n_done == chapter["count"]
        words_done += chapter.get("words", 0) * n_done / max(chapter["count"], 1)
    words = sum(c.get("words", 0) for c in chapters)
    scale = float(record.params.get("length_scale") or 1.0) / WORDS_PER_MINUTE
    text = f" · chapter {min(finished + 1, len(chapters))}/{len(chapters)}"
    return text + (f" · ≈ {words_done * scale:.0f}/{words * scale:.0f} min audio" if words else "")


def _kind(record: JobRecord) -> str:
    """The job's kind, and for a batch its inputs' too: "batch (image)"."""
    inner = record.params.get("kind") if record.kind == BATCH_KIND else None
    return f"{record.kind} ({inner})" if inner else record.kind


def units_of(record: JobRecord) -> str:
    """What a job's progress counts: chunks, or a batch's files or lines."""
    return batch_unit(record) if record.kind == BATCH_KIND else "chunks"


def exit_unless_succeeded(client: Any, record: JobRecord) -> None:
    """Exit 1 unless the job succeeded for at least one item. A batch succeeds even if
    some files failed, and a prompt file's job even if some lines failed: that is said
    on stderr, with the first error; when every one failed, it is an error (exit 1),
    so that a script does not go on as if something had come out."""
    if record.state is JobState.SUCCEEDED:
        failed = failed_items(client, record)
        if failed is None:
            return
        if not failed.everything:
            err.print(f"warning: {failed}", markup=False, soft_wrap=True)
            return
        err.print(f"error: job {record.id}: {failed}", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    reason = record.error.message if record.error else record.state.value
    err.print(
        f"error: job {record.id} {record.state.value}: {reason}", markup=False, soft_wrap=True
    )
    raise typer.Exit(1)


@dataclass(frozen=True)
class FailedItems:
    """The failed files of a batch or lines of a prompt file, of a job that succeeded."""

    count: int
    total: int | None  # None when the job does not say how many it had
    first: str  # the first failure's message
    unit: str  # "files" or "lines"

    @property
    def everything(self) -> bool:
        return self.total is not None and self.count >= self.total

    def __str__(self) -> str:
        one = self.unit.removesuffix("s")
        if self.everything:
            return (
                f"all {self.count} {self.unit} failed (the first: {self.first}); each "
                f"{one}'s error is in {ERRORS_NAME}"
            )
        count = f"{self.count} of {self.total}" if self.total else str(self.count)
        return (
            f"{count} {self.unit} failed (the first: {self.first}); each failed {one}'s "
            f"error is in {ERRORS_NAME}, and the job succeeded for the others"
        )


def failed_items(client: Any, record: JobRecord) -> FailedItems | None:
    """What failed of a job that succeeded with failed items, else None."""
    errors = client.item_errors(record) if record.state is JobState.SUCCEEDED else []
    if not errors:
        return None
    first = errors[0].get("error", {}).get("message", "")
    if record.kind == BATCH_KIND:
        return FailedItems(len(errors), record.progress.total or None, first, batch_unit(record))
    return FailedItems(len(errors), record.params.get("lines"), first, "lines")


@app.command()
def status(
    ctx: typer.Context,
    job_id: JobArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
    files: Annotated[
        bool, typer.Option("--files", help="A batch: list every file, not only those to see.")
    ] = False,
) -> None:
    """Show a job's state, progress, outputs and error."""
    with client_of(ctx) as client:
        record = client.status(job_id)
        if as_json:
            console.print_json(record.model_dump_json())
            return
        _print_record(record, client, every_file=files)


#: A batch with more files than this lists only those not succeeded, this many at most.
LISTED_FILES = 20
#: The files listed when not all are, in this order: what needs a look first.
_LOOK_AT = (JobState.FAILED, JobState.CANCELLED, JobState.RUNNING, JobState.QUEUED)


def _print_children(client: Any, record: JobRecord, every_file: bool) -> None:
    # Counted from the store's indexes, and only the listed files' records are read:
    # a batch of 50,000 files shows in the time a small one does.
    by_state = client.child_counts(record.id)
    total = sum(by_state.values())
    states = ", ".join(f"{by_state[s]} {s.value}" for s in JobState if by_state.get(s))
    console.print(f"  {total} {batch_unit(record)}: {states or 'none yet'}")
    if every_file or total <= LISTED_FILES:
        shown = client.children(record.id)
    else:
        shown = []
        for state in _LOOK_AT:
            room = LISTED_FILES - len(shown)
            if room > 0 and by_state.get(state):
                found = client.jobs(JobFilter(parent=record.id, state=state, limit=room))
                shown += sorted(found, key=lambda k: k.parent_index or 0)
    if shown:
        table = table_of(batch_unit(record).removesuffix("s"), "job", "state", "progress", "error")
        for kid in shown:
            table.add_row(
                str(kid.params.get("name", "")),
                kid.id,
                kid.state.value,
                f"{kid.progress.done}/{kid.progress.total}",
                kid.error.message if kid.error else "",
            )
        console.print(table)
    if len(shown) < total:
        console.print(
            f"  {total - len(shown)} more {batch_unit(record)} not listed; "
            f"`stoker status {record.id} --files` lists every one.",
            highlight=False,
        )


def _print_chapters(record: JobRecord, done: set[int]) -> None:
    """Per-chapter progress of a book: chunks done of each chapter's chunks."""
    table = table_of("#", "chapter", "chunks done")
    for n, chapter in enumerate(record.params["chapters"], start=1):
        indexes = range(chapter["first"], chapter["first"] + chapter["count"])
        table.add_row(
            str(n), chapter["title"], f"{sum(i in done for i in indexes)}/{chapter['count']}"
        )
    console.print(table)


def _print_record(record: JobRecord, client: Any, *, every_file: bool = False) -> None:
    p = record.progress
    # Every delivery of a chunk task that ran counts: more runs than chunks means
    # some were run again (a retry, a worker lost mid-chunk). A batch runs none itself.
    runs = f" · chunk runs {record.attempts}" if record.attempts else ""
    console.print(
        f"[bold]{record.id}[/] {_kind(record)} · [bold]{record.state.value}[/] · "
        f"{p.done}/{p.total} {units_of(record)} · stage {p.stage}{runs}"
    )
    if (waits := waiting_hint(client, record)) is not None:
        style = "" if waits.served else "[yellow]"
        console.print(f"  {style}waiting: {waits.describe(client.settings)}", highlight=False)
    if record.kind == BATCH_KIND:
        _print_children(client, record, every_file)
    elif record.params.get("chapters"):
        _print_chapters(record, client.done_chunks(record.id))
    if record.error:
        console.print(f"[red]error ({record.error.kind}):[/] {record.error.message}")
    failed = failed_items(client, record)
    if failed is not None:
        label = "[red]error:[/]" if failed.everything else "[yellow]warning:[/]"
        console.print(f"{label} {failed}", highlight=False)
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
        exit_unless_succeeded(client, follow(client, job_id, timeout))


@app.command()
def get(
    ctx: typer.Context,
    job_id: JobArg,
    out: OutOpt = Path("."),
    partial: Annotated[bool, typer.Option(help="Include a cancelled job's chunks.")] = False,
) -> None:
    """Download a job's outputs into --out."""
    with client_of(ctx) as client:
        paths = client.download(job_id, out, include_partial=partial)
    for path in paths:
        console.print(str(path))
    warn_of_outputs(paths, out)


#: Output warnings printed at most; the rest are counted.
SHOWN_WARNINGS = 5


def warn_of_outputs(paths: list[Path], out: Path) -> None:
    """Print on stderr what the downloaded manifests warn of: an output whose meta has
    a ``warning`` (embed's texts longer than the model's window). A job that succeeded
    with something the user should know is not silent about it."""
    from stoker.storage.manifest import MANIFEST_NAME

    warnings = []
    for path in paths:
        if path.name != MANIFEST_NAME:
            continue
        try:
            outputs = json.loads(path.read_bytes()).get("outputs", [])
        except (OSError, ValueError):  # not ours to judge here; `stoker status` shows it
            continue
        # A batch's files each have a folder under ``out``: named, so one can tell them apart.
        folder = "" if path.parent == out else f"{_under(path.parent, out)}/"
        warnings += [
            f"{folder}{o['name']}: {o['meta']['warning']}"
            for o in outputs
            if o.get("meta", {}).get("warning")
        ]
    for warning in warnings[:SHOWN_WARNINGS]:
        err.print(f"warning: {warning}", markup=False, soft_wrap=True)
    if len(warnings) > SHOWN_WARNINGS:
        err.print(
            f"warning: {len(warnings) - SHOWN_WARNINGS} more outputs have warnings; "
            f"see the meta of each in its manifest.json.",
            markup=False,
            soft_wrap=True,
        )


def _under(folder: Path, out: Path) -> str:
    """``folder``'s path under ``out``; its name if it is not under it."""
    return folder.relative_to(out).as_posix() if folder.is_relative_to(out) else folder.name


@app.command()
def cancel(ctx: typer.Context, job_id: JobArg) -> None:
    """Cancel a queued or running job (finished chunks are kept as partial outputs)."""
    with client_of(ctx) as client:
        record = client.cancel(job_id)
    console.print(f"{record.id} {record.state.value}")


@app.command()
def retry(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(help="Job or batch id.")] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Every failed job (and batch file) instead.")
    ] = False,
    kind: Annotated[str | None, typer.Option(help="With --failed: of this kind only.")] = None,
    and_wait: Annotated[bool, typer.Option("--wait", help="Then wait for it.")] = False,
) -> None:
    """Queue a failed or cancelled job again, under its id, once the cause is fixed.

    Its finished chunks are not run again; a batch retries its failed and cancelled
    files."""
    if (job_id is None) == (not failed) or (failed and and_wait):
        raise InvalidInput(
            "give a job id (`stoker retry JOB_ID [--wait]`) or --failed "
            "(`stoker retry --failed [--kind KIND]`), not both."
        )
    with client_of(ctx) as client:
        if job_id is None:
            every = client.retry_failed(kind=kind)
            for retried in every:
                _print_retried(retried)
            jobs = sum(len(r.jobs) for r in every)
            console.print(f"{jobs} failed job{'s' if jobs != 1 else ''} queued again")
            return
        retried = client.retry(job_id)
        _print_retried(retried)
        if and_wait:
            exit_unless_succeeded(client, follow(client, retried.record.id))
            return
        # As `stoker submit` does: say so if no live worker takes it.
        waits = waiting_hint(client, client.status(retried.jobs[0]))
        if waits is not None and not waits.served:
            err.print(
                f"[yellow]warning:[/] {retried.jobs[0]} is queued, but "
                f"{waits.describe(client.settings)}",
                highlight=False,
            )


def _print_retried(retried: Retried) -> None:
    record, n = retried.record, len(retried.jobs)
    chunks = f"{retried.chunks} chunk{'s' if retried.chunks != 1 else ''}"
    if record.kind == BATCH_KIND:
        unit = batch_unit(record)
        what = f"{n} {unit if n != 1 else unit.removesuffix('s')} queued again ({chunks})"
    else:
        what = f"{chunks} of {record.progress.total} queued again"
    # Not its state: a worker may already have started it by the time it is read.
    if n:  # none: only inputs that could not be retried, named below
        console.print(f"{record.id}: {what}")
    for kid, why in retried.not_retried:
        err.print(f"[yellow]not retried:[/] {kid.params.get('name') or kid.id} {why}")


@app.command()
def jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    batch: Annotated[
        str | None, typer.Option("--batch", help="Only the jobs of this batch (one per file).")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Also the jobs of batches (one per file).")
    ] = False,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
) -> None:
    """List recent jobs, newest first. A batch is one row; --batch ID lists its files."""
    if batch is not None and every:
        raise InvalidInput("give --batch or --all, not both.")
    try:
        flt = JobFilter(
            state=JobState(state) if state else None,
            kind=kind,
            parent=batch,
            top_level=batch is None and not every,
            limit=limit,
        )
    except ValueError as exc:
        raise InvalidInput(
            f"--state must be one of {', '.join(s.value for s in JobState)}."
        ) from exc
    with client_of(ctx) as client:
        if batch is not None:
            client.status(batch)  # an unknown batch is an error, not an empty list
        table = table_of("id", "kind", "state", "progress", "stage", "created")
        for r in client.jobs(flt):
            table.add_row(
                r.id,
                _kind(r),
                r.state.value,
                f"{r.progress.done}/{r.progress.total} {units_of(r)}",
                r.progress.stage,
                _when(r.created_at),
            )
    console.print(table)


# --- removing jobs --------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit s, m, h, d or w ("30d")."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidInput(
            f"--older-than {text!r} is not a duration; give a number and a unit, "
            f"such as 45m, 12h, 30d or 2w."
        )
    return float(match[1]) * _UNIT_S[match[2]]


@app.command()
def delete(
    ctx: typer.Context,
    job_ids: Annotated[list[str], typer.Argument(help="Ended jobs (or batches) to delete.")],
) -> None:
    """Delete ended jobs: their records and the outputs stored for them.

    A batch goes with its jobs; a queued or running job must be cancelled first."""
    with client_of(ctx) as client:
        for job_id in job_ids:
            deleted = client.delete(job_id)
            more = f" and the {len(deleted) - 1} jobs of its batch" if len(deleted) > 1 else ""
            console.print(f"{job_id} deleted{more}")


@app.command()
def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option(help="Delete ended jobs created longer ago than this (30d, 12h).")
    ],
    state: Annotated[
        str | None, typer.Option(help="Only jobs in this state (succeeded, failed, cancelled).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="List what would go; delete nothing.")] = False,
    chunks: Annotated[
        bool,
        typer.Option(
            help="Also delete cached chunk objects written before the cutoff (only while "
            "no job is queued or running)."
        ),
    ] = False,
    inputs: Annotated[
        bool,
        typer.Option(
            help="Also delete uploaded inputs written before the cutoff that no remaining "
            "job lists (only while no job is queued or running)."
        ),
    ] = False,
) -> None:
    """Delete the ended jobs older than --older-than, with their outputs."""
    seconds = parse_duration(older_than)
    try:
        states = [JobState(state)] if state else sorted(TERMINAL_STATES)
    except ValueError as exc:
        raise InvalidInput(f"--state must be one of {', '.join(sorted(TERMINAL_STATES))}.") from exc
    with client_of(ctx) as client:
        pruned = client.prune(seconds, states=states, dry_run=dry_run)
        # The jobs prune lists count as gone, so a dry run shows what pruning would free.
        without = {r.id for r in pruned.jobs}
        swept = client.sweep_chunks(seconds, dry_run=dry_run, without=without) if chunks else None
        freed = client.sweep_inputs(seconds, dry_run=dry_run, without=without) if inputs else None
    if dry_run:
        table = table_of("id", "kind", "state", "created")
        for r in pruned.jobs:
            table.add_row(r.id, r.kind, r.state.value, _when(r.created_at))
        console.print(table)
        console.print(f"{_jobs(len(pruned.jobs))} would be deleted (dry run: nothing was).")
    else:
        for record, why in pruned.skipped:
            err.print(f"[yellow]{record.id} kept:[/] {why}")
        kids = pruned.deleted - len(pruned.jobs)
        console.print(
            f"{_jobs(len(pruned.jobs))} deleted"
            + (f", with the {_jobs(kids)} of their batches" if kids else "")
        )
    if swept is not None:
        _print_swept(swept, dry_run, "chunk objects", "the chunk cache", "as outputs")
    if freed is not None:
        _print_swept(freed, dry_run, "uploaded inputs", "inputs/", "as inputs")


def _print_swept(swept: Swept, dry_run: bool, what: str, where: str, listed: str) -> None:
    done = "would be deleted" if dry_run else "deleted"
    console.print(f"{swept.objects} {what} ({swept.bytes / 1e6:.1f} MB) {done} from {where}")
    if swept.kept:
        console.print(f"{swept.kept} old {what} kept: jobs list them {listed}")
    if swept.stopped:
        err.print(f"[yellow]sweep of {where} stopped:[/] {swept.stopped}")


def _when(created_at: float) -> str:
    return datetime.fromtimestamp(created_at).isoformat(sep=" ", timespec="seconds")


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"
