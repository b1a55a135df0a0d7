"""StorageIO: where independent storage calls run, and what comes back."""

from __future__ import annotations

import threading

import pytest

from stoker.workers.io_threads import IO_THREADS, StorageIO


def thread_name(_: object) -> str:
    return threading.current_thread().name


def test_on_local_storage_the_calls_run_in_order_on_the_callers_thread() -> None:
    io = StorageIO(remote=False)
    assert io.each(thread_name, range(5)) == [threading.current_thread().name] * 5


def test_on_remote_storage_they_run_on_the_io_threads_and_keep_their_order() -> None:
    io = StorageIO(remote=True)
    assert io.all(lambda n: n * n, range(20)) == [n * n for n in range(20)]
    assert all(name.startswith("stoker-io") for name in io.each(thread_name, range(4)))
    # One call is not worth a thread hop
    assert io.each(thread_name, [0]) == [threading.current_thread().name]


def test_each_returns_an_items_error_in_its_place_and_all_raises_it() -> None:
    io = StorageIO(remote=True)

    def half(n: int) -> float:
        if n == 3:
            raise ValueError("three is odd here")
        return n / 2

    results = io.each(half, range(5))
    assert results[:3] == [0, 0.5, 1] and results[4] == 2
    assert isinstance(results[3], ValueError)
    with pytest.raises(ValueError, match="three is odd here"):
        io.all(half, range(5))


@pytest.mark.timeout(20)
def test_a_call_made_on_an_io_thread_runs_in_place_so_nested_use_cannot_starve() -> None:
    # Each of more outer items than threads maps inner items: were the inner calls
    # queued behind the outer ones on the same threads, none could finish.
    io = StorageIO(remote=True)
    outer = io.all(lambda _: io.each(thread_name, range(3)), range(IO_THREADS * 2))
    for inner in outer:
        assert len(set(inner)) == 1 and inner[0].startswith("stoker-io")
