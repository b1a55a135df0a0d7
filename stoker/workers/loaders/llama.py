"""GGUF language models (llama-cpp-python, llama.cpp underneath)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stoker.errors import MissingDependency, ModelLoadError
from stoker.workers.catalog import ModelSpec
from stoker.workers.loaders.base import short_reason
from stoker.workers.memory import parse_device

GGUF_MAGIC = b"GGUF"
DEFAULT_N_CTX = 2048


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise MissingDependency("llama-cpp-python", "generate", "Generating text") from exc
    return llama_cpp


def gguf_file(path: Path) -> Path:
    """``path`` itself, or the one ``.gguf`` file in it when it is a folder (packaged models
    are joined into a folder). Raises ModelLoadError naming the path otherwise."""
    if not path.is_dir():
        return path
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise ModelLoadError(
            f"the model folder {path} holds {len(found)} .gguf files, not one; "
            f"point the model's path at the .gguf file itself"
        )
    return found[0]


def check_gguf_header(path: Path) -> None:
    """Raise ModelLoadError naming ``path`` unless it is a readable file starting with GGUF."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelLoadError(
            f"could not read the model file {path}: {exc.strerror or exc}"
        ) from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
            f"generate loads llama.cpp GGUF models: convert the model or pick the right file"
        )


@contextlib.contextmanager
def captured_errors(llama_cpp: Any) -> Iterator[list[str]]:
    """Collect llama.cpp's log lines that report errors while the block runs.

    With ``verbose=False`` llama-cpp-python hides everything llama.cpp prints during a
    load, including why it failed ("tensor ... data is not within the file bounds");
    a load failure's message needs that reason.
    """
    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        line = text.decode("utf-8", "replace").strip()
        if "error" in line or "failed" in line:
            lines.append(line)

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger  # the library's own quiet callback

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _reason(lines: list[str], exc: BaseException) -> str:
    """The most specific reason llama.cpp gave, without its function-name prefixes."""
    for line in lines:
        if "error loading model:" in line:
            detail = line.split("error loading model:", 1)[1].strip()
            if "file bounds" in detail:
                detail += " (the file is truncated)"
            return detail
    return lines[0] if lines else short_reason(exc)


def _check_gpu_offload(llama_cpp: Any, spec: ModelSpec, device: str) -> None:
    """Refuse a CUDA load with a CPU-only llama-cpp-python, which would silently run
    every layer on the CPU of a worker that is meant to serve a GPU."""
    supports = getattr(llama_cpp, "llama_supports_gpu_offload", None)
    if supports is not None and not supports():
        raise ModelLoadError(
            f"cannot load {spec.name!r} on {device}: this llama-cpp-python was built "
            f'without GPU support; reinstall it with CMAKE_ARGS="-DGGML_CUDA=on" '
            f"pip install --force-reinstall --no-cache-dir llama-cpp-python"
        )


class LlamaLoader:
    """Loads a GGUF file as a ``llama_cpp.Llama``.

    Load options (``spec.options``, or a job's ``load_options``): ``n_ctx`` (context
    window in tokens, default 2048), ``n_gpu_layers`` (default 0 on CPU, -1 = all on
    CUDA), ``n_threads`` (default: llama.cpp picks), ``seed``.
    """

    backend = "llama"

    def prepare(self, device: str) -> None:
        """Import llama-cpp-python. Raises MissingDependency if absent."""
        _import_llama_cpp()

    def load(self, spec: ModelSpec, device: str) -> Any:
        """The model on ``device`` ("cpu" or "cuda:N"), quiet (no llama.cpp logs).

        Raises MissingDependency without llama-cpp-python, and ModelLoadError naming
        the file when it is unreadable, not GGUF, truncated or otherwise unloadable.
        """
        llama_cpp = _import_llama_cpp()
        path = gguf_file(spec.path)
        check_gguf_header(path)
        kind, index = parse_device(device)
        options = dict(spec.options)
        kwargs: dict[str, Any] = {
            "model_path": str(path),
            "n_ctx": int(options.get("n_ctx", DEFAULT_N_CTX)),
            "n_gpu_layers": int(options.get("n_gpu_layers", 0 if kind == "cpu" else -1)),
            "verbose": False,
        }
        if kind == "cuda":
            _check_gpu_offload(llama_cpp, spec, device)
            # The whole model on this worker's GPU: llama.cpp's default (layer split)
            # spreads layers over every visible GPU and ignores main_gpu.
            kwargs["split_mode"] = llama_cpp.LLAMA_SPLIT_MODE_NONE
            kwargs["main_gpu"] = index
        if options.get("n_threads"):
            kwargs["n_threads"] = int(options["n_threads"])
        if options.get("seed") is not None:
            kwargs["seed"] = int(options["seed"])
        with captured_errors(llama_cpp) as errors:
            try:
                return llama_cpp.Llama(**kwargs)
            except Exception as exc:
                raise ModelLoadError(
                    f"could not load GGUF model {spec.name!r} from {path}: "
                    f"{_reason(errors, exc)}; check the file is complete (compare its size "
                    f"or checksum with the source) and made for this llama.cpp"
                ) from exc

    def unload(self, model: Any) -> None:
        """Free the model's weights and context now, not at the next collection."""
        close = getattr(model, "close", None)
        if close is not None:
            close()
        del model
        gc.collect()
