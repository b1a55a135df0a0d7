"""Transcription throughput: stoker against plain faster-whisper on the same files.

In one run, on one set of recordings (Piper speech, ~1 minute each), with the same
model (Whisper base, int8 on CPU, beam 5, VAD filter on):
  1. plain faster-whisper: load the model, transcribe each file in a loop, write text;
  2. stoker, one worker process (model preloaded), Redis queue + records, local outputs:
     from submitting the folder as a batch to the batch being done (stoker decodes with
     faster-whisper's BatchedInferencePipeline, batch 8, by default);
  3. the same with two worker processes;
and, in-process, faster-whisper's BatchedInferencePipeline against sequential decoding.
Reported as audio seconds per wall second and the ratio to the plain loop.

With ``--storage s3`` the outputs go to a real S3-protocol server on loopback
(moto_server, behind a proxy adding ``--s3-latency-ms`` to each request), on both
sides: the plain loop puts each file's transcript in every format of ``--formats``
with boto3, one after another, as a script would; stoker runs one worker. The
in-process and two-worker rows are left out (they do not touch storage). Short
recordings (``--words 12``: ~4 s each) show what storage costs a job.

Usage: python bench/transcribe.py [--files 6] [--words 170] [--no-write]
                                  [--storage local|s3] [--s3-latency-ms 0]
                                  [--formats txt] [--model base]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    machine,
    markdown_table,
    s3_env,
    s3_storage,
    timed_on_workers,
    write_section,
)
from tests.media_files import speech_wav  # noqa: E402
from tests.servers import redis_server  # noqa: E402
from tests.texts import story  # noqa: E402

MODEL = "base"


def make_files(folder: Path, n: int, n_words: int) -> float:
    """``n`` recordings of different text; returns their total duration (s)."""
    import soundfile

    folder.mkdir(parents=True)
    total = 0.0
    text = story(n * n_words).split(". ")
    per = len(text) // n
    for i in range(n):
        path = speech_wav(folder / f"rec{i:02d}.wav", ". ".join(text[i * per : (i + 1) * per]))
        total += soundfile.info(str(path)).duration
    return total


def model_path(data_dir: Path, model: str = MODEL) -> str:
    from stoker.config import load_settings
    from stoker.workers.catalog import ModelCatalog

    return str(ModelCatalog(load_settings(data_dir=data_dir)).get(model).path)


def plain_loop(files: list[Path], path: str, out: Path) -> float:
    from faster_whisper import WhisperModel

    start = time.perf_counter()
    model = WhisperModel(path, device="cpu", compute_type="int8")
    for f in files:
        segments, _ = model.transcribe(str(f), beam_size=5, vad_filter=True)
        (out / f"{f.stem}.txt").write_text("\n".join(s.text.strip() for s in segments))
    return time.perf_counter() - start


def plain_loop_s3(
    files: list[Path], path: str, storage: dict[str, str], formats: list[str]
) -> float:
    """The plain loop with its outputs in S3: per file, each format rendered (stoker's
    renderers: formatting text is not what is measured) and put with boto3."""
    import boto3
    from faster_whisper import WhisperModel

    from stoker.jobs import transcript

    bucket, _, prefix = storage["STOKER_STORAGE_URL"].removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=storage["STOKER_S3_ENDPOINT_URL"], region_name="us-east-1")
    start = time.perf_counter()
    model = WhisperModel(path, device="cpu", compute_type="int8")
    for f in files:
        pieces, info = model.transcribe(str(f), beam_size=5, vad_filter=True)
        whole = transcript.Transcript(
            segments=tuple(transcript.segments_from_faster_whisper(pieces, offset_s=0.0)),
            language=info.language,
            language_probability=info.language_probability,
            duration_s=info.duration,
            model=path,
            options={},
        )
        for fmt in formats:
            ext, content_type = transcript.FORMATS[fmt]
            s3.put_object(
                Bucket=bucket,
                Key=f"{prefix}/plain/{f.stem}.{ext}",
                Body=transcript.render(whole, fmt).encode(),
                ContentType=content_type,
            )
    return time.perf_counter() - start


def batched_vs_sequential(files: list[Path], path: str) -> tuple[float, float]:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(path, device="cpu", compute_type="int8")
    pipeline = BatchedInferencePipeline(model)
    start = time.perf_counter()
    for f in files:
        list(model.transcribe(str(f), beam_size=5, vad_filter=True)[0])
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    for f in files:
        list(pipeline.transcribe(str(f), beam_size=5, batch_size=8)[0])
    return sequential, time.perf_counter() - start


def via_stoker(
    folder: Path,
    workers: int,
    redis_url: str,
    data_dir: Path,
    formats: list[str] | None = None,
    storage: dict[str, str] | None = None,
    model: str = MODEL,
) -> float:
    from stoker.jobs.media import find_media

    requests = [
        {"path": str(f), "name": f.name, "model": model, "formats": formats or ["txt"]}
        for f in find_media(folder)
    ]
    return timed_on_workers(
        "transcribe",
        model,
        workers,
        redis_url,
        data_dir,
        lambda client: client.submit_batch("transcribe", requests, source=str(folder)),
        storage,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--words", type=int, default=170, help="words per recording")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    parser.add_argument("--s3-latency-ms", type=float, default=0.0)
    parser.add_argument("--formats", default="txt", help="comma-separated, e.g. txt,srt,vtt,json")
    parser.add_argument("--model", default=MODEL, help="with --storage s3: a packaged Whisper")
    args = parser.parse_args()
    if args.storage == "s3":
        s3_main(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audio_s = make_files(work / "archive", args.files, args.words)
        files = sorted((work / "archive").iterdir())
        path = model_path(work / "data")
        (work / "plain").mkdir()
        plain_s = plain_loop(files, path, work / "plain")
        with redis_server(work / "redis") as url:
            one_s = via_stoker(work / "archive", 1, url, work / "d1")
            two_s = via_stoker(work / "archive", 2, url, work / "d2")
        seq_s, batched_s = batched_vs_sequential(files, path)

    def row(name: str, seconds: float) -> list[str]:
        return [name, f"{seconds:.1f}", f"{audio_s / seconds:.1f}", f"{plain_s / seconds:.2f}"]

    body = "\n\n".join(
        [
            f"Machine: {machine()}. Command: `python bench/transcribe.py --files {args.files} "
            f"--words {args.words}`. {args.files} recordings, {audio_s:.0f} s of speech in all; "
            f"Whisper {MODEL}, int8, beam 5, VAD filter.",
            markdown_table(
                ["path", "wall s", "audio s / wall s", "vs plain loop"],
                [
                    row("plain faster-whisper loop (incl. model load)", plain_s),
                    row("stoker, 1 worker (model warm; batched pipeline, batch 8)", one_s),
                    row("stoker, 2 workers on the same 2 cores (same)", two_s),
                ],
            ),
            "In-process, the same files, model already loaded:",
            markdown_table(
                ["faster-whisper", "wall s", "audio s / wall s"],
                [
                    [
                        "sequential `WhisperModel.transcribe`",
                        f"{seq_s:.1f}",
                        f"{audio_s / seq_s:.1f}",
                    ],
                    [
                        "`BatchedInferencePipeline` (batch 8)",
                        f"{batched_s:.1f}",
                        f"{audio_s / batched_s:.1f}",
                    ],
                ],
            ),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("transcribe", body)


def s3_main(args: argparse.Namespace) -> None:
    """Plain loop and one stoker worker, both with outputs in S3, interleaved twice."""
    formats = args.formats.split(",")
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        endpoint, where = s3_storage(stack, args.s3_latency_ms)
        audio_s = make_files(work / "archive", args.files, args.words)
        files = sorted((work / "archive").iterdir())
        path = model_path(work / "data", args.model)
        plain, ours = [], []
        for r in range(2):
            plain.append(plain_loop_s3(files, path, s3_env(endpoint, f"p{r}"), formats))
            with redis_server(work / f"redis{r}") as url:
                storage = s3_env(endpoint, f"s{r}")
                folder, data = work / "archive", work / f"d{r}"
                ours.append(via_stoker(folder, 1, url, data, formats, storage, args.model))
    plain_s, one_s = min(plain), min(ours)

    def row(name: str, seconds: float) -> list[str]:
        return [name, f"{seconds:.1f}", f"{audio_s / seconds:.1f}", f"{plain_s / seconds:.2f}"]

    command = "python bench/transcribe.py " + " ".join(sys.argv[1:])
    body = "\n\n".join(
        [
            f"Machine: {machine()}. Command: `{command}`. {args.files} recordings, "
            f"{audio_s:.0f} s of speech in all; Whisper {args.model}, int8, beam 5, VAD filter; "
            f"outputs ({args.formats}) in {where}. Best of 2 interleaved runs of each "
            f"(plain: {', '.join(f'{x:.1f}' for x in plain)} s; stoker: "
            f"{', '.join(f'{x:.1f}' for x in ours)} s).",
            markdown_table(
                ["path", "wall s", "audio s / wall s", "vs plain loop"],
                [
                    row("plain faster-whisper loop + boto3 puts (incl. model load)", plain_s),
                    row("stoker, 1 worker (model warm; batched pipeline, batch 8)", one_s),
                ],
            ),
        ]
    )
    print(body)
    if not args.no_write:
        write_section("transcribe-s3", body)


if __name__ == "__main__":
    main()
