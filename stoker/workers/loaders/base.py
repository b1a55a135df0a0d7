"""What the model manager needs from a backend: load a model, unload it.

One loader per backend ("piper", later "whisper", "llama", ...). A loader holds no
state about loaded models; the manager owns them, measures them and decides when
they go. Loaders import their heavy libraries lazily, inside ``load``.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any, Protocol

from stoker.workers.catalog import ModelSpec


class Loader(Protocol):
    """Loads the models of one backend.

    A loader may also define ``prepare(device: str) -> None`` that imports its
    libraries: the manager calls it before measuring a load, so memory the library
    takes once per process is not counted in the first model's footprint.

    And ``weights_bytes(model) -> int``, the bytes of the loaded model's own weights:
    the manager takes the larger of that and the memory the load was seen to take.
    PyTorch models from safetensors keep their weights mapped from the file, and the
    pages join the process's RSS only as the first jobs touch them, so a load's RSS
    delta can be a third of what the warm model holds (all-MiniLM-L6-v2 on CPU:
    28 MiB seen at load, 86 MiB after one batch, 87 MiB of weights).
    """

    backend: str

    def load(self, spec: ModelSpec, device: str) -> Any:
        """The loaded model, ready to run on ``device`` ("cpu", "cuda:0", ...).

        Raises MissingDependency when the backend's package is not installed and
        ModelLoadError (naming the file) when the files cannot be loaded.
        """
        ...

    def unload(self, model: Any) -> None:
        """Release what ``model`` holds; the manager drops its last reference after."""
        ...


def short_reason(exc: BaseException) -> str:
    """The first line of an error, clipped: ONNX Runtime's and CTranslate2's messages run long."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def tensor_bytes(modules: Iterable[Any]) -> int:
    """Bytes of the distinct parameters and buffers of torch modules (a weight tied
    to two places, or shared by two modules, counts once)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in chain(module.parameters(), module.buffers()):
            pointer = tensor.data_ptr()
            if pointer in seen:
                continue
            seen.add(pointer)
            total += tensor.numel() * tensor.element_size()
    return total
