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

Usage: python bench/transcribe.py [--files 6] [--words 170] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, timed_on_workers, write_section  # noqa: E402
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


def model_path(data_dir: Path) -> str:
    from stoker.config import load_settings
    from stoker.workers.catalog import ModelCatalog

    return str(ModelCatalog(load_settings(data_dir=data_dir)).get(MODEL).path)


def plain_loop(files: list[Path], path: str, out: Path) -> float:
    from faster_whisper import WhisperModel

    start = time.perf_counter()
    model = WhisperModel(path, device="cpu", compute_type="int8")
    for f in files:
        segments, _ = model.transcribe(str(f), beam_size=5, vad_filter=True)
        (out / f"{f.stem}.txt").write_text("\n".join(s.text.strip() for s in segments))
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


def via_stoker(folder: Path, workers: int, redis_url: str, data_dir: Path) -> float:
    from stoker.jobs.media import find_media

    requests = [
        {"path": str(f), "name": f.name, "model": MODEL, "formats": ["txt"]}
        for f in find_media(folder)
    ]
    return timed_on_workers(
        "transcribe",
        MODEL,
        workers,
        redis_url,
        data_dir,
        lambda client: client.submit_batch("transcribe", requests, source=str(folder)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--words", type=int, default=170, help="words per recording")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
