"""`stoker submit KIND` and `stoker run KIND`: one command per capability."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from stoker.cli.app import (
    DeviceOpt,
    OutOpt,
    PriorityOpt,
    client_of,
    console,
    err,
    parse_priority,
    run_app,
    settings_of,
    submit_app,
)
from stoker.cli.jobs import (
    exit_unless_succeeded,
    follow,
    units_of,
    waiting_hint,
    warn_of_outputs,
)
from stoker.config import Priority
from stoker.errors import InvalidInput
from stoker.queues.records import JobRecord, JobState

# --- speak / echo requests --------------------------------------------------------------


def read_text_option(text: str | None, file: Path | None, limit_bytes: int) -> str:
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
LinesOpt = Annotated[
    Path | None,
    typer.Option(
        "--lines",
        help="Each line of a file as its own audio file, as one batch: plain text, or JSONL "
        '{"text", "name"?, "voice"?, ...}. The other options are every line\'s defaults.',
    ),
]
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
    body = read_text_option(text, file, settings_of(ctx).max_text_bytes)
    return {"text": body, **_speak_options(voice, fmt, speaker, length_scale, silence)}


def _speak_options(
    voice: str | None, fmt: str, speaker: str | None, length_scale: float, silence: float
) -> dict[str, Any]:
    options = {
        "voice": voice,
        "format": fmt,
        "speaker": speaker,
        "length_scale": length_scale,
        "sentence_silence_s": silence,
    }
    return {k: v for k, v in options.items() if v is not None}


def _speak_submitter(
    ctx: typer.Context,
    text: str | None,
    file: Path | None,
    lines: Path | None,
    options: tuple[str | None, str, str | None, float, float],
    priority: Priority,
) -> Callable[[Any], JobRecord]:
    """One job for --text or --file; for --lines, a batch of one job per line, each
    named after its line (its audio: ``00001.wav``, or the line's name)."""
    if [text, file, lines].count(None) != 2:
        raise InvalidInput("give exactly one of --text, --file or --lines.")
    if lines is None:
        request = _speak_request(ctx, text, file, *options)
        return lambda client: client.submit("speak", request, priority=priority)
    defaults = _speak_options(*options)
    return lambda client: client.submit_lines("speak", lines, defaults, priority=priority)


@submit_app.command("speak")
def submit_speak(
    ctx: typer.Context,
    text: TextOpt = None,
    file: FileOpt = None,
    lines: LinesOpt = None,
    voice: VoiceOpt = None,
    fmt: FormatOpt = "wav",
    speaker: SpeakerOpt = None,
    length_scale: LengthOpt = 1.0,
    sentence_silence: SilenceOpt = 0.2,
    priority: PriorityOpt = "normal",
) -> None:
    """Queue text to be spoken by a Piper voice (--lines: each line of a file apart)."""
    options = (voice, fmt, speaker, length_scale, sentence_silence)
    submit_with(ctx, _speak_submitter(ctx, text, file, lines, options, parse_priority(priority)))


@submit_app.command("echo")
def submit_echo(
    ctx: typer.Context,
    text: Annotated[str, typer.Option(help="Text to echo.")],
    priority: PriorityOpt = "normal",
) -> None:
    """Queue a no-model job that returns its text (a round-trip check)."""
    submit_job(ctx, "echo", {"text": text}, priority)


def submit_job(ctx: typer.Context, kind: str, request: dict[str, Any], priority: str) -> None:
    value = parse_priority(priority)
    submit_with(ctx, lambda client: client.submit(kind, request, priority=value))


def submit_with(ctx: typer.Context, submit: Callable[[Any], JobRecord]) -> None:
    """Submit with ``submit(client)`` and say so (:func:`submitted`)."""
    with client_of(ctx) as client:
        submitted(client, submit(client))


def submitted(client: Any, record: JobRecord) -> None:
    """Print the new job's id (stdout: what scripts read), and on stderr a warning if
    no live worker takes its queue, so nobody waits on a job that cannot start."""
    console.print(record.id)
    waits = waiting_hint(client, record)
    if waits is not None and not waits.served:
        err.print(
            f"[yellow]warning:[/] {record.id} is queued, but {waits.describe(client.settings)}",
            highlight=False,
        )


@run_app.command("speak")
def run_speak(
    ctx: typer.Context,
    text: TextOpt = None,
    file: FileOpt = None,
    lines: LinesOpt = None,
    voice: VoiceOpt = None,
    fmt: FormatOpt = "wav",
    speaker: SpeakerOpt = None,
    length_scale: LengthOpt = 1.0,
    sentence_silence: SilenceOpt = 0.2,
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Speak text on this machine (--lines: each line of a file apart) into --out."""
    options = (voice, fmt, speaker, length_scale, sentence_silence)
    submit = _speak_submitter(ctx, text, file, lines, options, "interactive")
    run_with(ctx, "speak", submit, out, device)


@run_app.command("echo")
def run_echo(
    ctx: typer.Context,
    text: Annotated[str, typer.Option(help="Text to echo.")],
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Echo text through an in-process worker (a round-trip check)."""
    run_job(ctx, "echo", {"text": text}, out, device)


def run_job(ctx: typer.Context, kind: str, request: dict[str, Any], out: Path, device: str) -> None:
    run_with(
        ctx, kind, lambda client: client.submit(kind, request, priority="interactive"), out, device
    )


def run_with(
    ctx: typer.Context, kind: str, submit: Callable[[Any], JobRecord], out: Path, device: str
) -> None:
    """Submit with ``submit(client)``, serve ``kind`` in-process until done, download."""
    from stoker.workers.inprocess import inprocess_worker
    from stoker.workers.process import check_worker

    settings = settings_of(ctx)
    check_worker([kind], device)  # before submitting: a job no worker here can run waits
    with client_of(ctx) as client:
        record = submit(client)
        if not record.state.terminal:
            with inprocess_worker(settings, [kind], device):
                try:
                    # The in-process worker sends no heartbeats: no hint of who takes it.
                    record = follow(client, record.id, hint_queued=False)
                except KeyboardInterrupt:
                    _interrupted(client, record.id)
        # A job that succeeded is downloaded even when every item failed: its
        # manifest and errors.jsonl say why.
        if record.state is JobState.SUCCEEDED:
            paths = client.download(record.id, out)
            for path in paths:
                console.print(str(path))
            warn_of_outputs(paths, out)
        exit_unless_succeeded(client, record)


def _interrupted(client: Any, job_id: str) -> None:
    """Ctrl-C in `stoker run`: cancel the job, while the in-process worker still runs,
    so its running chunk stops at its next check (not at its end) and the job does not
    stay `running` with nobody left to run it. Its finished chunks are kept: the same
    command run again finds them and goes on from there. Exits 130, as shells expect."""
    record = client.cancel(job_id)
    p = record.progress
    err.print(
        f"interrupted: {job_id} cancelled with {p.done} of {p.total} {units_of(record)} "
        f"finished; run the same command again to go on from them (or `stoker retry "
        f"{job_id}` with a worker running).",
        highlight=False,
    )
    raise typer.Exit(130)


# --- transcribe ---------------------------------------------------------------------------

TargetArg = Annotated[str, typer.Argument(help="A recording, or a folder of them (recursive).")]
ModelOpt = Annotated[str, typer.Option(help="Whisper model name (`stoker models`).")]
LanguageOpt = Annotated[str, typer.Option(help="ISO 639-1 code such as en, or auto.")]
FormatsOpt = Annotated[str, typer.Option(help="Comma-separated: txt,srt,vtt,json.")]
WordsOpt = Annotated[bool, typer.Option("--word-timestamps", help="Word times in the JSON.")]


def _is_single(target: str) -> bool:
    from stoker.jobs.media import MEDIA_EXTENSIONS

    if target.startswith("s3://"):
        return Path(target).suffix.lower() in MEDIA_EXTENSIONS
    return not Path(target).is_dir()


def _transcribe_requests(
    client: Any, target: str, model: str, language: str, formats: str, words: bool
) -> tuple[list[dict[str, Any]], bool]:
    """The per-file requests for ``target`` and whether it is a batch (a folder or an
    s3:// prefix, searched recursively)."""
    base = {
        "model": model,
        "language": language,
        "word_timestamps": words,
        "formats": [f.strip() for f in formats.split(",") if f.strip()],
    }
    if _is_single(target):
        return [{**base, "path": target, "name": target.rstrip("/").rsplit("/", 1)[-1]}], False
    found = client.media_under(target)
    if not found:
        raise InvalidInput(
            f"{target} holds no audio or video files; `stoker submit "
            f"transcribe FILE` takes a single recording."
        )
    return [{**base, "path": location, "name": name} for name, location in found], True


def _submit_transcribe(
    client: Any, target: str, request_args: tuple[Any, ...], priority: Priority
) -> JobRecord:
    requests, batch = _transcribe_requests(client, target, *request_args)
    if batch:
        return client.submit_batch("transcribe", requests, source=target, priority=priority)
    return client.submit("transcribe", requests[0], priority=priority)


@submit_app.command("transcribe")
def submit_transcribe(
    ctx: typer.Context,
    target: TargetArg,
    model: ModelOpt = "base",
    language: LanguageOpt = "auto",
    formats: FormatsOpt = "txt,srt,vtt,json",
    word_timestamps: WordsOpt = False,
    priority: PriorityOpt = "normal",
) -> None:
    """Queue a recording (one job), or a folder or s3:// prefix of them (one batch)."""
    args = (model, language, formats, word_timestamps)
    with client_of(ctx) as client:
        record = _submit_transcribe(client, target, args, parse_priority(priority))
        submitted(client, record)


@run_app.command("transcribe")
def run_transcribe(
    ctx: typer.Context,
    target: TargetArg,
    model: ModelOpt = "base",
    language: LanguageOpt = "auto",
    formats: FormatsOpt = "txt,srt,vtt,json",
    word_timestamps: WordsOpt = False,
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Transcribe a recording, a folder or an s3:// prefix here; transcripts go to --out."""
    args = (model, language, formats, word_timestamps)
    run_with(
        ctx,
        "transcribe",
        lambda client: _submit_transcribe(client, target, args, "interactive"),
        out,
        device,
    )


# --- audiobook ----------------------------------------------------------------------------

BookArg = Annotated[Path, typer.Argument(help="An .epub, .md or .txt book.")]
BookFormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="Comma-separated: m4b (whole book) and/or mp3, flac, wav, ogg (one file per chapter).",
    ),
]
ChaptersOpt = Annotated[str, typer.Option(help="auto, heading, blank-lines:N or none.")]
FrontOpt = Annotated[bool, typer.Option(help="Keep copyright, dedication and TOC pages.")]
ChapterSilenceOpt = Annotated[float, typer.Option(help="Seconds of silence between chapters.")]


def _book_request(
    book: Path,
    voice: str | None,
    fmt: str,
    chapters_by: str,
    front: bool,
    speaker: str | None,
    length_scale: float,
    silence: float,
    chapter_silence: float,
) -> dict[str, Any]:
    return {
        "path": str(book),
        "name": book.name,
        "voice": voice,
        "formats": [f.strip() for f in fmt.split(",") if f.strip()],
        "chapters_by": chapters_by,
        "skip_front_matter": not front,
        "speaker": speaker,
        "length_scale": length_scale,
        "sentence_silence_s": silence,
        "chapter_silence_s": chapter_silence,
    }


@submit_app.command("audiobook")
def submit_audiobook(
    ctx: typer.Context,
    book: BookArg,
    voice: VoiceOpt = None,
    fmt: BookFormatOpt = "m4b,mp3",
    chapters_by: ChaptersOpt = "auto",
    front_matter: FrontOpt = False,
    speaker: SpeakerOpt = None,
    length_scale: LengthOpt = 1.0,
    sentence_silence: SilenceOpt = 0.3,
    chapter_silence: ChapterSilenceOpt = 1.5,
    priority: PriorityOpt = "bulk",
) -> None:
    """Queue a book: one audio file per chapter and an M4B with chapter markers."""
    request = _book_request(
        book,
        voice,
        fmt,
        chapters_by,
        front_matter,
        speaker,
        length_scale,
        sentence_silence,
        chapter_silence,
    )
    submit_job(ctx, "audiobook", request, priority)


@run_app.command("audiobook")
def run_audiobook(
    ctx: typer.Context,
    book: BookArg,
    voice: VoiceOpt = None,
    fmt: BookFormatOpt = "m4b,mp3",
    chapters_by: ChaptersOpt = "auto",
    front_matter: FrontOpt = False,
    speaker: SpeakerOpt = None,
    length_scale: LengthOpt = 1.0,
    sentence_silence: SilenceOpt = 0.3,
    chapter_silence: ChapterSilenceOpt = 1.5,
    out: OutOpt = Path("."),
    device: DeviceOpt = "cpu",
) -> None:
    """Narrate a book on this machine; the chapters and the M4B go to --out."""
    request = _book_request(
        book,
        voice,
        fmt,
        chapters_by,
        front_matter,
        speaker,
        length_scale,
        sentence_silence,
        chapter_silence,
    )
    run_job(ctx, "audiobook", request, out, device)
