"""embed and generate throughput: stoker against the plain library, same run, same model.

embed (all-MiniLM-L6-v2 on CPU):
  1. plain sentence-transformers: encode N sentences at batch 64 (and a sample one
     at a time, for the rate a naive one-call-per-request service gets);
  2. stoker: N jobs of ONE sentence each, queued on Redis (own redis-server), then one
     `stoker worker --queues embed` (model preloaded) drains them; from the worker
     being ready to the last job succeeded. The worker batches chunks across jobs.
     Outputs go to the local directory, or with ``--storage s3`` to a real S3-protocol
     server on loopback (moto_server, a bucket per run), as in production, and with
     ``--s3-latency-ms`` through a proxy that delays each request as a network would.
     ``--redis-latency-ms`` puts the same proxy in front of Redis, for the worker (the
     submitting side connects directly), as a Redis on another machine would be.
embed --split (``--only split``; all-MiniLM-L6-v2 on CPU):
  1. plain sentence-transformers: encode the passages of D documents of ~600 words
     (cut beforehand, untimed, by stoker's own splitter) at batch 64;
  2. stoker: one job of the D documents with ``split``, one worker (preloaded); from
     the worker being ready to the job succeeded: splitting, embedding and writing.
generate (Gemma 3 270M Q4_K_M, greedy, fixed max tokens):
  1. plain llama-cpp-python: create_completion per prompt in a loop;
  2. stoker: one job with the same prompts as a JSONL file, one worker (preloaded);
     from submit to done. Tokens counted from each side's own usage figures.

Usage: python bench/capabilities.py [--sentences 10000] [--repeats 3] [--prompts 16]
                                   [--max-tokens 128] [--only embed|split|generate]
                                   [--documents 200] [--no-write]
                                   [--storage local|s3] [--s3-latency-ms 0]
                                   [--redis-latency-ms 0]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    machine,
    markdown_table,
    s3_env,
    s3_storage,
    write_section,
)
from tests.servers import redis_server  # noqa: E402
from tests.texts import story  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EMBED_MODEL = "all-MiniLM-L6-v2"
GEN_MODEL = "gemma-3-270m"


def distinct_sentences(n: int) -> list[str]:
    """``n`` different sentences (content addressing would skip repeats)."""
    base = story(12 * n).split(". ")
    return [f"{s.strip('.')} (item {i})." for i, s in enumerate((base * (n // len(base) + 1))[:n])]


@contextlib.contextmanager
def delayed_redis(redis_url: str, delay_ms: float) -> Iterator[str]:
    """``redis_url`` through bench/latency_proxy.py, ``delay_ms`` added to each
    request."""
    from urllib.parse import urlsplit

    from bench.latency_proxy import delayed

    target = urlsplit(redis_url)
    with delayed(f"http://{target.netloc}", delay_ms) as proxy:
        yield f"redis://{urlsplit(proxy).netloc}{target.path}"


def model_path(data_dir: Path, name: str) -> Path:
    from stoker.config import load_settings
    from stoker.workers.catalog import ModelCatalog

    return ModelCatalog(load_settings(data_dir=data_dir)).get(name).path


def plain_embed(path: Path, texts: list[str], batch_size: int) -> float:
    """Seconds for plain sentence-transformers to encode ``texts`` (model loaded first)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    model.encode(texts[:64], batch_size=64)  # warm-up, as a warm worker is
    start = time.perf_counter()
    if batch_size == 1:
        for text in texts:
            model.encode([text], batch_size=1, show_progress_bar=False)
    else:
        model.encode(texts, batch_size=batch_size, show_progress_bar=False)
    return time.perf_counter() - start


def wait_all(client: Any, ids: list[str], timeout_s: float) -> None:
    """Return when every job of ``ids`` succeeded (in order, one state read each)."""
    deadline = time.monotonic() + timeout_s
    i = 0
    while i < len(ids):
        state = client.store.state(ids[i]).value
        if state == "succeeded":
            i += 1
            continue
        if state in ("failed", "cancelled"):
            raise RuntimeError(f"job {ids[i]} {state}: {client.status(ids[i]).error}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - i} jobs not done after {timeout_s}s")
        time.sleep(0.05)


def stoker_embed(
    texts: list[str],
    redis_url: str,
    data_dir: Path,
    storage: dict[str, str],
    worker_redis_url: str | None = None,
) -> tuple[float, float]:
    """(submission seconds, drain seconds) for one-sentence embed jobs; ``storage`` is
    the storage settings as environment ({} for the local directory);
    ``worker_redis_url``: the same Redis as the worker reaches it, if not directly."""
    from stoker.client import Stoker
    from stoker.config import load_settings
    from tests.deployment import Deployment

    data_dir.mkdir(parents=True)
    env = {"STOKER_BROKER_URL": redis_url, "STOKER_DATA_DIR": str(data_dir)} | storage
    dep = Deployment(env=env, workdir=data_dir)
    overrides = {k.removeprefix("STOKER_").lower(): v for k, v in storage.items()}
    try:
        with Stoker(load_settings(broker_url=redis_url, data_dir=data_dir, **overrides)) as client:
            start = time.perf_counter()
            ids = [client.submit("embed", {"text": t}, priority="bulk").id for t in texts]
            submitted = time.perf_counter() - start
            dep.env["STOKER_BROKER_URL"] = worker_redis_url or redis_url
            dep.start_worker("embed", "--preload", EMBED_MODEL)  # returns once consuming
            start = time.perf_counter()
            wait_all(client, ids, timeout_s=3600)
            return submitted, time.perf_counter() - start
    finally:
        dep.stop_all()


def embed_section(
    n: int,
    data_dir: Path,
    redis_url: str,
    repeats: int,
    s3_endpoint: str | None,
    where: str,
    worker_redis_url: str | None = None,
    redis_delay_ms: float = 0.0,
) -> str:
    """Plain batch 64 and stoker, interleaved ``repeats`` times (this machine's speed
    drifts by ±10 % between minutes); the table gives the medians. Outputs in S3 at
    ``s3_endpoint`` if given; ``where`` says where the outputs went, for the table;
    ``worker_redis_url``: Redis as the worker reaches it (``redis_delay_ms`` away)."""
    import redis

    texts = distinct_sentences(n)
    path = model_path(data_dir / "catalog", EMBED_MODEL)
    one = plain_embed(path, texts[: min(n, 1000)], 1) / min(n, 1000) * n
    plain, drains, submits = [], [], []
    for r in range(repeats):
        plain.append(plain_embed(path, texts, 64))
        # A stopped worker leaves its last batch unacknowledged: it must not reach
        # the next run's worker.
        redis.Redis.from_url(redis_url).flushall()
        storage = s3_env(s3_endpoint, str(r)) if s3_endpoint else {}
        submitted, drained = stoker_embed(
            texts, redis_url, data_dir / f"stoker-{r}", storage, worker_redis_url
        )
        drains.append(drained)
        submits.append(submitted)
    batched, drained, submitted = (statistics.median(x) for x in (plain, drains, submits))
    rows = [
        ["plain, one call per sentence (batch 1)", f"{one:.1f}", f"{n / one:.0f}", "—"],
        ["plain, batch 64", f"{batched:.1f}", f"{n / batched:.0f}", "1.00"],
        [
            f"stoker, 1 job per sentence, 1 worker, outputs in {where or 'a folder'}"
            + (f", Redis +{redis_delay_ms:g} ms" if redis_delay_ms else ""),
            f"{drained:.1f}",
            f"{n / drained:.0f}",
            f"{batched / drained:.2f}",
        ],
    ]
    table = markdown_table(
        ["embed " + f"{n} sentences", "seconds", "sentences/s", "× batch 64"], rows
    )
    pairs = ", ".join(f"{p / d:.2f}" for p, d in zip(plain, drains, strict=True))
    return (
        f"{table}\n\nMedians of {repeats} interleaved runs of each (plain, then stoker); "
        f"the ratio of each pair: {pairs}. Submitting the {n} jobs (one `Stoker.submit` "
        f"each, one process) took {submitted:.1f} s ({n / submitted:.0f} jobs/s); the "
        f"batch-1 row is timed once on {min(n, 1000)} sentences and scaled.\n"
    )


def stoker_split(docs: list[str], redis_url: str, data_dir: Path) -> tuple[float, int]:
    """(drain seconds, rows) of one embed job of ``docs`` with ``split``, one worker."""
    from stoker.client import Stoker
    from stoker.config import load_settings
    from tests.deployment import Deployment

    data_dir.mkdir(parents=True)
    dep = Deployment(
        env={"STOKER_BROKER_URL": redis_url, "STOKER_DATA_DIR": str(data_dir)}, workdir=data_dir
    )
    try:
        with Stoker(load_settings(broker_url=redis_url, data_dir=data_dir)) as client:
            job = client.submit("embed", {"texts": docs, "split": True})
            dep.start_worker("embed", "--preload", EMBED_MODEL)  # returns once consuming
            start = time.perf_counter()
            done = client.wait(job.id, timeout_s=3600)
            drained = time.perf_counter() - start
            if done.state.value != "succeeded":
                raise RuntimeError(f"split job {done.state.value}: {done.error}")
            rows = len(client.storage.get_bytes(done.outputs[0].key).splitlines())
            return drained, rows
    finally:
        dep.stop_all()


def split_section(n: int, data_dir: Path, redis_url: str, repeats: int) -> str:
    """Plain batch 64 over the passages and stoker's split job, interleaved."""
    import redis
    from sentence_transformers import SentenceTransformer

    from stoker.jobs.passages import room_for_text, split_passages

    docs = [f"Document {i}. {story(600)}" for i in range(n)]
    path = model_path(data_dir / "catalog", EMBED_MODEL)
    model = SentenceTransformer(str(path), device="cpu")
    passages = split_passages(model, docs, room_for_text(model, None), 0)
    pieces = [docs[p.source][p.start : p.end] for p in passages]
    del model
    plain, drains = [], []
    for r in range(repeats):
        plain.append(plain_embed(path, pieces, 64))
        redis.Redis.from_url(redis_url).flushall()
        drained, rows = stoker_split(docs, redis_url, data_dir / f"stoker-{r}")
        if rows != len(pieces):
            raise RuntimeError(f"stoker wrote {rows} rows for {len(pieces)} passages")
        drains.append(drained)
    batched, drained = statistics.median(plain), statistics.median(drains)
    k = len(pieces)
    rows_out = [
        ["plain, the same passages at batch 64", f"{batched:.1f}", f"{k / batched:.0f}", "1.00"],
        [
            "stoker, 1 job with split, 1 worker",
            f"{drained:.1f}",
            f"{k / drained:.0f}",
            f"{batched / drained:.2f}",
        ],
    ]
    table = markdown_table(
        [f"embed {n} documents of ~600 words → {k} passages", "seconds", "passages/s", "× plain"],
        rows_out,
    )
    pairs = ", ".join(f"{p / d:.2f}" for p, d in zip(plain, drains, strict=True))
    return f"{table}\n\nMedians of {repeats} interleaved runs; the ratio of each pair: {pairs}.\n"


def plain_generate(path: Path, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_gpu_layers=0, verbose=False)
    llm.create_completion("Warm up.", max_tokens=4, temperature=0.0)
    start, tokens = time.perf_counter(), 0
    for prompt in prompts:
        r = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, seed=1)
        tokens += r["usage"]["completion_tokens"]
    return time.perf_counter() - start, tokens


def stoker_generate(
    prompts: list[str], max_tokens: int, redis_url: str, data_dir: Path
) -> tuple[float, int]:
    from stoker.client import Stoker
    from stoker.config import load_settings
    from tests.deployment import Deployment

    data_dir.mkdir(parents=True)
    dep = Deployment(
        env={"STOKER_BROKER_URL": redis_url, "STOKER_DATA_DIR": str(data_dir)}, workdir=data_dir
    )
    lines = "\n".join(json.dumps({"prompt": p}) for p in prompts)
    request = {"prompts": lines, "model": GEN_MODEL, "max_tokens": max_tokens}
    request |= {"temperature": 0.0, "seed": 1}
    try:
        dep.start_worker("generate", "--preload", GEN_MODEL)
        with Stoker(load_settings(broker_url=redis_url, data_dir=data_dir)) as client:
            start = time.perf_counter()
            done = client.wait(client.submit("generate", request).id, timeout_s=3600, poll_s=0.05)
            elapsed = time.perf_counter() - start
            assert done.state == "succeeded", done.error
            results = client.storage.get_bytes(done.outputs[0].key).decode().splitlines()
        tokens = sum(json.loads(r)["usage"]["completion_tokens"] for r in results)
        return elapsed, tokens
    finally:
        dep.stop_all()


def generate_section(n: int, max_tokens: int, data_dir: Path, redis_url: str) -> str:
    prompts = [f"Write a short story about {s}" for s in distinct_sentences(n)]
    path = model_path(data_dir / "catalog", GEN_MODEL)
    if path.is_dir():  # the packaged model is joined into a folder holding one .gguf
        path = next(path.glob("*.gguf"))
    plain_s, plain_tokens = plain_generate(path, prompts, max_tokens)
    stoker_s, stoker_tokens = stoker_generate(prompts, max_tokens, redis_url, data_dir / "gen")
    plain_rate, stoker_rate = plain_tokens / plain_s, stoker_tokens / stoker_s
    rows = [
        [
            "plain llama-cpp-python",
            f"{plain_s:.1f}",
            str(plain_tokens),
            f"{plain_rate:.1f}",
            "1.00",
        ],
        [
            "stoker, 1 job, 1 worker",
            f"{stoker_s:.1f}",
            str(stoker_tokens),
            f"{stoker_rate:.1f}",
            f"{stoker_rate / plain_rate:.2f}",
        ],
    ]
    header = [f"generate {n} prompts", "seconds", "tokens", "tokens/s", "ratio"]
    return markdown_table(header, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", type=int, default=10_000)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="embed runs of each side")
    parser.add_argument("--only", choices=["embed", "split", "generate"])
    parser.add_argument("--documents", type=int, default=200, help="split: documents")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--storage", choices=["local", "s3"], default="local", help="where embed jobs' outputs go"
    )
    parser.add_argument(
        "--s3-latency-ms",
        type=float,
        default=0.0,
        help="with --storage s3: delay added to each request (bench/latency_proxy.py)",
    )
    parser.add_argument(
        "--redis-latency-ms",
        type=float,
        default=0.0,
        help="embed: delay added to each of the worker's requests to Redis",
    )
    args = parser.parse_args()
    parts = []
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        redis_url = stack.enter_context(redis_server(Path(tmp)))
        s3, where = s3_storage(stack, args.s3_latency_ms) if args.storage == "s3" else (None, "")
        worker_redis = None
        if args.redis_latency_ms:
            worker_redis = stack.enter_context(delayed_redis(redis_url, args.redis_latency_ms))
        if args.only in (None, "embed"):
            embed_dir = Path(tmp) / "embed"
            section = embed_section(
                args.sentences, embed_dir, redis_url, args.repeats, s3, where,
                worker_redis, args.redis_latency_ms,
            )  # fmt: skip
            parts.append(section)
            print(parts[-1])
        if args.only == "split":  # its own section, not part of the whole run
            section = split_section(args.documents, Path(tmp) / "split", redis_url, args.repeats)
            parts.append(section)
            print(section)
        if args.only in (None, "generate"):
            section = generate_section(args.prompts, args.max_tokens, Path(tmp) / "gen", redis_url)
            parts.append(section)
            print(section)
    command = "python bench/capabilities.py " + " ".join(sys.argv[1:])
    if os.environ.get("TMPDIR"):  # where every scratch file and the data dir live
        command = f"TMPDIR={os.environ['TMPDIR']} {command}"
    body = f"Command: `{command.strip()}` on {machine()}.\n\n" + "\n".join(parts) + "\n"
    if args.only in (None, "generate"):
        body += "Greedy decoding (temperature 0) on both sides, so both generate the same tokens.\n"
    if name := _section(args):
        write_section(name, body)


def _section(args: argparse.Namespace) -> str | None:
    """The docs/benchmarks.md section a run's figures go in; None for runs not kept.
    The S3 run is its own section: embed only (generate writes one file per job)."""
    if args.no_write or args.redis_latency_ms:
        return None
    sections = {
        ("local", None): "capabilities",
        ("s3", "embed"): "capabilities-s3",
        ("local", "split"): "capabilities-split",
    }
    return sections.get((args.storage, args.only))


if __name__ == "__main__":
    main()
