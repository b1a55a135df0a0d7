"""ChunkBatcher: when a buffer of chunk requests runs, and the prefetch it borrows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from stoker.queues import batching
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

    def call_repeatedly(self, secs: float, fun: Any) -> FakeEntry:
        return FakeEntry(fun)  # the tests call settle_finished themselves


class FakeConsumer:
    def __init__(self) -> None:
        self.qos, self.timer = FakeQos(), FakeTimer()


class FakeRequest:
    def __init__(self, n: int) -> None:
        self.n, self.rejected = n, False

    def reject(self, requeue: bool = False) -> None:
        self.rejected = requeue


class BulkChannel:
    """A channel able to hand over messages in bulk (stoker's Redis transport)."""

    take_more: Any = None


class ChannelRequest(FakeRequest):
    def __init__(self, n: int, channel: Any, queue: str = "embed") -> None:
        super().__init__(n)
        self.message = type("Message", (), {"channel": channel})()
        self.delivery_info = {"routing_key": queue}


def make(
    max_chunks: int = 3, pipelined: bool = False
) -> tuple[ChunkBatcher, FakeConsumer, list[list[int]]]:
    """A batcher whose batches record their request numbers when settled."""
    consumer, runs = FakeConsumer(), []

    def produce(reqs: list[Any]) -> Any:
        return lambda: [None] * len(reqs)

    def settle(reqs: list[Any], outcomes: list[Any]) -> None:
        runs.append([r.n for r in reqs])

    batcher = ChunkBatcher(consumer, produce, settle, max_chunks, 0.05, pipelined=pipelined)
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


def test_a_partial_buffer_runs_once_requests_stop_coming(monkeypatch: Any) -> None:
    clock = [100.0]
    monkeypatch.setattr(batching.time, "monotonic", lambda: clock[0])
    batcher, consumer, runs = make(max_chunks=10)
    batcher.add(FakeRequest(0))
    clock[0] += 0.04
    batcher.add(FakeRequest(1))
    # One timer for the buffer, not one per request
    assert len(consumer.timer.entries) == 1
    # When it fires 0.01 s after the last request, the buffer waits a little longer
    clock[0] += 0.01
    consumer.timer.entries[0].fun()
    assert runs == [] and len(consumer.timer.entries) == 2
    # And once no request came for the whole wait, it runs
    clock[0] += 0.05
    consumer.timer.entries[1].fun()
    assert runs == [[0, 1]]
    assert consumer.qos.value == 1


def test_a_streaming_buffer_still_runs_at_ten_times_the_wait(monkeypatch: Any) -> None:
    clock = [100.0]
    monkeypatch.setattr(batching.time, "monotonic", lambda: clock[0])
    batcher, consumer, runs = make(max_chunks=1000)
    for n in range(30):  # a request every 0.02 s: never a 0.05 s pause
        batcher.add(FakeRequest(n))
        clock[0] += 0.02
        if consumer.timer.entries and runs == []:
            consumer.timer.entries[-1].fun()
    assert runs and len(runs[0]) <= 26


def test_a_flush_cancels_the_pending_timer_and_an_empty_flush_does_nothing() -> None:
    batcher, consumer, runs = make(max_chunks=2)
    batcher.add(FakeRequest(0))
    batcher.add(FakeRequest(1))
    assert consumer.timer.entries[0].cancelled
    batcher.flush()
    assert runs == [[0, 1]]


def test_a_crashing_batch_is_requeued_and_the_batcher_keeps_working() -> None:
    consumer = FakeConsumer()
    calls: list[int] = []

    def produce(reqs: list[Any]) -> Any:
        calls.append(len(reqs))
        if len(calls) == 1:
            raise RuntimeError("bug")
        return lambda: [None] * len(reqs)

    batcher = ChunkBatcher(consumer, produce, lambda reqs, outcomes: None, 2, 0.05)
    first = [FakeRequest(0), FakeRequest(1)]
    for r in first:
        batcher.add(r)
    # Then the crashed batch's messages went back to the queue
    assert all(r.rejected for r in first)
    batcher.add(FakeRequest(2))
    batcher.add(FakeRequest(3))
    assert calls == [2, 2]
    assert consumer.qos.value == 1


def test_pipelined_batches_are_settled_on_the_consumer_thread_and_keep_their_slots() -> None:
    batcher, consumer, runs = make(max_chunks=2, pipelined=True)
    # When a batch fills, its finishing runs on the second thread...
    batcher.add(FakeRequest(0))
    batcher.add(FakeRequest(1))
    batcher.close()  # let it finish, as time would
    # ...but it is settled, and its prefetch slots given back, only by the consumer
    assert runs == []
    assert consumer.qos.value == 3
    batcher.settle_finished()
    assert runs == [[0, 1]]
    assert consumer.qos.value == 1


def test_a_pipelined_batcher_asks_its_channel_for_the_rest_of_a_batch() -> None:
    batcher, _, runs = make(max_chunks=5, pipelined=True)
    channel = BulkChannel()
    # Given one request of the embed queue buffered
    batcher.add(ChannelRequest(0, channel))
    # Then the channel asks the batcher how many more of that queue it wants: what
    # fills the buffer beyond the message being delivered; none of other queues
    assert channel.take_more == batcher.room
    assert batcher.room("embed") == 3
    assert batcher.room("transcribe") == 0
    batcher.add(ChannelRequest(1, channel))
    assert batcher.room("embed") == 2
    for n in range(2, 5):  # full: the batch runs, the buffer is empty again
        batcher.add(ChannelRequest(n, channel))
    assert batcher.room("embed") == 4
    batcher.close()
    batcher.settle_finished()
    assert runs == [[0, 1, 2, 3, 4]]


def test_without_an_event_loop_messages_come_one_at_a_time() -> None:
    # The SQLite broker's consumer has no channel to ask, and the batcher sets none
    batcher, _, _ = make(max_chunks=5)
    channel = BulkChannel()
    batcher.add(ChannelRequest(0, channel))
    assert channel.take_more is None
    assert batcher.room("embed") == 0


def test_a_partial_buffer_waits_while_the_last_batch_is_still_finishing(
    monkeypatch: Any,
) -> None:
    import threading

    clock = [100.0]
    monkeypatch.setattr(batching.time, "monotonic", lambda: clock[0])
    consumer, runs, release = FakeConsumer(), [], threading.Event()

    def produce(reqs: list[Any]) -> Any:
        def finish() -> list[Any]:
            release.wait(5)  # finishing takes a while (and holds the GIL in real life)
            return [None] * len(reqs)

        return finish

    def settle(reqs: list[Any], outcomes: list[Any]) -> None:
        runs.append([r.n for r in reqs])

    batcher = ChunkBatcher(consumer, produce, settle, 2, 0.05, pipelined=True)
    # Given a full batch that is still being finished, and one more request
    batcher.add(FakeRequest(0))
    batcher.add(FakeRequest(1))
    batcher.add(FakeRequest(2))
    # When its timer fires after a pause in arrivals, even past ten times the wait
    clock[0] += 1.0
    consumer.timer.entries[-1].fun()
    # Then it waits for the finishing instead of spending a model call on one chunk
    assert len(batcher) == 1
    # And once the finishing is done, the next timer runs it
    release.set()
    assert batcher._finisher is not None
    for _ in range(500):  # the finishing thread counts itself done (bounded wait)
        if not batcher._finishing:
            break
        threading.Event().wait(0.01)
    consumer.timer.entries[-1].fun()
    assert len(batcher) == 0
    batcher.close()
    batcher.settle_finished()
    assert runs == [[0, 1], [2]]


def test_pipelined_batches_run_at_the_model_while_the_consumer_goes_on() -> None:
    import threading

    consumer, runs = FakeConsumer(), []
    at_model, release = threading.Event(), threading.Event()

    def produce(reqs: list[Any]) -> Any:
        at_model.set()
        release.wait(5)  # the model call
        return lambda: [None] * len(reqs)

    def settle(reqs: list[Any], outcomes: list[Any]) -> None:
        runs.append([r.n for r in reqs])

    batcher = ChunkBatcher(consumer, produce, settle, 2, 0.05, pipelined=True)
    # Given a full batch at the model
    batcher.add(FakeRequest(0))
    batcher.add(FakeRequest(1))  # full: flushed, and add() returned
    assert at_model.wait(5)
    # When the consumer goes on receiving, and fills the next batch
    batcher.add(FakeRequest(2))
    second = threading.Thread(target=batcher.add, args=(FakeRequest(3),))
    second.start()
    second.join(0.2)
    # Then that flush waits for the model (one batch at it at a time)...
    assert second.is_alive() and runs == []
    # ...and goes on once the model let go; drain waits until no batch is at it
    release.set()
    second.join(5)
    assert not second.is_alive()
    batcher.drain()
    batcher.close()
    batcher.settle_finished()
    assert runs == [[0, 1], [2, 3]]
    assert consumer.qos.value == 1


def test_a_crashing_batch_at_the_model_thread_is_requeued_by_the_consumer() -> None:
    consumer = FakeConsumer()

    def produce(reqs: list[Any]) -> Any:
        raise RuntimeError("a bug")

    batcher = ChunkBatcher(consumer, produce, lambda r, o: None, 2, 0.05, pipelined=True)
    requests = [FakeRequest(0), FakeRequest(1)]
    for request in requests:
        batcher.add(request)
    batcher.close()
    assert not any(r.rejected for r in requests)  # not from the model thread...
    batcher.settle_finished()
    assert all(r.rejected for r in requests)  # ...but by the consumer, requeued
    assert consumer.qos.value == 1


def test_batch_scratch_is_in_memory_only_where_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stoker.workers import batched

    # Given a writable folder standing in for /dev/shm
    monkeypatch.setattr(batched, "SHM_DIR", tmp_path)
    # Then a batch's scratch goes there while it has the room asked for
    monkeypatch.setattr(batched, "SHM_MIN_FREE", 1)
    assert batched.memory_scratch() == str(tmp_path)
    # And to the default temp folder when it has not, or does not exist
    monkeypatch.setattr(batched, "SHM_MIN_FREE", 1 << 60)
    assert batched.memory_scratch() is None
    monkeypatch.setattr(batched, "SHM_DIR", tmp_path / "missing")
    assert batched.memory_scratch() is None
