"""The last resort for a chunk stuck past its time limit.

A chunk past ``chunk_time_limit_s`` normally stops itself: its capability asks
``should_stop`` between sentences, segments, diffusion steps or prompts, and that
raises ChunkTimedOut (workers/execute.py). A chunk stuck inside one library call
never asks, and Python cannot interrupt a thread inside C code; with the solo pool
the chunk holds the worker's only consumer thread, so that worker would take no more
work, ever. So the heartbeat thread (workers/steering.py) looks at the running chunk
at every beat. Once it has run past the limit by a grace (time for the chunk to
reach its next check), its job is failed with a sentence saying so and the process
exits with EXIT_STUCK, for its supervisor (systemd, compose) to start it again. The
chunk's message was never acknowledged: Redis hands it out again after the
visibility timeout, and the worker that gets it skips it, since its job has ended.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stoker.errors import ChunkTimedOut, StokerError

log = logging.getLogger(__name__)

#: A chunk still running this long past its limit did not stop at a check: the
#: larger of a share of the limit and a minimum (checks may come seconds apart).
STUCK_GRACE_SHARE, STUCK_GRACE_MIN_S = 0.05, 10.0
#: The exit status of a worker ended by the watchdog (EX_TEMPFAIL: start it again).
EXIT_STUCK = 75


@dataclass(frozen=True)
class RunningChunk:
    """The chunk a worker runs now, as the heartbeat reports it and the watchdog times it."""

    job_id: str
    index: int
    since: float = field(default_factory=time.time)  # epoch s, for the heartbeat
    started: float = field(default_factory=time.monotonic)  # for the watchdog

    @property
    def label(self) -> str:
        return f"{self.job_id} chunk {self.index + 1}"


def stuck_after_s(limit_s: float) -> float:
    """How long a chunk runs before the watchdog ends it, for a limit of ``limit_s``."""
    return limit_s + max(limit_s * STUCK_GRACE_SHARE, STUCK_GRACE_MIN_S)


def is_stuck(chunk: RunningChunk | None, limit_s: float) -> bool:
    """Whether ``chunk`` has run past its limit and the grace (``limit_s`` 0: no limit)."""
    if not limit_s or chunk is None:
        return False
    return time.monotonic() - chunk.started >= stuck_after_s(limit_s)


def end_stuck_chunk(
    chunk: RunningChunk,
    limit_s: float,
    fail: Callable[[str, StokerError], None],
    leave: Callable[[], object] = lambda: None,
    exit_process: Callable[[int], object] = os._exit,
) -> None:
    """Fail ``chunk``'s job saying it was stuck, ``leave`` the fleet (so no one counts
    on this worker until its heartbeat expires), then end this process."""
    error = ChunkTimedOut(chunk.job_id, chunk.index, limit_s, stuck=True)
    log.error("%s", error)
    try:
        fail(chunk.job_id, error)
    except Exception as exc:  # the store is away: the redelivery runs it again
        log.error("could not record job %s as failed: %s", chunk.job_id, exc)
    try:
        leave()
    except Exception as exc:  # its heartbeat expires by itself
        log.debug("heartbeat record not removed: %s", exc)
    exit_process(EXIT_STUCK)
