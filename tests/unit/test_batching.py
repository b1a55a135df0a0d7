"""ChunkBatcher: when a buffer of chunk requests runs, and the prefetch it borrows."""

from __future__ import annotations

from typing import Any

from stoker.queues.batching import ChunkBatcher


class FakeQos:
    def __init__(self) -> None:
        self.value = 1

    def increment_eventually(self, n: int = 1) -> None:
        self.value += n

    def decrement_eventually(self, n: int = 1) -> None:
        self.value -= n


class FakeEntry:
    def __init__(self, fun: Any) -> None:
        self.fun, self.cancelled = fun, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimer:
    def __init__(self) -> None:
        self.entries: list[FakeEntry] = []

    def call_after(self, secs: float, fun: Any) -> FakeEntry:
        self.entries.append(FakeEntry(fun))
        return self.entries[-1]


class FakeConsumer:
    def __init__(self) -> None:
        self.qos, self.timer = FakeQos(), FakeTimer()


class FakeRequest:
    def __init__(self, n: int) -> None:
        self.n, self.rejected = n, False

    def reject(self, requeue: bool = False) -> None:
        self.rejected = requeue


def make(max_chunks: int = 3) -> tuple[ChunkBatcher, FakeConsumer, list[list[int]]]:
    consumer, runs = FakeConsumer(), []
    batcher = ChunkBatcher(
        consumer, lambda reqs: runs.append([r.n for r in reqs]), max_chunks, 0.05
    )
    return batcher, consumer, runs


def test_a_full_buffer_runs_at_once_and_gives_its_prefetch_back() -> None:
    batcher, consumer, runs = make(max_chunks=3)
    # When three requests arrive
    for n in range(3):
        batcher.add(FakeRequest(n))
    # Then they ran as one batch, and the prefetch is back where it was
    assert runs == [[0, 1, 2]]
    assert consumer.qos.value == 1
    assert len(batcher) == 0


def test_each_waiting_request_borrows_one_prefetch_slot() -> None:
    batcher, consumer, runs = make(max_chunks=10)
    batcher.add(FakeRequest(0))
    batcher.add(FakeRequest(1))
    # While two requests wait, the channel may hold two more messages
    assert consumer.qos.value == 3
    assert runs == []


def test_a_partial_buffer_runs_when_its_timer_fires() -> None:
    batcher, consumer, runs = make(max_chunks=10)
    batcher.add(FakeRequest(0))
    batcher.add(FakeRequest(1))
    # One timer for the buffer, not one per request
    assert len(consumer.timer.entries) == 1
    consumer.timer.entries[0].fun()
    assert runs == [[0, 1]]
    assert consumer.qos.value == 1


def test_a_flush_cancels_the_pending_timer_and_an_empty_flush_does_nothing() -> None:
    batcher, consumer, runs = make(max_chunks=2)
    batcher.add(FakeRequest(0))
    batcher.add(FakeRequest(1))
    assert consumer.timer.entries[0].cancelled
    batcher.flush()
    assert runs == [[0, 1]]


def test_a_crashing_run_requeues_the_batch_and_the_batcher_keeps_working() -> None:
    consumer = FakeConsumer()
    calls: list[int] = []

    def run(reqs: list[Any]) -> None:
        calls.append(len(reqs))
        if len(calls) == 1:
            raise RuntimeError("bug")

    batcher = ChunkBatcher(consumer, run, 2, 0.05)
    first = [FakeRequest(0), FakeRequest(1)]
    for r in first:
        batcher.add(r)
    # Then the crashed batch's messages went back to the queue
    assert all(r.rejected for r in first)
    batcher.add(FakeRequest(2))
    batcher.add(FakeRequest(3))
    assert calls == [2, 2]
    assert consumer.qos.value == 1
