"""What each model was measured to take, per device: this worker's figures and the fleet's.

A model's footprint is measured by the model manager at its load, and raised by what
its jobs leave behind (manager.py). The figures are kept here per (fingerprint,
device) after the model is evicted, so its next load is budgeted from what it really
took, and shared with other workers through the fleet (workers/fleet.py: Redis, per
fingerprint and device kind), so only a model's first load anywhere is estimated from
its size on disk. `stoker models --forget NAME` deletes a model's shared figure; a
worker whose own figure is too large for its budget rereads the shared one (at most
every ``RECHECK_S``) and, once it is gone, forgets its own too, so the next load is
estimated from disk and measured afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from stoker.workers import memory
from stoker.workers.catalog import ModelSpec
from stoker.workers.fleet import Fleet

log = logging.getLogger(__name__)

# How often a worker rereads the fleet's record of a model its own measurement says
# is too large for the pool (to notice `stoker models --forget`): a read per check.
RECHECK_S = 30.0

#: (fingerprint, device): whose figure, where.
Key = tuple[str, str]


@dataclass(frozen=True)
class Estimate:
    """What a model is expected to take before its load, and where the figure is from."""

    bytes: int
    source: str  # for the too-large error: "its size on disk", ...
    measured: bool  # by a load of it (so it may be out of date), not from its files


class Footprints:
    """Measured footprints by (fingerprint, device), and the fleet's shared record.

    Not thread-safe: the model manager calls it under its lock. Reads and writes of
    the fleet's record never raise (the shared figures are a hint; a load must not
    fail on them)."""

    def __init__(self, fleet: Fleet, clock: Callable[[], float]) -> None:
        self._fleet, self._clock = fleet, clock
        self._measured: dict[Key, int] = {}
        # The largest growth one use left behind, per key, so a reloaded model counts
        # it at once.
        self._grown: dict[Key, int] = {}
        # When a too-large measurement was last checked against the fleet's, per key.
        self._rechecked_at: dict[Key, float] = {}

    @property
    def shared(self) -> bool:
        """Whether the figures are shared with other workers (a fleet on Redis)."""
        return self._fleet.shared

    def get(self, key: Key) -> int | None:
        """This worker's figure for ``key``, None if it never loaded it."""
        return self._measured.get(key)

    def grown(self, key: Key) -> int:
        """The most one use of ``key`` has left behind so far (bytes)."""
        return self._grown.get(key, 0)

    def record(self, key: Key, footprint: int, name: str) -> None:
        """Keep ``footprint`` as the figure of ``key`` and share it with the fleet."""
        self._measured[key] = footprint
        fingerprint, device = key
        try:
            self._fleet.record_footprint(
                fingerprint, memory.parse_device(device)[0], footprint, name
            )
        except Exception as exc:
            log.warning("could not share the footprint of a load (%s)", exc)

    def record_growth(self, key: Key, growth: int) -> bool:
        """Keep ``growth`` if it is the most a use of ``key`` has left; True if so."""
        if growth <= self._grown.get(key, 0):
            return False
        self._grown[key] = growth
        return True

    def estimate(self, spec: ModelSpec, device: str, budget_bytes: int) -> Estimate:
        """What ``spec`` is expected to take on ``device``: measured here, by another
        worker, or its size on disk, in that order. A figure of this worker's over
        ``budget_bytes`` is checked against the fleet's (see :meth:`_forgotten`)."""
        key = (spec.fingerprint, device)
        measured = self._measured.get(key)
        if measured is not None and measured > budget_bytes and self._forgotten(key):
            measured = None
        if measured is not None:
            return Estimate(measured, "measured when this worker last loaded it", True)
        kind = memory.parse_device(device)[0]
        try:
            shared = self._fleet.footprint(spec.fingerprint, kind)
        except Exception as exc:  # the shared record is a hint; never fail a load on it
            log.warning("could not read shared footprints (%s); using size on disk", exc)
            shared = None
        if shared:
            return Estimate(shared, f"measured when another worker last loaded it on {kind}", True)
        disk = "its size on disk; it was never loaded on this kind of device"
        return Estimate(spec.disk_bytes(), disk, False)

    def _forgotten(self, key: Key) -> bool:
        """Whether the fleet no longer has the measurement of ``key`` that this worker
        shared (`stoker models --forget`); if so, forget it here too. Read at most
        every RECHECK_S per key; a failed read changes nothing."""
        now = self._clock()
        last = self._rechecked_at.get(key)
        if last is not None and now - last < RECHECK_S:
            return False
        self._rechecked_at[key] = now
        fingerprint, device = key
        try:
            if self._fleet.footprint(fingerprint, memory.parse_device(device)[0]) is not None:
                return False
        except Exception as exc:
            log.debug("could not reread the shared footprint of %s (%s)", fingerprint, exc)
            return False
        log.info("the measured footprint of %s on %s was forgotten: measuring afresh", *key)
        del self._measured[key]
        self._grown.pop(key, None)
        return True
