"""A real deployment for end-to-end tests: Redis + S3 settings and worker processes.

Workers are `stoker worker` subprocesses (the same command an operator runs), so
SIGKILL and SIGTERM tests kill real processes. Their logs go to files the tests read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stoker.config import Settings, load_settings


@dataclass
class Deployment:
    """Settings as environment variables, so subprocesses and the test see the same."""

    env: dict[str, str]
    workdir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def settings(self, **overrides: Any) -> Settings:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return load_settings(**overrides)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def start_worker(
        self,
        queues: str = "speak,echo",
        *extra: str,
        hide: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """A `stoker worker` subprocess; ``hide``: a folder whose files this worker
        does not see (another machine's filesystem, see :func:`hiding`); ``env``:
        variables of this worker only (its own ``[models]``, say)."""
        worker = WorkerProcess.start(
            self, queues, extra, index=len(self.workers), hide=hide, env=env or {}
        )
        self.workers.append(worker)
        return worker

    def cli(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`stoker ARGS` as a user runs it (in ``cwd``) against this deployment."""
        return subprocess.run(
            [sys.executable, "-m", "stoker.cli", *args],
            env={**os.environ, **self.env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=150,
        )

    def stop_all(self) -> None:
        for w in self.workers:
            w.terminate()


def hiding(folder: Path, cmd: list[str]) -> list[str]:
    """``cmd`` run in a mount namespace of its own where ``folder`` is an empty tmpfs:
    the process sees none of the files the test puts there, as a worker on another
    machine would not. Needs root (or user namespaces); see :func:`can_hide`."""
    script = 'mount -t tmpfs stoker-hidden "$0" && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            str(folder), *cmd]  # fmt: skip


def can_hide() -> bool:
    """Whether :func:`hiding` works on this machine."""
    probe = ["unshare", "--mount", "sh", "-c", "mount -t tmpfs none /mnt"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls,
        dep: Deployment,
        queues: str,
        extra: tuple[str, ...],
        index: int,
        hide: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        log = dep.workdir / f"worker-{index}.log"
        env = {**os.environ, **dep.env, **(env or {}), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "stoker.cli", "worker", "--queues", queues, *extra]
        if hide is not None:
            cmd = hiding(hide, cmd)
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        worker = cls(proc, log)
        worker.wait_for_log("ready.", timeout_s=60)
        return worker

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.text()}")
            time.sleep(0.1)
        raise TimeoutError(f"worker log has no {needle!r} after {timeout_s}s:\n{self.text()}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
