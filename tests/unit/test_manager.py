"""The model manager with a fake loader, a fake memory meter and a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from stoker.config import Settings
from stoker.errors import ConfigError, ModelLoadError, ModelTooLarge
from stoker.workers import memory
from stoker.workers.catalog import ModelSpec
from stoker.workers.fleet import LocalFleet
from stoker.workers.footprints import RECHECK_S
from stoker.workers.manager import MIB, ModelManager, PoolStats


@dataclass
class FakeModel:
    name: str
    size: int


@dataclass
class FakeLoader:
    """Loads a model of ``options["size"]`` bytes into a fake device memory."""

    backend: str = "fake"
    used_bytes: int = 0  # what measure() reports, for every device
    events: list[str] = field(default_factory=list)

    def load(self, spec: ModelSpec, device: str) -> FakeModel:
        if spec.options.get("fail"):
            raise ModelLoadError(f"could not load {spec.name!r}")
        self.used_bytes += spec.options["size"]
        self.events.append(f"load {spec.name}")
        return FakeModel(spec.name, spec.options["size"])

    def unload(self, model: FakeModel) -> None:
        self.used_bytes -= model.size
        self.events.append(f"unload {model.name}")

    def measure(self, device: str) -> int:
        return self.used_bytes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def loader() -> FakeLoader:
    return FakeLoader()


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def spec(tmp_path: Path) -> Callable[..., ModelSpec]:
    """spec(name, size, disk=size): a model of ``disk`` bytes on disk, ``size`` loaded."""

    def make(name: str, size: int, disk: int | None = None, **options: Any) -> ModelSpec:
        path = tmp_path / f"{name}.bin"
        path.write_bytes(b"\0" * (size if disk is None else disk))
        return ModelSpec(name, "fake", path, options={"size": size, **options})

    return make


@pytest.fixture()
def manager_for(
    tmp_path: Path, loader: FakeLoader, clock: FakeClock
) -> Callable[..., ModelManager]:
    def make(budget: int = 1500, **settings: Any) -> ModelManager:
        settings.setdefault("budgets", {"cpu": budget})
        s = Settings(data_dir=tmp_path / "data", **settings)
        return ModelManager(s, {"fake": loader}, clock=clock, measure=loader.measure)

    return make


def use_once(manager: ModelManager, spec: ModelSpec, device: str = "cpu") -> Any:
    with manager.use(spec, device) as model:
        return model


def pool(manager: ModelManager) -> PoolStats:
    (stats,) = manager.stats()
    return stats


def loaded(manager: ModelManager) -> list[str]:
    return [m.name for m in pool(manager).models]


def test_second_use_is_a_hit(manager_for: Callable[..., ModelManager], spec: Any) -> None:
    manager = manager_for()
    a = spec("A", 1000)

    first = use_once(manager, a)
    second = use_once(manager, a)

    assert first is second
    stats = pool(manager)
    assert (stats.hits, stats.misses, stats.loads, stats.evictions) == (1, 1, 1, 0)


def test_budget_for_one_alternating_two_models_reloads_each_time(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    # Given a budget that fits one of two 1000-byte models
    manager = manager_for(budget=1500)
    a, b = spec("A", 1000), spec("B", 1000)

    # When they are used A, B, A, B
    for s in (a, b, a, b):
        assert use_once(manager, s).name == s.name

    # Then each use loaded its model after evicting the other
    stats = pool(manager)
    assert (stats.loads, stats.evictions, stats.hits, stats.misses) == (4, 3, 0, 4)
    assert loaded(manager) == ["B"]
    assert loader.events[:3] == ["load A", "unload A", "load B"]
    assert manager.footprint(a, "cpu") == manager.footprint(b, "cpu") == 1000


def test_estimate_is_disk_size_first_then_measured(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    # Given a model small on disk (100 B) but large once loaded (1500 B), and a budget of 2000
    manager = manager_for(budget=2000)
    small, x = spec("S", 700), spec("X", 1500, disk=100)
    use_once(manager, small)
    assert manager.footprint(x, "cpu") is None

    # When X is loaded the first time, the disk estimate fits: S is evicted only after
    use_once(manager, x)
    assert loader.events == ["load S", "load X", "unload S"]
    assert manager.footprint(x, "cpu") == 1500

    # When X is loaded again, its measured footprint is the estimate: S goes first
    manager.unload_all()
    loader.events.clear()
    use_once(manager, small)
    use_once(manager, x)
    assert loader.events == ["load S", "unload S", "load X"]


@dataclass
class LazyLoader(FakeLoader):
    """Loads models whose weights are mapped, not read: the meter sees ``seen`` bytes
    of each at load, and ``weights_bytes`` says the model's real size."""

    seen: int = 50

    def load(self, spec: ModelSpec, device: str) -> FakeModel:
        model = super().load(spec, device)
        self.used_bytes += self.seen - model.size
        return model

    def unload(self, model: FakeModel) -> None:
        self.used_bytes -= self.seen
        self.events.append(f"unload {model.name}")

    def weights_bytes(self, model: FakeModel) -> int:
        return model.size


def test_weights_a_loader_counts_are_the_footprint_when_the_meter_sees_less(
    tmp_path: Path, spec: Any, clock: FakeClock
) -> None:
    # Given a loader whose loads look like 50 B to the meter but hold 900 B of weights
    lazy = LazyLoader()
    settings = Settings(data_dir=tmp_path / "data", budgets={"cpu": 1500})
    manager = ModelManager(settings, {"fake": lazy}, clock=clock, measure=lazy.measure)
    a, b = spec("A", 900), spec("B", 900)
    # When A then B are used under a budget that fits one of them
    use_once(manager, a)
    use_once(manager, b)
    # Then A's footprint is its weights, so B's load evicted it first (counted as
    # the meter saw it, 50 B, both would be kept: 1,800 B under a 1,500 B budget)
    assert manager.footprint(a, "cpu") == 900
    assert lazy.events == ["load A", "unload A", "load B"]
    assert loaded(manager) == ["B"]


def use_growing(manager: ModelManager, spec: ModelSpec, loader: FakeLoader, grow: int) -> None:
    """A use whose job leaves ``grow`` bytes behind on the device (an allocator's cache)."""
    with manager.use(spec, "cpu"):
        loader.used_bytes += grow


def test_memory_a_job_leaves_behind_counts_in_the_footprint(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    # Given A, 500 B at load, whose first job leaves 600 B more (a 1,500 B budget)
    manager = manager_for(budget=1500)
    a, b = spec("A", 500), spec("B", 500)
    use_growing(manager, a, loader, 600)
    # Then A counts 1,100 B, so loading B (500 B) evicts A first; counted at
    # 500 B, both would stay, holding 1,600 B under the budget of 1,500 B
    assert manager.footprint(a, "cpu") == 1100
    use_once(manager, b)
    assert loader.events == ["load A", "unload A", "load B"]
    # And a smaller growth later leaves the footprint at the largest seen
    use_growing(manager, b, loader, 100)
    use_growing(manager, b, loader, 50)
    assert manager.footprint(b, "cpu") == 600


def test_a_reloaded_model_counts_its_growth_at_load(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    manager = manager_for(budget=5000)
    a = spec("A", 500)
    use_growing(manager, a, loader, 300)
    manager.unload_all()
    loader.used_bytes = 0
    use_once(manager, a)  # no job yet after this load: the meter sees 500 B
    assert pool(manager).used_bytes == 800


def test_growth_over_the_budget_evicts_idle_models_after_the_job(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    # Given A and B, 500 B each, under a 1,500 B budget
    manager = manager_for(budget=1500)
    a, b = spec("A", 500), spec("B", 500)
    use_once(manager, a)
    # When B's job leaves 700 B behind (B now 1,200 B: with A, 1,700 B)
    use_growing(manager, b, loader, 700)
    # Then A, idle, is evicted; B, which just ran, stays
    assert loader.events == ["load A", "load B", "unload A"]
    assert loaded(manager) == ["B"]
    assert pool(manager).used_bytes == 1200


def test_a_use_that_leaves_much_gives_free_heap_back_before_it_is_counted(
    manager_for: Callable[..., ModelManager],
    spec: Any,
    loader: FakeLoader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a trim that gives back all but 10 MiB of what a job left
    trims: list[int] = []

    def trim() -> None:
        trims.append(loader.used_bytes)
        loader.used_bytes = base + MIB + 10 * MIB  # the first job's 1 MiB stays

    manager = manager_for(budget=10**10)
    a = spec("A", 500)
    use_once(manager, a)
    base = loader.used_bytes
    monkeypatch.setattr(memory, "return_free_heap", trim)
    # When a job leaves 1 MiB, it is counted as it is; one that leaves 200 MiB is
    # trimmed first, and the 10 MiB that stayed are counted
    use_growing(manager, a, loader, MIB)
    assert (trims, manager.footprint(a, "cpu")) == ([], 500 + MIB)
    use_growing(manager, a, loader, 200 * MIB)
    assert trims == [base + MIB + 200 * MIB]
    assert manager.footprint(a, "cpu") == 500 + 10 * MIB


def test_cuda_pools_are_not_watched_after_a_use(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    # A GPU's used memory includes torch's cache, kept between jobs on purpose
    manager = manager_for(budgets={"cuda:0": 5000})
    a = spec("A", 500)
    with manager.use(a, "cuda:0"):
        loader.used_bytes += 300
    assert manager.footprint(a, "cuda:0") == 500


def test_a_model_that_grows_past_the_whole_budget_stays_and_says_what_comes(
    manager_for: Callable[..., ModelManager],
    spec: Any,
    loader: FakeLoader,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = manager_for(budget=1500)
    a = spec("A", 1000)
    use_growing(manager, a, loader, 900)  # 1,900 B now, under a 1,500 B budget
    assert loaded(manager) == ["A"]
    assert "once unloaded it will be refused as too large" in caplog.text
    manager.unload_all()
    with pytest.raises(ModelTooLarge, match="needs about") as raised:
        use_once(manager, a)
    # The figure says where it comes from and how to have it measured again (one
    # process, nothing shared: by restarting the worker)
    assert "(measured when this worker last loaded it)" in str(raised.value)
    assert "restart the worker" in str(raised.value)


class SharedFleet(LocalFleet):
    """In-process stand-in for the Redis fleet (tests/integration/test_fleet_redis.py
    runs the real one): shared, so `stoker models --forget` applies."""

    shared = True


def test_a_forgotten_measurement_is_measured_again_by_a_running_worker(
    tmp_path: Path, spec: Any, loader: FakeLoader, clock: FakeClock
) -> None:
    # Given a worker that saw A grow past its budget once, so refuses to load it again
    fleet = SharedFleet()
    settings = Settings(data_dir=tmp_path / "data", budgets={"cpu": 1500})
    manager = ModelManager(
        settings, {"fake": loader}, clock=clock, measure=loader.measure, fleet=fleet
    )
    a = spec("A", 1000)
    use_growing(manager, a, loader, 900)
    manager.unload_all()
    loader.used_bytes = 0  # what the growth held went with the unload
    with pytest.raises(ModelTooLarge, match="stoker models --forget A"):
        use_once(manager, a)
    # When an operator forgets A's measurement fleet-wide
    assert [f.bytes for f in fleet.forget("A")] == [1900]
    # Then the worker, which rereads the fleet's record at most every RECHECK_S,
    # still refuses at once, and after that loads A and counts what it takes now
    with pytest.raises(ModelTooLarge):
        use_once(manager, a)
    clock.now += RECHECK_S
    assert use_once(manager, a).name == "A"
    assert manager.footprint(a, "cpu") == 1000
    assert fleet.footprint(a.fingerprint, "cpu") == 1000


def test_overlapping_uses_are_not_measured(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    # Memory is per process (or device): with two uses at once, whose the growth is
    # cannot be told, so neither counts it
    manager = manager_for(budget=5000)
    a, b = spec("A", 500), spec("B", 500)
    with manager.use(a, "cpu"):
        with manager.use(b, "cpu"):
            loader.used_bytes += 200
        loader.used_bytes += 300
    assert (manager.footprint(a, "cpu"), manager.footprint(b, "cpu")) == (500, 500)


def test_a_meter_that_fails_after_a_use_does_not_fail_the_job(
    tmp_path: Path, spec: Any, loader: FakeLoader
) -> None:
    calls = [0]

    def measure(device: str) -> int:  # answers the load's two reads, then fails
        calls[0] += 1
        if calls[0] > 3:
            raise OSError("meter gone")
        return loader.used_bytes

    settings = Settings(data_dir=tmp_path / "data", budgets={"cpu": 5000})
    manager = ModelManager(settings, {"fake": loader}, measure=measure)
    a = spec("A", 500)
    assert use_once(manager, a).name == "A"
    assert manager.footprint(a, "cpu") == 500
    assert pool(manager).models[0].in_use == 0


def test_model_larger_than_budget_is_refused_without_evicting(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    manager = manager_for(budget=1500)
    use_once(manager, spec("A", 1000))

    with pytest.raises(ModelTooLarge) as raised:
        use_once(manager, spec("huge", 2000))

    message = str(raised.value)
    assert "needs" in message and "budget" in message and "STOKER_BUDGETS__CPU" in message
    assert "(its size on disk; it was never loaded on this kind of device)" in message
    assert loaded(manager) == ["A"]
    assert pool(manager).evictions == 0
    assert loader.events == ["load A"]


def test_pinned_model_is_never_evicted(
    manager_for: Callable[..., ModelManager], spec: Any, clock: FakeClock
) -> None:
    manager = manager_for(budget=1500, pinned_models=["A"], keep_alive_s=10)
    use_once(manager, spec("A", 1000))

    with pytest.raises(ModelTooLarge, match=r"'A' \(pinned"):
        use_once(manager, spec("B", 1000))

    clock.now += 3600
    assert manager.evict_idle() == []
    assert loaded(manager) == ["A"]
    assert pool(manager).models[0].pinned


def test_model_in_use_is_not_evicted(manager_for: Callable[..., ModelManager], spec: Any) -> None:
    manager = manager_for(budget=1500)
    a, b = spec("A", 1000), spec("B", 1000)

    with manager.use(a, "cpu"):
        with pytest.raises(ModelTooLarge, match=r"'A' \(in use"):
            use_once(manager, b)
        assert pool(manager).models[0].in_use == 1

    # Once released, A can make room for B
    use_once(manager, b)
    assert loaded(manager) == ["B"]


def test_low_estimate_with_nothing_evictable_unloads_the_new_model(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    # Given a pinned model and one whose disk size (100 B) hides its real size (800 B)
    manager = manager_for(budget=1500, pinned_models=["P"])
    use_once(manager, spec("P", 1000))
    x = spec("X", 800, disk=100)

    # When it is loaded, it does not fit after all: it is unloaded, and its size remembered
    with pytest.raises(ModelTooLarge, match="pinned"):
        use_once(manager, x)
    assert loader.events == ["load P", "load X", "unload X"]
    assert loaded(manager) == ["P"]
    assert manager.footprint(x, "cpu") == 800

    # And the next attempt is refused before loading
    with pytest.raises(ModelTooLarge):
        use_once(manager, x)
    assert loader.events[-1] == "unload X"


def test_keep_alive_evicts_idle_models(
    manager_for: Callable[..., ModelManager], spec: Any, clock: FakeClock
) -> None:
    manager = manager_for(budget=5000, keep_alive_s=60)
    a, b = spec("A", 1000), spec("B", 1000)
    use_once(manager, a)
    clock.now += 30
    use_once(manager, b)

    clock.now += 31  # A idle 61 s, B 31 s
    assert manager.evict_idle() == ["A"]
    with manager.use(b, "cpu"):
        clock.now += 120  # B in use: kept however long it runs
        assert manager.evict_idle() == []
    clock.now += 61
    assert manager.evict_idle() == ["B"]
    assert pool(manager).evictions == 2


def test_no_keep_alive_keeps_models(
    manager_for: Callable[..., ModelManager], spec: Any, clock: FakeClock
) -> None:
    manager = manager_for()
    use_once(manager, spec("A", 1000))
    clock.now += 10**6
    assert manager.evict_idle() == []


def test_failed_load_leaves_the_pool_unchanged(
    manager_for: Callable[..., ModelManager], spec: Any, loader: FakeLoader
) -> None:
    manager = manager_for(budget=5000)
    use_once(manager, spec("A", 1000))
    before = pool(manager)

    with pytest.raises(ModelLoadError):
        use_once(manager, spec("bad", 1000, fail=True))

    after = pool(manager)
    assert after.models == before.models
    assert (after.used_bytes, after.loads, after.evictions) == (1000, 1, 0)
    assert loader.used_bytes == 1000
    assert use_once(manager, spec("B", 1000)).name == "B"


def test_stats_numbers(
    manager_for: Callable[..., ModelManager], spec: Any, clock: FakeClock
) -> None:
    manager = manager_for(budget=2500)
    a, b, c = spec("A", 1000), spec("B", 1000), spec("C", 1000)
    use_once(manager, a)
    clock.now += 1
    use_once(manager, b)
    clock.now += 1
    use_once(manager, a)  # hit: B is now least recently used
    clock.now += 1
    use_once(manager, c)  # evicts B

    stats = pool(manager)
    assert stats.device == "cpu"
    assert (stats.budget_bytes, stats.used_bytes) == (2500, 2000)
    assert (stats.hits, stats.misses, stats.loads, stats.evictions) == (1, 3, 3, 1)
    first, second = stats.models
    assert (first.name, first.uses, first.loaded_at, first.last_used_at) == ("A", 2, 1000, 1002)
    assert (second.name, second.footprint_bytes, second.in_use) == ("C", 1000, 0)
    assert first.fingerprint == a.fingerprint


def test_two_names_for_the_same_files_share_one_loaded_model(
    manager_for: Callable[..., ModelManager], spec: Any
) -> None:
    # Given one file under two catalog names (two [models.X] entries), the second pinned
    manager = manager_for(pinned_models=["alias"])
    a = spec("A", 1000)
    alias = replace(a, name="alias")

    # When both are used
    first, second = use_once(manager, a), use_once(manager, alias)

    # Then it was loaded once, the second use was a hit, it is held under both names,
    # and pinning either name pins it
    assert second is first
    stats = pool(manager)
    assert (stats.loads, stats.hits) == (1, 1)
    assert manager.held("cpu") == {"A", "alias"}
    assert [m.pinned for m in stats.models] == [True]


def test_pools_are_per_device(manager_for: Callable[..., ModelManager], spec: Any) -> None:
    manager = manager_for(budgets={"cpu": 1500, "cuda:0": 1500})
    a = spec("A", 1000)
    with manager.use(a, "cpu") as on_cpu, manager.use(a, "cuda:0") as on_gpu:
        assert on_cpu is not on_gpu
    assert [p.device for p in manager.stats()] == ["cpu", "cuda:0"]


def test_default_cpu_budget_is_half_the_ram(tmp_path: Path, spec: Any, loader: FakeLoader) -> None:
    manager = ModelManager(Settings(data_dir=tmp_path), {"fake": loader}, measure=loader.measure)
    use_once(manager, spec("A", 1000))
    assert pool(manager).budget_bytes == psutil.virtual_memory().total // 2


def test_unknown_backend_and_bad_device_are_config_errors(
    manager_for: Callable[..., ModelManager], tmp_path: Path
) -> None:
    manager = manager_for()
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match="backend 'llama'"):
        use_once(manager, ModelSpec("m", "llama", tmp_path / "m.bin"))
    with pytest.raises(ConfigError, match="'gpu'"):
        use_once(manager, ModelSpec("m", "fake", tmp_path / "m.bin"), "gpu")


def test_lock_is_not_held_while_a_model_is_used(
    manager_for: Callable[..., ModelManager], spec: Any
) -> None:
    manager = manager_for(budget=5000, keep_alive_s=1)
    done = threading.Event()
    with manager.use(spec("A", 1000), "cpu"):
        thread = threading.Thread(target=lambda: done.set() if manager.evict_idle() == [] else None)
        thread.start()
        assert done.wait(5)
        thread.join()


@pytest.mark.parametrize(
    ("device", "parsed"),
    [("cpu", ("cpu", None)), ("cuda:0", ("cuda", 0)), ("cuda:12", ("cuda", 12))],
)
def test_parse_device(device: str, parsed: tuple[str, int | None]) -> None:
    assert memory.parse_device(device) == parsed


@pytest.mark.parametrize("device", ["gpu", "cuda", "cuda:x", "CPU", "cuda:-1", " cpu"])
def test_parse_device_refuses_others(device: str) -> None:
    with pytest.raises(ConfigError, match="'cpu' or 'cuda:N'"):
        memory.parse_device(device)


def test_cpu_memory_figures() -> None:
    assert memory.device_total_bytes("cpu") == psutil.virtual_memory().total
    assert 0 < memory.device_used_bytes("cpu") < memory.device_total_bytes("cpu")
    memory.release_freed_memory("cpu")
