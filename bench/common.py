"""Helpers shared by the benchmarks: timing, tables, and writing docs/benchmarks.md."""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psutil

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def timed_interleaved(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall-clock seconds of each of ``fns``, run in turn ``repeats`` times.

    Interleaving (A, B, A, B, ...) keeps slow drift of the machine (thermal, other
    load) from landing on one side of the comparison.
    """
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    mem_gib = psutil.virtual_memory().total / 2**30
    python = platform.python_version()
    return f"{psutil.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, no GPU, Python {python}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, body: str) -> None:
    """Replace the section between <!-- name:start --> and <!-- name:end --> in the docs."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)
