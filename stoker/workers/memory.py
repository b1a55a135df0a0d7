"""How much memory a device has and how much this process uses on it.

``torch`` and ``pynvml`` are imported lazily and only for ``cuda:N`` devices, because
CUDA must be initialised only in the process that runs the model (it is not fork-safe),
and a CPU-only worker need not have either installed.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import os
import re
import sys
from functools import cache
from typing import Any

import psutil

from stoker.errors import ConfigError


def parse_device(device: str) -> tuple[str, int | None]:
    """``"cpu"`` → ``("cpu", None)``, ``"cuda:1"`` → ``("cuda", 1)``.

    Raises ConfigError for anything else.
    """
    match = re.fullmatch(r"cpu|cuda:(\d+)", device)
    if match is None:
        raise ConfigError(f"device {device!r} is not valid; use 'cpu' or 'cuda:N' (e.g. 'cuda:0')")
    return ("cuda", int(match.group(1))) if match.group(1) is not None else ("cpu", None)


def check_device(device: str) -> None:
    """Raise ConfigError unless ``device`` is valid and, for ``cuda:N``, a GPU this
    process can use, as far as what is installed here can tell: a worker started on a
    GPU that is not there would take jobs and fail every one of them.

    Asked of NVML (nvidia-ml-py), else torch (a CUDA build), else CTranslate2 (comes
    with faster-whisper); with none of them the worker starts, and a model's load
    says what is wrong.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return
    assert index is not None
    counted = cuda_device_count()
    if counted is None or index < counted[0]:
        return
    count, source = counted
    seen = (
        "no CUDA GPU"
        if count == 0
        else f"{count} CUDA GPU{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})"
    )
    raise ConfigError(
        f"device {device} is not on this machine: {source} sees {seen}. Start the worker "
        f"with --device cpu or a GPU that is listed; check `nvidia-smi`, "
        f"CUDA_VISIBLE_DEVICES and that the engines are CUDA builds."
    )


def cuda_device_count() -> tuple[int, str] | None:
    """(How many CUDA devices this process may use, who said so); None when nothing
    installed here can tell."""
    if _has_nvml():
        try:
            import pynvml

            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception:  # no NVIDIA driver (NVML's library is part of it)
            return 0, "NVML (no NVIDIA driver)"
        visible = _cuda_visible()
        if visible is not None:  # what CUDA numbers, and so what cuda:N means
            count = min(count, len(visible))
        return count, "NVML"
    torch_is_cpu_build = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.version.cuda is not None:
            return int(torch.cuda.device_count()), "torch"
        torch_is_cpu_build = True  # says nothing of the GPUs other engines may use
    if importlib.util.find_spec("ctranslate2") is not None:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()), "CTranslate2"
    return (0, "torch (a CPU build)") if torch_is_cpu_build else None


def budget_setting(device: str) -> str:
    """How to set ``device``'s budget, for error messages: a shell cannot export a
    variable named ``STOKER_BUDGETS__CUDA:0`` (compose files and systemd can)."""
    if device == "cpu":
        where = "STOKER_BUDGETS__CPU=<size>"
    else:
        where = f'STOKER_BUDGETS=\'{{"{device}": "<size>"}}\''
    return f'{where} (budgets."{device}" in the config file)'


def rss_bytes() -> int:
    """Resident set size of this process, in bytes."""
    return int(psutil.Process().memory_info().rss)


def device_total_bytes(device: str) -> int:
    """Total memory of ``device`` in bytes: RAM for ``cpu``, the GPU's memory for ``cuda:N``.

    Raises ConfigError when the device is invalid or its memory cannot be read
    (neither torch nor pynvml installed, no such GPU): set a budget for it instead.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return int(psutil.virtual_memory().total)
    assert index is not None
    try:
        if _has_nvml() or importlib.util.find_spec("torch") is None:
            return int(_nvml_memory(index).total)
        import torch

        return int(torch.cuda.get_device_properties(index).total_memory)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"cannot read the memory size of {device} ({exc}); set a budget for it with "
            f"{budget_setting(device)}"
        ) from exc


def device_used_bytes(device: str) -> int:
    """Bytes used on ``device``: this process's RSS for ``cpu``.

    For ``cuda:N``, the GPU's used memory, device-wide, so that every library counts:
    llama.cpp, CTranslate2 and ONNX Runtime allocate outside torch, whose own
    ``memory_allocated`` would read their models as 0 bytes. One worker per GPU is
    assumed (another process's allocations during a load would count as the load's).
    Read from NVML (nvidia-ml-py) when it is installed, which needs no CUDA context,
    else from CUDA through torch (``mem_get_info``); one source per process, so a
    footprint (after minus before) never mixes the two. Raises ConfigError when
    neither can be read.
    """
    kind, index = parse_device(device)
    if kind == "cpu":
        return rss_bytes()
    assert index is not None
    try:
        if _has_nvml():
            return int(_nvml_memory(index).used)
        import torch

        free, total = torch.cuda.mem_get_info(index)
        return int(total - free)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"cannot measure memory used on {device}: {exc}; install nvidia-ml-py or torch "
            f"with CUDA, and check {device} is a GPU this process may use"
        ) from exc


@cache
def _has_nvml() -> bool:
    return importlib.util.find_spec("pynvml") is not None


_contexts: set[str] = set()


def open_cuda_context(device: str) -> None:
    """Create this process's CUDA context on ``device`` before its first measured load,
    so the context (a few hundred MiB, shared by every CUDA library in the process) is
    not counted in that model's footprint. Once per device; no-op on ``cpu`` and
    without torch (then the library that creates it counts it in its first model)."""
    if not device.startswith("cuda") or device in _contexts:
        return
    _contexts.add(device)
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    try:
        torch.zeros(1, device=device)
    except Exception:  # no usable GPU: the load itself fails with its own error
        return


def release_freed_memory(device: str = "cpu") -> None:
    """Collect garbage and hand freed memory back to the OS (or the GPU).

    Without this, glibc keeps a freed model's pages and the next load reuses them,
    so the RSS delta of that load (its measured footprint) would read near zero.
    """
    gc.collect()
    if device == "cpu":
        return_free_heap()
        return
    torch = _initialised_torch()
    if torch is not None:
        torch.cuda.empty_cache()


def return_free_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim``; a no-op
    elsewhere). Milliseconds, unlike a garbage collection with torch loaded (~0.2 s)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _initialised_torch() -> Any:
    """torch, if this process has imported it and initialised CUDA; else None."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return torch
    return None


def _nvml_memory(index: int) -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise ConfigError(
            f"cannot read the memory of cuda:{index}: install torch or nvidia-ml-py, or set "
            f"a budget with {budget_setting(f'cuda:{index}')}"
        ) from exc
    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetMemoryInfo(_nvml_handle(pynvml, index))


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """NVML's handle of CUDA device ``index``.

    NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES, which CUDA (and so
    ``cuda:N``) applies: with ``CUDA_VISIBLE_DEVICES=1``, ``cuda:0`` is physical GPU 1.
    Entries may be indices or UUIDs (``GPU-…``, ``MIG-…``). Without the variable the
    numbering is NVML's (PCI bus order; set CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA's
    matches on machines with different GPU models).
    """
    entries = _cuda_visible()
    if entries is None:
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    if index >= len(entries):
        raise ConfigError(
            f"cuda:{index} is not visible to this process: CUDA_VISIBLE_DEVICES="
            f"{os.environ['CUDA_VISIBLE_DEVICES']!r} "
            f"lists {len(entries)} GPU(s), numbered from cuda:0"
        )
    entry = entries[index]
    if entry.isdigit():
        return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
    return pynvml.nvmlDeviceGetHandleByUUID(entry)


def _cuda_visible() -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES (indices or UUIDs), None when it is unset."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return [e.strip() for e in visible.split(",") if e.strip()]


@cache
def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None on other C libraries (musl, macOS)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
