"""Which queues a worker consumes next: pure decision logic, no I/O.

The problem: a device that alternates between models spends its time loading them.
Jobs that name a model go on a per-model queue (``speak.m.<model>``, see
queues/app.py), so a worker can choose whose work to take. At every tick the worker
hands :func:`choose` what it sees (the backlog of each queue it could serve, the
models it holds, what fits its budget, which queues other workers serve) and
consumes exactly the queues it returns. Rules, first match wins:

1. Queues without a model (``echo``, jobs that name none) are always consumed.
2. **Starvation guard**: a model queue whose oldest message has waited at least
   ``max_wait_s`` is served alone (with the plain queues), even if that forces a
   switch. Once its old messages are taken, rule 3 keeps the now-warm model busy.
   A model that does not fit here is left to another live worker whose budget it
   fits, when there is one (the CPU box does not fail what the GPU box will run).
3. **Stay warm**: models this worker holds that have backlog: consume their queues.
4. **Switch deliberately**: otherwise take the model with the most waiting work
   (then the oldest) among those that fit the budget, leaving out queues that other
   workers already serve unless their backlog is deep (``share_backlog`` messages per
   serving worker). The held models' queues stay consumed: new work for them costs
   no load.
5. Nothing to switch to: consume the held models' queues and wait.

A model that fits no budget of this worker is never chosen by rule 4; when its work
starves and no other live worker could load it, rule 2 takes it and the job fails
with the manager's clear "too large" error instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backlog:
    """One queue's waiting work, as read from the broker at one tick."""

    queue: str
    model: str | None  # None for a queue without a model
    waiting: int  # messages not yet taken by any worker
    oldest_age_s: float = 0.0  # how long its oldest message has waited; 0 if unknown


@dataclass(frozen=True)
class View:
    """What one worker sees at one tick."""

    backlogs: list[Backlog]
    held: frozenset[str]  # model names loaded on this worker's device
    fits: Callable[[str], bool]  # could this model be loaded here (after evictions)?
    # queue → how many *other* live workers consume it (empty without a fleet view)
    served_elsewhere: Mapping[str, int] = field(default_factory=dict)
    # could another live worker serve this queue and load its model? (False without
    # a fleet view)
    fits_elsewhere: Callable[[Backlog], bool] = lambda _: False


@dataclass(frozen=True)
class Policy:
    max_wait_s: float = 300.0
    share_backlog: int = 32


@dataclass(frozen=True)
class Choice:
    """The queues to consume, and which rule chose them (for the worker log)."""

    queues: frozenset[str]
    reason: str
    target: str | None = None  # the model the choice serves, if one


def choose(view: View, policy: Policy) -> Choice:
    """The queues to consume now; see the module doc for the rules."""
    plain = {b.queue for b in view.backlogs if b.model is None}
    models = [b for b in view.backlogs if b.model is not None]
    held_queues = {b.queue for b in models if b.model in view.held}

    starving = [
        b
        for b in models
        if b.waiting
        and b.oldest_age_s >= policy.max_wait_s
        and (view.fits(b.model or "") or not view.fits_elsewhere(b))
    ]
    if starving:
        oldest = max(starving, key=lambda b: b.oldest_age_s)
        return Choice(frozenset(plain | {oldest.queue}), "starving", oldest.model)

    busy = sorted(
        (b for b in models if b.model in view.held and b.waiting), key=lambda b: -b.waiting
    )
    if busy:
        return Choice(frozenset(plain | {b.queue for b in busy}), "warm", busy[0].model)

    candidates = [b for b in models if b.waiting and view.fits(b.model or "")]
    candidates = [b for b in candidates if not _taken(b, view, policy)]
    if candidates:
        best = max(candidates, key=lambda b: (b.waiting, b.oldest_age_s))
        return Choice(frozenset(plain | held_queues | {best.queue}), "switch", best.model)
    return Choice(frozenset(plain | held_queues), "idle")


def _taken(backlog: Backlog, view: View, policy: Policy) -> bool:
    """Another worker serves this queue and its backlog is not deep enough to share."""
    others = view.served_elsewhere.get(backlog.queue, 0)
    return others > 0 and backlog.waiting < policy.share_backlog * others
