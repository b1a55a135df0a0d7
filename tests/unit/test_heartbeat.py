"""A worker's heartbeat goes on while the worker is busy: a chunk running on the
consumer's thread, or a model loading under the manager's lock. Fake fleet (it
records the beats), real catalog and model manager (nothing is loaded)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from stoker.config import ModelEntry, Settings
from stoker.queues.app import model_queue
from stoker.workers.catalog import ModelCatalog
from stoker.workers.fleet import LocalFleet, WorkerBeat
from stoker.workers.manager import ModelManager
from stoker.workers.scheduler import Choice
from stoker.workers.steering import BEAT_TTL_FACTOR, Steering


class RecordingFleet(LocalFleet):
    def __init__(self) -> None:
        super().__init__()
        self.beats: list[tuple[WorkerBeat, float]] = []
        self.changed = threading.Condition()

    def publish(self, beat: WorkerBeat, ttl_s: float) -> None:
        with self.changed:
            self.beats.append((beat, ttl_s))
            self.changed.notify_all()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[tuple[WorkerBeat, float]]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.beats) >= count, timeout_s)
            return list(self.beats)


def steering(tmp_path: Path, fleet: RecordingFleet, heartbeat_s: float = 0.02) -> Steering:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    settings = Settings(
        data_dir=tmp_path,
        heartbeat_s=heartbeat_s,
        models={"m": ModelEntry(backend="llama", path=model)},
    )
    executor: Any = SimpleNamespace(
        catalog=ModelCatalog(settings), manager=ModelManager(settings, {}), device="cpu"
    )
    return Steering(settings, executor, ["generate"], fleet=fleet, probe=None, hostname="me")


def test_beats_go_on_with_no_tick_and_while_a_model_loads(tmp_path: Path) -> None:
    # Given a worker's steering, whose consumer never ticks (as while a chunk runs)
    fleet = RecordingFleet()
    steer = steering(tmp_path, fleet)
    manager: Any = steer.executor.manager

    with steer.heartbeat():
        # Then beats come every heartbeat_s, each living for five of them
        first = fleet.wait_for(3)
        assert len(first) >= 3
        assert {ttl for _, ttl in first} == {0.02 * BEAT_TTL_FACTOR}
        # And while the manager's lock is held (a model loading), beats go on, with
        # the pools as last seen
        with manager._lock:
            during = fleet.wait_for(len(first) + 3)
        assert len(during) >= len(first) + 3
        assert [p.device for p in during[-1][0].pools] == ["cpu"]
    count = len(fleet.beats)
    time.sleep(0.1)
    # And they stop with the block
    assert len(fleet.beats) == count


def test_a_beat_lists_every_queue_the_worker_could_take(tmp_path: Path) -> None:
    fleet = RecordingFleet()
    steer = steering(tmp_path, fleet)

    beat = steer.snapshot()

    # The capability's queue and its catalog models' (the packaged one, and the
    # configured one), consumed (fifo) or not
    assert beat.serves[0] == "generate"
    assert {model_queue("generate", "m"), model_queue("generate", "gemma-3-270m")} == set(
        beat.serves[1:]
    )
    assert beat.queues == sorted(beat.serves)


def test_a_change_of_queues_is_published_at_once(tmp_path: Path) -> None:
    # Given a worker that beats once a minute, after its first beat
    fleet = RecordingFleet()
    steer = steering(tmp_path, fleet, heartbeat_s=60)
    ignore = lambda *args, **kwargs: None  # noqa: E731
    consumer = SimpleNamespace(add_task_queue=ignore, cancel_task_queue=ignore)
    with steer.heartbeat():
        fleet.wait_for(1)
        # When it takes a model's queue
        queue = model_queue("generate", "m")
        steer.apply(consumer, Choice(frozenset({"generate", queue}), "switch", "m"))
        # Then a beat saying so comes now, not a minute later
        beats = fleet.wait_for(2)
    assert len(beats) >= 2 and queue in beats[1][0].queues
