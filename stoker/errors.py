"""The one error tree of stoker.

Every error a user or an operator can see is a :class:`StokerError`. Its branch says
what happens next:

- :class:`PermanentError` — give up at once. Retrying cannot help (bad input, an
  unknown model, a model too large for its budget). The job fails with the message.
- :class:`TransientError` — retry with backoff (storage or broker unreachable, a
  busy resource). After the configured number of retries the job fails.

Messages are one sentence a user can act on: what was wrong, with which input, and
what to do. The CLI prints ``str(error)`` and nothing else.
"""

from __future__ import annotations


class StokerError(Exception):
    """Root of every stoker error. ``retry`` tells a worker what to do with it."""

    retry: bool = False

    #: Short machine-readable name, stored in the job record's ``error.kind``.
    kind: str = "error"


class PermanentError(StokerError):
    """Retrying cannot help: fail the job (or refuse the submission) now."""

    retry = False
    kind = "permanent"


class TransientError(StokerError):
    """A passing fault: the task is retried with backoff."""

    retry = True
    kind = "transient"


# --- permanent -------------------------------------------------------------------


class InvalidInput(PermanentError):
    """The job's input or parameters are wrong; the message names which and why.

    ``param`` is the request field at fault when there is one; the HTTP API answers
    it as OpenAI's ``error.param``, which its SDKs expose to the caller.
    """

    kind = "invalid_input"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownModel(PermanentError):
    """A job named a model or voice the catalog does not have."""

    kind = "unknown_model"

    def __init__(
        self, name: str, known: list[str], what: str = "model", why: str | None = None
    ) -> None:
        self.name = name
        self.known = sorted(known)
        choices = ", ".join(self.known) if self.known else "none are installed"
        # ``why`` replaces "unknown model X" when the name is known but wrong here
        # (a model of another backend), so the user is not told it does not exist.
        super().__init__(
            f"{why or f'unknown {what} {name!r}'}; known {what}s: {choices}. "
            f"Run `stoker models` to see where they come from, or add a path under "
            f"[models] in the config."
        )


class ModelLoadError(PermanentError):
    """The model's files exist but could not be loaded (corrupt, wrong format)."""

    kind = "model_load_failed"


class ModelElsewhere(PermanentError):
    """This worker cannot find the job's model (``error``), but a live worker with its
    files serves the model's own queue, ``queue``. The chunk task hands the chunk on
    to that queue instead of failing the job (queues/tasks.py); where it cannot (the
    chunk came from that queue already), the job fails with ``error``."""

    def __init__(self, queue: str, error: PermanentError) -> None:
        super().__init__(str(error))
        self.queue = queue
        self.error = error
        self.kind = error.kind


class ChunkTimedOut(PermanentError):
    """A chunk ran past ``chunk_time_limit_s``: its job fails (running it again would
    take as long)."""

    kind = "timed_out"

    def __init__(self, job_id: str, index: int, limit_s: float, stuck: bool = False) -> None:
        how = (
            "did not stop at its next check, so its worker process exits to end it"
            if stuck
            else "was stopped"
        )
        super().__init__(
            f"chunk {index + 1} of job {job_id} ran for more than {limit_s:g} s and {how}; "
            f"submit smaller pieces of work (a shorter text, fewer prompts per job), or "
            f"raise chunk_time_limit_s (STOKER_CHUNK_TIME_LIMIT_S) on the workers and "
            f"`stoker retry {job_id}`."
        )


class WorkerStopping(TransientError):
    """The worker running a chunk was told to stop and the chunk would not end within
    ``stop_grace_s``: it goes back to its queue for another worker (queues/tasks.py)."""

    kind = "worker_stopping"

    def __init__(self, job_id: str, index: int, grace_s: float) -> None:
        super().__init__(
            f"chunk {index + 1} of job {job_id} was still running {grace_s:g} s after its "
            f"worker was told to stop (stop_grace_s); it goes back to its queue."
        )


class ChunkCrashedWorkers(PermanentError):
    """Workers that ran a chunk died before finishing it, too often: its job fails
    rather than take down another worker (a poison input)."""

    kind = "crashed_workers"

    def __init__(self, job_id: str, index: int, deaths: int) -> None:
        super().__init__(
            f"chunk {index + 1} of job {job_id}: the worker running it stopped before "
            f"finishing it {deaths} times (killed, out of memory, or crashed in its model "
            f"library, as a corrupt input can make it), so the job is failed rather than "
            f"stop another worker; the worker logs (and the kernel's, for an out-of-memory "
            f"kill) say more. Fix the input and submit it again, or give the workers more "
            f"memory and `stoker retry {job_id}`."
        )


class ModelTooLarge(PermanentError):
    """The model cannot fit in its pool's memory budget even with everything evicted."""

    kind = "model_too_large"


class MissingDependency(PermanentError):
    """An optional package needed for this capability is not installed."""

    kind = "missing_dependency"

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} requires the {package!r} package; install it with "
            f"`pip install 'stoker[{extra}]'`."
        )


class JobNotFound(PermanentError):
    """No job record has this id (or it belongs to someone else)."""

    kind = "not_found"

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job with id {job_id!r}; `stoker jobs` lists recent jobs.")


class ObjectNotFound(PermanentError):
    """A storage key does not exist."""

    kind = "not_found"


class JobCancelled(PermanentError):
    """Raised inside a worker to stop work on a job that was cancelled."""

    kind = "cancelled"


class InternalError(PermanentError):
    """A bug in stoker itself; the job fails, the worker keeps serving."""

    kind = "internal"


class ConfigError(PermanentError):
    """The settings are inconsistent or unusable; the message names the setting."""

    kind = "config"


# --- transient -------------------------------------------------------------------


class StorageUnavailable(TransientError):
    """The storage backend could not be reached or refused a request temporarily."""

    kind = "storage_unavailable"


class BrokerUnavailable(TransientError):
    """The broker or the job store could not be reached."""

    kind = "broker_unavailable"
