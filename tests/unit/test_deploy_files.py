"""deploy/ files name real stoker commands and settings: the compose file is parsed
with PyYAML and checked against the CLI and Settings, and validated by Compose itself
(`docker-compose config`, which needs no engine) where Compose is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from stoker.cli import app
from stoker.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def check_stoker_command(argv: list[str]) -> None:
    """``argv`` parses as a real `stoker` command line (options included)."""
    assert argv[0] == "stoker"
    group = get_command(app)
    sub = group.commands[argv[1]]  # type: ignore[attr-defined]
    ctx = sub.make_context(argv[1], list(argv[2:]), resilient_parsing=False)
    assert ctx.params is not None


def check_setting(name: str) -> None:
    """``STOKER_X__Y`` names a real setting (nested keys of dict settings are free)."""
    parts = name.removeprefix("STOKER_").lower().split("__")
    assert parts[0] in Settings.model_fields, name


def test_the_compose_file_runs_redis_with_aof_minio_the_api_and_a_worker_per_device() -> None:
    services = compose()["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["minio"]["image"].startswith("minio/")
    check_stoker_command(services["api"]["command"])
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    devices = {}
    for name, svc in workers.items():
        check_stoker_command(svc["command"])
        devices[name] = (svc["environment"].get("CUDA_VISIBLE_DEVICES"), svc["command"][-1])
    assert devices == {
        "worker-gpu0": ("0", "cuda:0"),
        "worker-gpu1": ("1", "cuda:0"),
        "worker-cpu": (None, "cpu"),
    }
    for svc in (services["api"], *workers.values()):
        env = svc["environment"]
        assert env["STOKER_BROKER_URL"] == "redis://redis:6379/0"
        assert env["STOKER_S3_ENDPOINT_URL"] == "http://minio:9000"
        for key in env:
            if key.startswith("STOKER_"):
                check_setting(key)


def test_systemd_units_and_the_env_example_name_real_commands_and_settings() -> None:
    for unit in (DEPLOY / "systemd").glob("*.service"):
        line = re.search(r"^ExecStart=\S+/stoker (.*)$", unit.read_text(), re.M)
        assert line is not None, unit
        check_stoker_command(["stoker", *line.group(1).replace("%i", "cpu").split()])
    for line in (DEPLOY / "stoker.env.example").read_text().splitlines():
        if line.startswith("STOKER_"):
            check_setting(line.split("=", 1)[0])


def test_every_systemd_timer_starts_a_unit_that_is_there() -> None:
    timers = list((DEPLOY / "systemd").glob("*.timer"))
    assert timers
    for timer in timers:
        assert "[Timer]" in timer.read_text() and "OnCalendar=" in timer.read_text()
        assert timer.with_suffix(".service").exists(), timer


def test_compose_itself_accepts_the_file() -> None:
    compose_cli = shutil.which("docker-compose")
    if compose_cli is None:  # Debian: apt-get install docker-compose
        pytest.skip("docker-compose is not installed; the structural checks above still ran")
    result = subprocess.run(
        [compose_cli, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
