"""A worker refuses to start where it would fail the jobs it takes: an unknown queue,
a capability whose engine is not installed, a GPU that is not there."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stoker.config import load_settings
from stoker.errors import ConfigError, InvalidInput
from stoker.workers import memory, process


def test_an_unknown_queue_is_refused_with_the_list_of_queues() -> None:
    with pytest.raises(InvalidInput, match=r"unknown queue 'gpu' in --queues.*embed, generate"):
        process.check_worker(["speak", "gpu"], "cpu")


def test_a_queue_whose_engine_is_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "installed_module", lambda module: module != "llama_cpp")
    process.check_worker(["speak", "embed"], "cpu")
    with pytest.raises(
        ConfigError, match=r"cannot run generate jobs.*'llama_cpp'.*stoker\[generate\]"
    ):
        process.check_worker(["speak", "generate"], "cpu")


@pytest.mark.parametrize(
    ("counted", "device", "refused"),
    [
        ((0, "CTranslate2"), "cuda:0", "CTranslate2 sees no CUDA GPU"),
        ((2, "NVML"), "cuda:2", r"NVML sees 2 CUDA GPUs \(cuda:0 to cuda:1\)"),
        ((1, "torch"), "cuda:1", r"torch sees 1 CUDA GPU \(cuda:0 to cuda:0\)"),
        ((2, "NVML"), "cuda:1", None),
        (None, "cuda:7", None),  # nothing here can count GPUs: the load will tell
        ((0, "NVML"), "cpu", None),
    ],
)
def test_a_gpu_that_is_not_there_is_refused(
    monkeypatch: pytest.MonkeyPatch, counted: Any, device: str, refused: str | None
) -> None:
    monkeypatch.setattr(memory, "cuda_device_count", lambda: counted)
    if refused is None:
        memory.check_device(device)
        return
    with pytest.raises(ConfigError, match=rf"device {device} is not on this machine: {refused}"):
        memory.check_device(device)


def fake_nvml(monkeypatch: pytest.MonkeyPatch, **calls: Any) -> None:
    monkeypatch.setattr(memory, "_has_nvml", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", SimpleNamespace(**calls))


def test_nvml_counts_only_the_gpus_cuda_visible_devices_lets_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_nvml(monkeypatch, nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert memory.cuda_device_count() == (4, "NVML")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    assert memory.cuda_device_count() == (2, "NVML")


def test_nvml_without_a_driver_counts_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    fake_nvml(monkeypatch, nvmlInit=no_driver)
    assert memory.cuda_device_count() == (0, "NVML (no NVIDIA driver)")


def test_the_budget_hint_is_a_setting_a_shell_can_export() -> None:
    assert memory.budget_setting("cpu").startswith("STOKER_BUDGETS__CPU=<size>")
    assert memory.budget_setting("cuda:1").startswith("""STOKER_BUDGETS='{"cuda:1": "<size>"}'""")


@pytest.mark.parametrize(
    ("counted", "detail"),
    [
        (None, "unknown: nothing installed here can count them"),
        ((0, "CTranslate2"), "none (CTranslate2); workers run on --device cpu"),
        ((2, "NVML"), "cuda:0, cuda:1 (NVML)"),
    ],
)
def test_doctor_lists_the_gpus_a_worker_may_use(
    monkeypatch: pytest.MonkeyPatch, counted: Any, detail: str
) -> None:
    from stoker.doctor import check_gpus

    monkeypatch.setattr(memory, "cuda_device_count", lambda: counted)
    check = check_gpus()
    assert check.ok and check.detail == detail


class Refusing:
    """Storage whose every call raises ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def exists(self, key: str) -> bool:
        raise self.error


def test_misconfigured_storage_stops_the_start_and_storage_that_is_down_does_not() -> None:
    from stoker.errors import StorageUnavailable

    with pytest.raises(ConfigError, match="no bucket"):
        process.check_storage(Refusing(ConfigError("no bucket")))  # type: ignore[arg-type]
    # down right now: the worker starts, and its tasks retry until storage is back
    process.check_storage(Refusing(StorageUnavailable("timed out")))  # type: ignore[arg-type]


def test_doctor_checks_that_a_chunk_ends_before_redis_hands_it_out_again(tmp_path: Path) -> None:
    from stoker.doctor import check_time_limits

    def check(**fields: object) -> tuple[bool, str, str]:
        settings = load_settings(data_dir=tmp_path, broker_url="redis://h:6379/0", **fields)
        c = check_time_limits(settings)
        return c.ok, c.detail, c.fix

    # The defaults: 3000 s, stuck at 3150 s, before the 3600 s visibility timeout
    assert check() == (
        True, "3000 s per chunk, a stuck one ends its worker at 3150 s, before the 3600 s "
        "visibility timeout", "",
    )  # fmt: skip
    # A limit whose watchdog comes after the visibility timeout, and none at all
    late_ok, late, fix = check(chunk_time_limit_s=3500)
    assert not late_ok and "ends its worker at 3675 s: not before Redis hands it out" in late
    assert fix == "set STOKER_CHUNK_TIME_LIMIT_S below STOKER_VISIBILITY_TIMEOUT_S (3600 s)"
    none_ok, none, _ = check(chunk_time_limit_s=0)
    assert not none_ok and none.startswith("none: a stuck chunk holds its worker for good")
    # And the embedded broker has no visibility timeout to race
    embedded = check_time_limits(load_settings(data_dir=tmp_path, chunk_time_limit_s=0))
    assert embedded.ok and embedded.detail == "none"
