"""Keeps models warm under a memory budget per device pool.

One pool per device string ("cpu", "cuda:0"). A pool's used bytes are the sum of
its models' footprints, each measured at load as the device's used memory after the
load minus before (RSS on the CPU), or the bytes of the model's weights where its
loader counts them and they are more (weights mapped from a file are not resident
when the load returns; loaders/base.py). On the CPU, a model may also keep memory
its jobs leave behind (caches, buffers allocated on first use): after each use that
ran alone in the process, free heap is given back to the OS if the use left much,
and the footprint becomes the load's delta plus the largest growth that remained,
if that is more. Measured footprints are remembered after eviction and shared with
other workers (footprints.py), so only a model's first load anywhere is estimated
from its size on disk.

Eviction is least-recently-used, never a pinned model (``settings.pinned_models``)
and never a model in use. A model that cannot fit raises ModelTooLarge, a permanent
error: retrying on the same worker would not make room.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from stoker.config import Settings
from stoker.errors import ConfigError, ModelTooLarge
from stoker.workers import memory
from stoker.workers.catalog import ModelSpec
from stoker.workers.fleet import Fleet, LocalFleet
from stoker.workers.footprints import Estimate, Footprints
from stoker.workers.loaders import Loader, default_loaders

log = logging.getLogger(__name__)

MIB = 2**20
# Share of a device's memory a pool may fill when no budget is configured for it.
DEFAULT_BUDGET_SHARE = {"cpu": 0.5, "cuda": 0.9}
# A use that leaves the process this much fuller has its free heap given back to the
# OS before its growth is counted (see ModelManager._after_use).
TRIM_AFTER_BYTES = 64 * MIB


@dataclass
class LoadedModel:
    """Snapshot of one loaded model. Times are ``clock()`` seconds."""

    name: str
    fingerprint: str
    device: str
    footprint_bytes: int
    loaded_at: float
    last_used_at: float
    uses: int
    pinned: bool
    in_use: int


@dataclass
class PoolStats:
    """Snapshot of one pool; ``used_bytes`` is the sum of its models' footprints."""

    device: str
    budget_bytes: int
    used_bytes: int
    hits: int
    misses: int
    loads: int
    evictions: int
    models: list[LoadedModel]


@dataclass(eq=False)
class _Slot:
    info: LoadedModel
    backend: str
    model: Any
    # Every name this model was asked for by (one fingerprint, several catalog names).
    names: set[str] = field(default_factory=set)
    loaded_bytes: int = 0  # the device's used-memory delta of the load itself

    @property
    def evictable(self) -> bool:
        return not self.info.pinned and self.info.in_use == 0


@dataclass
class _Pool:
    device: str
    budget_bytes: int
    slots: OrderedDict[str, _Slot]  # by fingerprint, least recently used first
    hits: int = 0
    misses: int = 0
    loads: int = 0
    evictions: int = 0

    @property
    def used_bytes(self) -> int:
        return sum(s.info.footprint_bytes for s in self.slots.values())


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f}"


def _budget_hint(device: str) -> str:
    return f"raise it with {memory.budget_setting(device)}"


class ModelManager:
    """Loads models on demand, keeps them warm, evicts them to stay under budget.

    Thread-safe. ``clock`` gives seconds (keep-alive); ``measure(device)`` gives
    the bytes used on a device (footprints). Both are injectable for tests.
    """

    def __init__(
        self,
        settings: Settings,
        loaders: Mapping[str, Loader] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        measure: Callable[[str], int] = memory.device_used_bytes,
        fleet: Fleet | None = None,
    ) -> None:
        self._settings = settings
        self._loaders = dict(default_loaders() if loaders is None else loaders)
        self._clock = clock
        self._measure = measure
        self._pinned = frozenset(settings.pinned_models)
        self._pools: dict[str, _Pool] = {}
        self._footprints = Footprints(fleet or LocalFleet(), clock)
        # One lock for all pools; held while loading, never while a model is used.
        self._lock = threading.Lock()
        # Uses started so far: a use's growth is measured only when no other use
        # overlapped it (memory is per process or per device, so an overlapping use's
        # allocations could not be told apart from this one's).
        self._uses_started = 0

    @contextmanager
    def use(self, spec: ModelSpec, device: str) -> Iterator[Any]:
        """The model of ``spec`` loaded on ``device``, kept from eviction for the block.

        Raises ModelTooLarge when it cannot fit in the pool's budget, ConfigError for
        a bad device or an unknown backend, and whatever the loader raises
        (ModelLoadError, MissingDependency); models evicted to make room stay evicted.
        """
        slot, started, alone = self._acquire(spec, device)
        # Only the CPU pool is watched: RSS is this process's own. (On CUDA the
        # device's used memory includes torch's cache, kept on purpose between jobs.)
        before = self._measure_quietly(device) if alone and device == "cpu" else None
        try:
            yield slot.model
        finally:
            with self._lock:
                slot.info.in_use -= 1
                slot.info.last_used_at = self._clock()
            if before is not None:
                self._after_use(slot, device, before, started)

    def footprint(self, spec: ModelSpec, device: str) -> int | None:
        """Bytes ``spec`` is counted for on ``device`` since its last load here (the
        load's, or what its jobs left after it, if more); None if never loaded."""
        with self._lock:
            return self._footprints.get((spec.fingerprint, device))

    def estimate(self, spec: ModelSpec, device: str) -> int:
        """Bytes ``spec`` is expected to take on ``device``: measured here, measured by
        another worker (the fleet), or its size on disk, in that order."""
        with self._lock:
            return self._estimate(spec, self._pool(device)).bytes

    def budget_bytes(self, device: str) -> int:
        """The budget of ``device``'s pool. Raises ConfigError for a bad device."""
        with self._lock:
            return self._pool(device).budget_bytes

    def held(self, device: str) -> frozenset[str]:
        """Names of the models loaded on ``device`` (each name a loaded model was used by)."""
        with self._lock:
            slots = self._pools[device].slots.values() if device in self._pools else []
            return frozenset(name for slot in slots for name in slot.names)

    def evict_idle(self) -> list[str]:
        """Unload models unused for over ``keep_alive_s`` (not pinned, not in use).

        Returns the names unloaded; none when ``keep_alive_s`` is unset.
        """
        keep_alive_s = self._settings.keep_alive_s
        if keep_alive_s is None:
            return []
        with self._lock:
            now = self._clock()
            evicted = []
            for pool in self._pools.values():
                for slot in list(pool.slots.values()):
                    if slot.evictable and now - slot.info.last_used_at > keep_alive_s:
                        self._evict(pool, slot, f"idle for {now - slot.info.last_used_at:.0f} s")
                        evicted.append(slot.info.name)
            return evicted

    def unload_all(self) -> None:
        """Unload every model, pinned ones too (shutdown). Nothing may be in use."""
        with self._lock:
            for pool in self._pools.values():
                for slot in list(pool.slots.values()):
                    self._unload(pool, slot)
                    log.info("unloaded %s from %s", slot.info.name, pool.device)

    def stats(self) -> list[PoolStats]:
        """One snapshot per pool used so far, models least recently used first."""
        with self._lock:
            return self._stats()

    def stats_unless_loading(self, device: str, wait_s: float) -> list[PoolStats] | None:
        """:meth:`stats`, with ``device``'s pool listed before its first load; None if
        the lock stays taken ``wait_s``. The lock is held for a whole load (minutes for
        a big model), and a heartbeat must not wait that long."""
        if not self._lock.acquire(timeout=wait_s):
            return None
        try:
            self._pool(device)
            return self._stats()
        finally:
            self._lock.release()

    # --- internals (called with the lock held) --------------------------------------

    def _stats(self) -> list[PoolStats]:
        return [
            PoolStats(
                device=p.device,
                budget_bytes=p.budget_bytes,
                used_bytes=p.used_bytes,
                hits=p.hits,
                misses=p.misses,
                loads=p.loads,
                evictions=p.evictions,
                models=[replace(s.info) for s in p.slots.values()],
            )
            for p in self._pools.values()
        ]

    def _acquire(self, spec: ModelSpec, device: str) -> tuple[_Slot, int, bool]:
        """The slot of ``spec`` (loaded if need be) marked in use; with the count of
        uses started, this one included, and whether it is the only use running."""
        fingerprint = spec.fingerprint
        with self._lock:
            pool = self._pool(device)
            slot = pool.slots.get(fingerprint)
            if slot is not None:
                pool.hits += 1
                pool.slots.move_to_end(fingerprint)
                slot.names.add(spec.name)
                slot.info.pinned = slot.info.pinned or spec.name in self._pinned
            else:
                pool.misses += 1
                slot = self._load(pool, spec, fingerprint)
            slot.info.uses += 1
            slot.info.in_use += 1
            slot.info.last_used_at = self._clock()
            self._uses_started += 1
            in_use = sum(s.info.in_use for p in self._pools.values() for s in p.slots.values())
            return slot, self._uses_started, in_use == 1

    def _pool(self, device: str) -> _Pool:
        pool = self._pools.get(device)
        if pool is None:
            pool = _Pool(device, self._budget(device), OrderedDict())
            self._pools[device] = pool
        return pool

    def _budget(self, device: str) -> int:
        kind, _ = memory.parse_device(device)
        configured = self._settings.budgets.get(device)
        if configured is not None:
            return int(configured)
        return int(memory.device_total_bytes(device) * DEFAULT_BUDGET_SHARE[kind])

    def _loader(self, spec: ModelSpec) -> Loader:
        loader = self._loaders.get(spec.backend)
        if loader is None:
            raise ConfigError(
                f"model {spec.name!r} has backend {spec.backend!r}, which this worker "
                f"cannot load; known backends: {', '.join(sorted(self._loaders)) or 'none'}"
            )
        return loader

    def _load(self, pool: _Pool, spec: ModelSpec, fingerprint: str) -> _Slot:
        loader = self._loader(spec)
        estimate = self._estimate(spec, pool)
        if estimate.bytes > pool.budget_bytes:
            raise self._too_large(spec.name, pool, estimate)
        self._make_room(pool, spec.name, estimate.bytes)
        model, seen, footprint, seconds = self._measured_load(loader, spec, pool.device)
        # What its jobs left behind the last time it was loaded here is more than a
        # fresh load shows: count it from the start, not after the first job.
        grown = self._footprints.grown((fingerprint, pool.device))
        footprint = max(footprint, seen + grown)
        self._footprints.record((fingerprint, pool.device), footprint, spec.name)
        now = self._clock()
        info = LoadedModel(
            name=spec.name,
            fingerprint=fingerprint,
            device=pool.device,
            footprint_bytes=footprint,
            loaded_at=now,
            last_used_at=now,
            uses=0,
            pinned=spec.name in self._pinned,
            in_use=0,
        )
        slot = pool.slots[fingerprint] = _Slot(
            info, spec.backend, model, {spec.name}, loaded_bytes=seen
        )
        pool.loads += 1
        log.info(
            "loaded %s on %s: %s MiB in %.2f s (estimated %s MiB)",
            spec.name, pool.device, _mib(footprint), seconds, _mib(estimate.bytes),
        )  # fmt: skip
        if pool.used_bytes > pool.budget_bytes:
            self._fit_after_load(pool, slot)
        return slot

    def _estimate(self, spec: ModelSpec, pool: _Pool) -> Estimate:
        return self._footprints.estimate(spec, pool.device, pool.budget_bytes)

    def _measured_load(
        self, loader: Loader, spec: ModelSpec, device: str
    ) -> tuple[Any, int, int, float]:
        """Load; return the model, the device's used-memory delta, the footprint (the
        delta or the weights' bytes, the larger) and the seconds it took."""
        prepare = getattr(loader, "prepare", None)
        if prepare is not None:
            prepare(device)  # library memory is per process, not this model's
        memory.open_cuda_context(device)  # so is a CUDA context
        memory.release_freed_memory(device)  # else the load may reuse freed pages unseen
        before = self._measure(device)
        started = time.perf_counter()
        model = loader.load(spec, device)
        seconds = time.perf_counter() - started
        seen = self._measure(device) - before
        # Weights mapped from their file are not all resident yet (loaders/base.py).
        weights_bytes = getattr(loader, "weights_bytes", None)
        weights = weights_bytes(model) if weights_bytes is not None else 0
        return model, seen, max(seen, weights, 1), seconds

    def _measure_quietly(self, device: str) -> int | None:
        """``measure(device)``, or None when it fails: a use's growth is a refinement,
        and a meter that stopped answering must not fail or mask the job. (No lock.)"""
        try:
            return self._measure(device)
        except Exception as exc:
            log.debug("could not measure %s after a use (%s)", device, exc)
            return None

    def _after_use(self, slot: _Slot, device: str, before: int, started: int) -> None:
        """Measure what a use that ran alone left behind: give free heap back to the
        OS when it is much, then count what is still held in the model's footprint.

        A job's temporary buffers stay in the C heap after they are freed (glibc keeps
        them): all-MiniLM-L6-v2 encoding 256 long texts left RSS 200-440 MiB above
        its 87 MiB of weights, and ~2 MiB above them once trimmed (1.5-19 ms). Counted,
        that heap would evict models for memory any job can reuse; left, it makes the
        worker hold far more than its budget says. So: trim, then count the rest.
        (Called without the lock: the measures and the trim take milliseconds.)"""
        after = self._measure_quietly(device)
        if after is None or self._uses_started != started:
            return
        if after - before >= TRIM_AFTER_BYTES:
            memory.return_free_heap()
            after = self._measure_quietly(device)
        with self._lock:
            # No other use began meanwhile: what changed is this one's.
            if after is not None and self._uses_started == started:
                self._grew(slot, after - before)

    def _grew(self, slot: _Slot, growth: int) -> None:
        """One use of ``slot`` alone left the device ``growth`` bytes fuller: count it
        in the footprint when it is the most seen, and evict idle models (LRU) if the
        pool is now over budget. The model stays: it just ran, and its next load says
        "too large" if it cannot fit. (Under the lock.)"""
        info = slot.info
        key = (info.fingerprint, info.device)
        if slot.model is None or not self._footprints.record_growth(key, growth):
            return
        footprint = max(info.footprint_bytes, slot.loaded_bytes + growth)
        if footprint == info.footprint_bytes:
            return
        # A few MiB more are common (pages of weights touched late): not worth a line.
        level = logging.INFO if footprint - info.footprint_bytes >= 16 * MIB else logging.DEBUG
        log.log(
            level, "%s on %s holds %s MiB after a job (%s MiB counted before)",
            info.name, info.device, _mib(footprint), _mib(info.footprint_bytes),
        )  # fmt: skip
        info.footprint_bytes = footprint
        self._footprints.record(key, footprint, info.name)
        pool = self._pools[info.device]
        for victim in [s for s in pool.slots.values() if s.evictable and s is not slot]:
            if pool.used_bytes <= pool.budget_bytes:
                return
            self._evict(pool, victim, f"{info.name} grew")
        if footprint > pool.budget_bytes:
            log.warning(
                "%s now holds %s MiB on %s, more than the pool's whole budget of %s MiB: "
                "it stays loaded, but once unloaded it will be refused as too large; %s",
                info.name, _mib(footprint), info.device, _mib(pool.budget_bytes),
                _budget_hint(pool.device),
            )  # fmt: skip
        elif pool.used_bytes > pool.budget_bytes:
            log.warning(
                "the %s pool holds %s MiB, over its %s MiB budget, with nothing idle to "
                "evict (pinned or in use); %s",
                pool.device, _mib(pool.used_bytes), _mib(pool.budget_bytes),
                _budget_hint(pool.device),
            )  # fmt: skip

    def _fit_after_load(self, pool: _Pool, slot: _Slot) -> None:
        """The estimate was low: evict others, or unload the new model and raise."""
        info = slot.info
        # Out of the pool while making room, so the others are weighed against its
        # measured footprint (and it cannot be chosen as a victim).
        del pool.slots[info.fingerprint]
        try:
            if info.footprint_bytes > pool.budget_bytes:
                # Just measured: no older figure to have measured again.
                just_now = Estimate(info.footprint_bytes, "measured by loading it just now", False)
                raise self._too_large(info.name, pool, just_now)
            self._make_room(pool, info.name, info.footprint_bytes)
        except ModelTooLarge:
            self._unload(pool, slot)
            raise
        pool.slots[info.fingerprint] = slot

    def _make_room(self, pool: _Pool, name: str, need: int) -> None:
        """Evict LRU models until ``need`` more bytes fit; raise first if they cannot."""
        victims = [s for s in pool.slots.values() if s.evictable]
        freeable = sum(s.info.footprint_bytes for s in victims)
        if pool.used_bytes - freeable + need > pool.budget_bytes:
            held = [s for s in pool.slots.values() if not s.evictable]
            raise self._held(name, pool, need, held)
        for victim in victims:
            if pool.used_bytes + need <= pool.budget_bytes:
                break
            self._evict(pool, victim, f"to make room for {name}")

    def _evict(self, pool: _Pool, slot: _Slot, why: str) -> None:
        started = time.perf_counter()
        self._unload(pool, slot)
        pool.evictions += 1
        log.info(
            "evicted %s from %s (%s): freed %s MiB in %.2f s",
            slot.info.name, pool.device, why, _mib(slot.info.footprint_bytes),
            time.perf_counter() - started,
        )  # fmt: skip

    def _unload(self, pool: _Pool, slot: _Slot) -> None:
        pool.slots.pop(slot.info.fingerprint, None)
        model, slot.model = slot.model, None
        try:
            self._loaders[slot.backend].unload(model)
        except Exception:
            # The model is out of the pool either way; a failed cleanup must not
            # leave the bookkeeping wrong.
            log.exception("unloading %s from %s failed", slot.info.name, pool.device)
        del model
        memory.release_freed_memory(pool.device)

    def _too_large(self, name: str, pool: _Pool, need: Estimate) -> ModelTooLarge:
        remeasure = ""
        if need.measured:
            remeasure = (
                f"; if that measurement is out of date, `stoker models --forget {name}` "
                f"has it measured again at its next load"
                if self._footprints.shared
                else "; if that measurement is out of date, restart the worker"
            )
        return ModelTooLarge(
            f"model {name!r} needs about {_mib(need.bytes)} MiB on {pool.device} "
            f"({need.source}) but the {pool.device} pool's budget is "
            f"{_mib(pool.budget_bytes)} MiB; {_budget_hint(pool.device)} or use a smaller "
            f"model{remeasure}"
        )

    def _held(self, name: str, pool: _Pool, need: int, held: list[_Slot]) -> ModelTooLarge:
        holders = ", ".join(
            f"{s.info.name!r} ({'pinned' if s.info.pinned else 'in use'}, "
            f"{_mib(s.info.footprint_bytes)} MiB)"
            for s in held
        )
        return ModelTooLarge(
            f"model {name!r} needs about {_mib(need)} MiB on {pool.device}, but {holders} "
            f"cannot be evicted and leave too little of the pool's {_mib(pool.budget_bytes)} "
            f"MiB budget; {_budget_hint(pool.device)}, unpin a model, or retry when idle"
        )
