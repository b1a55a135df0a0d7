"""Path-model queues on the worker side: which ones it serves, and when it fails the
work no live worker can do. Fake broker reads and heartbeats; the real catalog and
model manager (nothing is loaded)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stoker.config import ModelEntry, Settings
from stoker.queues.app import model_queue
from stoker.queues.path_queues import PathQueue, is_path_model
from stoker.workers.catalog import ModelCatalog
from stoker.workers.fleet import LocalFleet, PoolBeat, WorkerBeat
from stoker.workers.manager import ModelManager
from stoker.workers.path_models import PathModels
from stoker.workers.scheduler import Backlog
from stoker.workers.steering import Steering


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def entry(path: Path, kind: str = "generate") -> PathQueue:
    return PathQueue(model_queue(kind, str(path)), kind, str(path))


def gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def test_queues_are_sorted_by_whether_the_file_is_here(tmp_path: Path) -> None:
    # Given one registered model file that exists, one that does not, and one queue of
    # a capability this worker does not serve
    here, gone = gguf(tmp_path / "here.gguf"), tmp_path / "gone.gguf"
    models = PathModels(["generate"], ModelCatalog(Settings(data_dir=tmp_path)))
    models.update([entry(here), entry(gone), entry(tmp_path / "voice.onnx", "speak")])

    # Then only the first is servable (with an ad-hoc llama spec for that path)
    assert [s.path for s in models.servable.values()] == [here]
    assert models.servable[entry(here).queue].backend == "llama"
    assert models.lacking == {entry(gone).queue: str(gone)}


def test_a_file_that_appears_or_goes_is_noticed_at_the_next_recheck(tmp_path: Path) -> None:
    clock = Clock()
    later = tmp_path / "later.gguf"
    models = PathModels(["generate"], ModelCatalog(Settings(data_dir=tmp_path)), clock=clock)
    models.update([entry(later)])
    assert entry(later).queue in models.lacking

    # When the file is copied in, nothing changes until recheck_s has passed
    gguf(later)
    clock.now = 5.0
    models.update([entry(later)])
    assert entry(later).queue in models.lacking
    clock.now = 10.0
    models.update([entry(later)])
    assert entry(later).queue in models.servable and not models.lacking

    # And a deleted file moves it back
    later.unlink()
    clock.now = 20.0
    models.update([entry(later)])
    assert entry(later).queue in models.lacking and not models.servable


def test_paths_are_told_from_names() -> None:
    assert is_path_model("/srv/models/x.gguf")
    assert not is_path_model("gemma-3-270m") and not is_path_model(None) and not is_path_model("")


class FakeProbe:
    """The broker as the steering reads it: registered path queues and backlogs."""

    def __init__(self, entries: list[PathQueue], waiting: dict[str, tuple[int, float]]) -> None:
        self.entries, self.waiting = entries, waiting

    def path_queues(self) -> list[PathQueue]:
        return self.entries

    def measure(self, queues: list[tuple[str, str | None]]) -> list[Backlog]:
        return [Backlog(q, m, *self.waiting.get(q, (0, 0.0))) for q, m in queues]


class FakeFleet(LocalFleet):
    def __init__(self, beats: list[WorkerBeat]) -> None:
        super().__init__()
        self.beats = beats

    def workers(self) -> list[WorkerBeat]:
        return self.beats


def beat(hostname: str, paths: list[str]) -> WorkerBeat:
    return WorkerBeat(
        hostname=hostname, device="cpu", scheduling="backlog", queues=[], paths=paths,
        pools=[], at=0.0,
    )  # fmt: skip


def steering(tmp_path: Path, probe: FakeProbe, beats: list[WorkerBeat], **over: Any) -> Steering:
    settings = Settings(data_dir=tmp_path, scheduler_orphan_wait_s=60, **over)
    executor: Any = SimpleNamespace(
        catalog=ModelCatalog(settings), manager=ModelManager(settings, {}), device="cpu"
    )
    return Steering(
        settings, executor, ["generate"], fleet=FakeFleet(beats), probe=probe, hostname="me"
    )


def test_a_path_queue_with_work_is_switched_to_like_a_catalog_models(tmp_path: Path) -> None:
    # Given a registered model file this worker has, with work waiting
    here = gguf(tmp_path / "here.gguf")
    queue = entry(here).queue
    steer = steering(tmp_path, FakeProbe([entry(here)], {queue: (3, 1.0)}), [])

    # When it decides
    choice = steer.decide()

    # Then it consumes that queue, for that model, and its heartbeat says it has the file
    assert choice is not None and queue in choice.queues
    assert (choice.reason, choice.target) == ("switch", str(here))
    assert steer.snapshot().paths == [queue]


@pytest.mark.parametrize(
    ("age_s", "holder", "taken"),
    [
        (61.0, False, True),  # nobody has the file, waited past the limit: fail it here
        (10.0, False, False),  # too young: a worker with the file may be starting
        (61.0, True, False),  # another live worker has the file: leave it to that one
    ],
)
def test_work_for_a_file_no_worker_has_is_taken_only_when_orphaned(
    tmp_path: Path, age_s: float, holder: bool, taken: bool
) -> None:
    gone = tmp_path / "gone.gguf"
    queue = entry(gone).queue
    beats = [beat("other", [queue] if holder else [])]
    steer = steering(tmp_path, FakeProbe([entry(gone)], {queue: (2, age_s)}), beats)

    choice = steer.decide()

    assert choice is not None
    assert (queue in choice.queues) is taken
    assert steer.snapshot().paths == []


def test_holding_a_model_under_one_name_keeps_the_work_of_its_other_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given "a" and "b", two config names for the same file, "c" another file, and a
    # worker that holds "a"; "b" has a little work waiting, "c" much more
    same, other = gguf(tmp_path / "same.gguf"), gguf(tmp_path / "other.gguf")
    models = {
        "a": ModelEntry(backend="llama", path=same),
        "b": ModelEntry(backend="llama", path=same),
        "c": ModelEntry(backend="llama", path=other),
    }
    waiting = {model_queue("generate", "b"): (3, 1.0), model_queue("generate", "c"): (50, 1.0)}
    steer = steering(tmp_path, FakeProbe([], waiting), [], models=models)
    monkeypatch.setattr(steer.executor.manager, "held", lambda device: frozenset({"a"}))

    # When it decides
    choice = steer.decide()

    # Then it stays on b's queue (no load needed), not c's
    assert choice is not None and choice.reason == "warm"
    assert model_queue("generate", "b") in choice.queues
    assert model_queue("generate", "c") not in choice.queues


def big_pool(budget_bytes: int) -> PoolBeat:
    return PoolBeat(
        device="cpu", budget_bytes=budget_bytes, used_bytes=0, hits=0, misses=0, loads=0,
        evictions=0, models=[],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("other", "taken"),
    [
        (None, True),  # no other worker: take it, so the job fails with "too large"
        ({"queues": ["generate"], "budget": 8 * 2**20}, False),  # one it fits serves it
        ({"queues": ["generate"], "budget": 2**19}, True),  # it fits there neither
        ({"queues": ["speak"], "budget": 8 * 2**20}, True),  # that one runs no generate
    ],
    ids=["alone", "fits-elsewhere", "fits-nowhere", "other-capability"],
)
def test_starving_work_too_large_here_is_left_to_a_worker_it_fits(
    tmp_path: Path, other: dict[str, Any] | None, taken: bool
) -> None:
    # Given a catalog model of 1 MiB on disk, a worker with a 512 KiB budget, and that
    # model's queue starving (its oldest job waited past scheduler_max_wait_s)
    big = tmp_path / "big.gguf"
    big.write_bytes(b"GGUF" + bytes(2**20))
    queue = model_queue("generate", "big")
    beats = []
    if other is not None:
        beats = [beat("gpu-box", [])]
        beats[0].queues, beats[0].pools = other["queues"], [big_pool(other["budget"])]
    steer = steering(
        tmp_path, FakeProbe([], {queue: (1, 400.0)}), beats,
        models={"big": ModelEntry(backend="llama", path=big)}, budgets={"cpu": 2**19},
    )  # fmt: skip

    # When it decides
    choice = steer.decide()

    # Then it takes that work only when no other live worker could load the model
    assert choice is not None
    assert (queue in choice.queues) is taken


@pytest.mark.parametrize(
    ("age_s", "holder", "taken"),
    [
        (10.0, None, False),  # a worker with the file may be starting: leave it
        (61.0, None, True),  # nobody has it, waited past the limit: fail it here
        (61.0, "serves", False),  # a live worker has the file: leave it to that one
        (61.0, "queues", False),  # one consumes it (its heartbeat predates serves)
    ],
)
def test_a_configured_model_whose_file_is_elsewhere_is_left_to_the_workers_with_it(
    tmp_path: Path, age_s: float, holder: str | None, taken: bool
) -> None:
    # Given a config naming "big", whose file is on another machine only, and "here"
    here = gguf(tmp_path / "here.gguf")
    models = {
        "big": ModelEntry(backend="llama", path=tmp_path / "gpu-box-only.gguf"),
        "here": ModelEntry(backend="llama", path=here),
    }
    queue = model_queue("generate", "big")
    beats = []
    if holder is not None:
        beats = [beat("gpu-box", [])]
        setattr(beats[0], holder, [queue])
    steer = steering(tmp_path, FakeProbe([], {queue: (2, age_s)}), beats, models=models)

    # Then its queue is none this worker serves, and its heartbeat says so
    assert queue not in {q for q, _ in steer.candidates}
    assert model_queue("generate", "here") in steer.snapshot().serves
    assert queue not in steer.snapshot().serves

    # And it takes that queue's work only once nobody has the file, as for a path model
    choice = steer.decide()
    assert choice is not None
    assert (queue in choice.queues) is taken


def test_a_configured_model_copied_onto_the_worker_later_is_taken_up(tmp_path: Path) -> None:
    # Given a configured model whose file is not here yet, with work waiting
    later = tmp_path / "later.gguf"
    models = {"later": ModelEntry(backend="llama", path=later)}
    queue = model_queue("generate", "later")
    steer = steering(tmp_path, FakeProbe([], {queue: (3, 1.0)}), [], models=models)
    assert queue not in steer.snapshot().serves

    # When the file is copied in, and the worker's next check of its files is due
    gguf(later)
    steer._files_checked_at = float("-inf")
    choice = steer.decide()

    # Then it serves that queue and its heartbeat says so
    assert choice is not None and queue in choice.queues
    assert queue in steer.snapshot().serves

    # And a file deleted later is dropped the same way
    later.unlink()
    steer._files_checked_at = float("-inf")
    choice = steer.decide()
    assert choice is not None and queue not in choice.queues
    assert queue not in steer.snapshot().serves
