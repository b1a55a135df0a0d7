"""ChunkFiles: a job's chunk files for assembly, each fetched when first read."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from stoker.workers.assembly import ChunkFiles
from stoker.workers.io_threads import StorageIO


class Fetcher:
    """Records which chunk indexes were fetched, and on which thread."""

    def __init__(self) -> None:
        self.fetched: list[int] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, index: int) -> Path:
        with self._lock:
            self.fetched.append(index)
            self.threads.add(threading.current_thread().name)
        return Path(f"/chunks/{index:06d}.png")


def test_nothing_is_fetched_until_read_and_a_read_chunk_is_fetched_once() -> None:
    fetch = Fetcher()
    files = ChunkFiles(["a", "b", "c"], fetch, StorageIO(remote=False))
    # Its length is known without a fetch
    assert len(files) == 3 and fetch.fetched == []
    # Indexing fetches that one chunk, once; a negative index names the same one
    assert files[1] == Path("/chunks/000001.png")
    assert files[-2] == files[1]
    assert fetch.fetched == [1]
    # Iterating fetches only the missing ones, and yields all in order
    assert list(files) == [Path(f"/chunks/{i:06d}.png") for i in range(3)]
    assert sorted(fetch.fetched) == [0, 1, 2]
    assert files[0:2] == [Path("/chunks/000000.png"), Path("/chunks/000001.png")]
    assert sorted(fetch.fetched) == [0, 1, 2]
    with pytest.raises(IndexError):
        files[3]


def test_on_remote_storage_iterating_fetches_the_missing_side_by_side() -> None:
    fetch = Fetcher()
    files = ChunkFiles([str(i) for i in range(6)], fetch, StorageIO(remote=True))
    assert len(list(files)) == 6
    assert sorted(fetch.fetched) == list(range(6))
    assert all(name.startswith("stoker-io") for name in fetch.threads)


def test_a_failed_fetch_raises_on_read_and_is_tried_again_on_the_next() -> None:
    calls = []

    def flaky(index: int) -> Path:
        calls.append(index)
        if len(calls) == 1:
            raise OSError("storage away")
        return Path(f"/chunks/{index}")

    files = ChunkFiles(["a"], flaky, StorageIO(remote=False))
    with pytest.raises(OSError, match="storage away"):
        files[0]
    assert files[0] == Path("/chunks/0") and calls == [0, 0]
