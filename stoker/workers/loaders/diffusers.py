"""diffusers pipelines (text-to-image, Shap-E text-to-3D), loaded from a local folder.

A diffusers pipeline folder holds ``model_index.json`` and one sub-folder per component
(unet, vae, text_encoder, tokenizer, scheduler, ...). The folder is checked before the
load, so a half-copied folder fails with the component it lacks, not with a stack
trace from deep inside diffusers.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stoker.errors import MissingDependency, ModelLoadError
from stoker.workers.catalog import ModelSpec
from stoker.workers.loaders.base import short_reason, tensor_bytes

#: Files that make a component folder loadable: one of these must exist.
CONFIG_NAMES = (
    "config.json",  # models (diffusers and transformers)
    "scheduler_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "preprocessor_config.json",
)
#: Weight files of a model component (the folder has a config.json).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".onnx")
DTYPES = ("float32", "float16", "bfloat16")


def import_diffusers() -> Any:
    """The diffusers module; MissingDependency naming the ``image`` extra if absent."""
    try:
        import diffusers
    except ImportError as exc:
        raise MissingDependency("diffusers", "image", "Generating images") from exc
    return diffusers


def read_json_file(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_model_index(folder: Path, read: Callable[[Path], Any] = read_json_file) -> dict[str, Any]:
    """The folder's model_index.json, read with ``read`` (a spec's ``read_json``: the
    copy in a worker's model card); ModelLoadError when it is not a pipeline folder."""
    index = folder / "model_index.json"
    try:
        data = read(index)
    except (FileNotFoundError, NotADirectoryError):
        raise ModelLoadError(
            f"{folder} is not a diffusers pipeline folder: it has no model_index.json; "
            f"point the model's path at the folder that holds model_index.json"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read {index}: {exc}; copy the file again") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{index} is not a JSON object; copy the file again")
    return data


def components(index: dict[str, Any]) -> list[str]:
    """Names of the components ``model_index.json`` lists (those not set to null)."""
    return [
        name
        for name, value in index.items()
        if not name.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and value[0] is not None
    ]


def missing_component(folder: Path, name: str) -> str | None:
    """Why component ``name`` of ``folder`` cannot be loaded, or None when it looks whole."""
    sub = folder / name
    if not sub.is_dir():
        return "its folder does not exist"
    names = {p.name for p in sub.iterdir()}
    if not names.intersection(CONFIG_NAMES):
        return "its folder has no config file"
    if "config.json" in names and not any(p.suffix in WEIGHT_SUFFIXES for p in sub.rglob("*")):
        return "its folder has a config.json but no weights"
    return None


def check_pipeline_folder(folder: Path) -> dict[str, Any]:
    """Read ``folder``'s model_index.json and check every component it lists is there.

    Returns the index. Raises ModelLoadError naming the folder and the first missing
    component (``.../unet is missing: ...``) or saying it is not a pipeline folder.
    """
    if not folder.is_dir():
        raise ModelLoadError(
            f"{folder} is not a folder; a diffusers model is the folder that holds model_index.json"
        )
    index = read_model_index(folder)
    for name in components(index):
        why = missing_component(folder, name)
        if why is not None:
            raise ModelLoadError(
                f"{folder / name} is missing ({why}): the pipeline lists {name} in "
                f"model_index.json; copy the whole diffusers folder"
            )
    return index


def quiet_loading(diffusers: Any) -> None:
    """Turn off what loading prints that a user cannot act on: the per-component
    progress bars of diffusers and transformers (they would fill worker logs), and
    transformers' note that an image processor (a safety checker's feature extractor)
    falls back to its PIL version without torchvision, which works the same for us.
    Process-wide, which suits a worker process."""
    diffusers.utils.logging.disable_progress_bar()
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # pipelines without transformers components load without it
        return
    transformers_logging.disable_progress_bar()
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)


def torch_dtype(spec: ModelSpec, device: str) -> Any:
    """The dtype to load in: options["dtype"], else float16 on CUDA and float32 on CPU."""
    import torch

    name = spec.options.get("dtype") or ("float16" if device.startswith("cuda") else "float32")
    if name not in DTYPES:
        raise ModelLoadError(
            f"model {spec.name!r}: dtype {name!r} is not one of {', '.join(DTYPES)}; "
            f"fix options.dtype in its [models] entry"
        )
    return getattr(torch, name)


class DiffusersLoader:
    """Loads a diffusers pipeline folder with ``DiffusionPipeline.from_pretrained``."""

    backend = "diffusers"

    def prepare(self, device: str) -> None:
        """Import diffusers (and torch). Raises MissingDependency if absent."""
        import_diffusers()

    def load(self, spec: ModelSpec, device: str) -> Any:
        """The pipeline on ``device``, progress bars off, from local files only.

        Raises ModelLoadError naming the folder and component when the folder is not
        a whole pipeline or diffusers cannot load it, MissingDependency without diffusers.
        """
        diffusers = import_diffusers()
        check_pipeline_folder(spec.path)
        quiet_loading(diffusers)
        dtype = torch_dtype(spec, device)
        try:
            pipe = diffusers.DiffusionPipeline.from_pretrained(
                str(spec.path), local_files_only=True, dtype=dtype
            )
            pipe = pipe.to(device)
        except Exception as exc:
            raise ModelLoadError(
                f"could not load diffusers pipeline {spec.name!r} from {spec.path}: "
                f"{short_reason(exc)}; check the folder is a complete diffusers pipeline"
            ) from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def weights_bytes(self, model: Any) -> int:
        """Bytes of the weights of the pipeline's torch components (see
        loaders/base.py: read lazily from the files, they are not all in memory when
        the load returns)."""
        modules = [c for c in model.components.values() if hasattr(c, "parameters")]
        return tensor_bytes(modules)

    def unload(self, model: Any) -> None:
        """Drop the pipeline and give its CUDA memory back to the driver."""
        on_cuda = str(getattr(model, "device", "cpu")).startswith("cuda")
        del model
        gc.collect()
        if on_cuda:
            import torch

            torch.cuda.empty_cache()
