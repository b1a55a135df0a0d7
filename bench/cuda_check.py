"""The CUDA paths in one short run, for a session that is lent a GPU.

Covers what the device machine can run from carried wheels (bench/device_wheels.sh):
embed (sentence-transformers), image and mesh (diffusers) and the model manager.
Every model is built here from configs with random weights, so nothing is downloaded:
an embedding model of all-MiniLM-L6-v2's shape (the same compute per sentence), and
the tiny Stable Diffusion and Shap-E pipelines of the tests.

1. **Jobs on the device**: one job per capability (and image from a picture, and with
   a mask) through stoker on the embedded default (SQLite broker, local outputs),
   served by an in-process worker on ``--device``; its state, outputs and the
   manager's measured footprint there.
2. **Budget and eviction**: a budget that fits one embedding model, two copies of it
   (two files, two models) used in turn: every use loads after evicting the other,
   and the device memory this process holds after each eviction is about one model's.
3. **embed throughput**: ``--sentences`` sentences as one stoker job against plain
   sentence-transformers at batch 64 on the same device, model warm on both sides.

generate (llama.cpp), transcribe (CTranslate2) and speak (ONNX Runtime) need CUDA
builds of their libraries that do not fit the 64 MiB the device tool carries; this
script says so rather than skipping them silently.

Usage: python bench/cuda_check.py [--device cuda:0] [--sentences 20000] [--out DIR]
       (``--device cpu`` checks the script itself on a machine without a GPU)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import markdown_table  # noqa: E402
from tests.texts import story  # noqa: E402

MIB = 2**20
#: all-MiniLM-L6-v2's shape: 6 layers of 384, 12 heads, BERT's vocabulary size.
MINILM_SHAPE = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
}


def build_embedder(folder: Path) -> Path:
    """A sentence-transformers folder: random BERT of MiniLM's shape, mean pooling."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    raw = folder.parent / f"{folder.name}-bert"
    raw.mkdir(parents=True, exist_ok=True)
    words = sorted(set(story(3000).lower().replace(".", " ").replace(",", " ").split()))
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *[f"##{c}" for c in letters]]
    vocab += [w for w in words if w not in vocab]
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(raw / "vocab.txt")).save_pretrained(raw)
    torch.manual_seed(0)
    BertModel(BertConfig(**MINILM_SHAPE)).save_pretrained(raw)
    encoder = models.Transformer(str(raw), max_seq_length=256)
    pooling = models.Pooling(encoder.get_word_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[encoder, pooling], device="cpu").save(str(folder))
    shutil.rmtree(raw)
    return folder


def device_memory(device: str) -> int:
    from stoker.workers import memory

    return memory.device_used_bytes(device)


def step(results: list[dict[str, Any]], name: str, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one check; its figures, or the error that stopped it, go in ``results``."""
    start = time.perf_counter()
    try:
        row = {"check": name, "ok": True, **fn()}
    except Exception as exc:
        traceback.print_exc()
        row = {"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    row["seconds"] = round(time.perf_counter() - start, 2)
    results.append(row)
    print(json.dumps(row), flush=True)


def starting_pictures(work: Path) -> tuple[Path, Path]:
    """A 64×64 starting picture and a mask of its right half, for image's other modes."""
    from PIL import Image

    start, mask = work / "start.png", work / "mask.png"
    Image.new("RGB", (64, 64), "teal").save(start)
    marks = Image.new("L", (64, 64), 0)
    marks.paste(255, (32, 0, 64, 64))
    marks.save(mask)
    return start, mask


def jobs_on_device(work: Path, device: str, folders: dict[str, Path]) -> list[dict[str, Any]]:
    """One job per capability through stoker on ``device``; footprints from the manager."""
    from stoker.client import Stoker
    from stoker.config import Settings
    from stoker.queues.records import JobState
    from stoker.workers.inprocess import inprocess_worker

    models = {name: {"backend": backend, "path": str(folders[name])} for name, backend in (
        ("mini", "sentence-transformers"), ("tiny_sd", "diffusers"), ("tiny_shap_e", "diffusers"),
        ("tiny_shap_e_img2img", "diffusers"),
    )}  # fmt: skip
    settings = Settings(data_dir=work / "data", models=models)  # type: ignore[arg-type]
    start, mask = starting_pictures(work)
    image = {"prompt": "a lighthouse at dusk", "model": "tiny_sd", "steps": 4, "seed": 7}
    requests = [
        ("embed", "embed", {"texts": story(200).split(". "), "model": "mini", "format": "npy"}),
        ("image", "image", image),
        # from_pipe's image-to-image and inpainting pipelines on the same warm weights
        ("image --image", "image", {**image, "path": str(start), "strength": 0.5, "steps": 8}),
        ("image --mask", "image", {**image, "path": str(start), "mask": str(mask)}),
        ("mesh", "mesh", {"prompt": "a chair", "model": "tiny_shap_e", "steps": 4, "seed": 1,
                          "resolution": 32, "format": "glb"}),
        # Shap-E's image-to-3D pipeline: a CLIP vision encoder conditions the prior
        ("mesh --image", "mesh", {"path": str(start), "model": "tiny_shap_e_img2img",
                                  "steps": 4, "seed": 1, "resolution": 32}),
    ]  # fmt: skip
    rows = []
    with Stoker(settings) as client:
        for label, kind, request in requests:
            record = client.submit(kind, request)
            with inprocess_worker(settings, [kind], device) as executor:
                record = client.wait(record.id, timeout_s=600)
                (pool,) = [p for p in executor.manager.stats() if p.device == device]
                footprints = {m.name: m.footprint_bytes for m in pool.models}
            if record.state is not JobState.SUCCEEDED:
                raise RuntimeError(f"{label} job {record.state}: {record.error}")
            rows.append(
                {
                    "kind": label,
                    "outputs": sorted(o.name for o in record.outputs),
                    "footprint_mib": round(footprints[str(request["model"])] / MIB, 1),
                    "budget_mib": round(pool.budget_bytes / MIB),
                }
            )
    return rows


def budget_and_eviction(work: Path, device: str, embedder: Path) -> dict[str, Any]:
    """Two copies of the embedder under a budget that fits one, used in turn."""
    from stoker.config import Settings
    from stoker.workers.catalog import ModelCatalog
    from stoker.workers.manager import ModelManager

    copy = work / "mini-copy"
    if not copy.exists():
        shutil.copytree(embedder, copy)
    entries = {n: {"backend": "sentence-transformers", "path": str(p)} for n, p in
               (("a", embedder), ("b", copy))}  # fmt: skip
    probe = ModelManager(Settings(data_dir=work / "probe", models=entries))  # type: ignore[arg-type]
    catalog = ModelCatalog(Settings(data_dir=work / "probe", models=entries))  # type: ignore[arg-type]
    a, b = catalog.get("a"), catalog.get("b")
    with probe.use(a, device):
        pass
    footprint = probe.footprint(a, device) or 0
    probe.unload_all()

    # On the CPU, RSS growth undercounts a model built earlier in this process (its
    # freed memory is reused), so the budget is sized from the larger of the two.
    budget = int(max(footprint, a.disk_bytes()) * 1.5)
    settings = Settings(data_dir=work / "evict", budgets={device: budget}, models=entries)  # type: ignore[arg-type]
    manager = ModelManager(settings)
    held_after = []
    for spec in (a, b, a, b):
        with manager.use(spec, device) as model:
            model.encode(["warm"], batch_size=1)
        held_after.append(round(device_memory(device) / MIB, 1))
    (stats,) = manager.stats()
    manager.unload_all()
    if device.startswith("cuda") and (stats.loads, stats.evictions) != (4, 3):
        raise RuntimeError(f"expected 4 loads and 3 evictions, got {stats}")
    return {
        "footprint_mib": round(footprint / MIB, 1),
        "budget_mib": round(budget / MIB, 1),
        "loads": stats.loads,
        "evictions": stats.evictions,
        "device_mib_after_each_use": held_after,
        "after_unload_all_mib": round(device_memory(device) / MIB, 1),
    }


def embed_throughput(work: Path, device: str, embedder: Path, n: int) -> dict[str, Any]:
    """Sentences/s: one stoker job of ``n`` sentences vs plain encode at batch 64."""
    from sentence_transformers import SentenceTransformer

    from stoker.client import Stoker
    from stoker.config import Settings
    from stoker.workers.inprocess import inprocess_worker

    words = story(n * 12).split()
    texts = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)][:n]

    plain = SentenceTransformer(str(embedder), device=device, local_files_only=True)
    plain.encode(texts[:256], batch_size=64)
    start = time.perf_counter()
    plain.encode(texts, batch_size=64)
    plain_s = time.perf_counter() - start
    del plain

    models = {"mini": {"backend": "sentence-transformers", "path": str(embedder)}}
    settings = Settings(data_dir=work / "throughput", models=models)  # type: ignore[arg-type]
    with Stoker(settings) as client, inprocess_worker(settings, ["embed"], device):
        warm = client.submit("embed", {"texts": texts[:256], "model": "mini", "format": "npy"})
        client.wait(warm.id, timeout_s=600)
        start = time.perf_counter()
        job = client.submit("embed", {"texts": texts, "model": "mini", "format": "npy"})
        record = client.wait(job.id, timeout_s=1200)
        stoker_s = time.perf_counter() - start
    return {
        "sentences": len(texts),
        "state": str(record.state),
        "plain_per_s": round(len(texts) / plain_s),
        "stoker_per_s": round(len(texts) / stoker_s),
        "ratio": round(plain_s / stoker_s, 2),
    }


def environment(device: str) -> dict[str, Any]:
    import torch

    from stoker.workers import memory

    out: dict[str, Any] = {"torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        index = memory.parse_device(device)[1] or 0
        out["name"] = torch.cuda.get_device_name(index)
    out["total_mib"] = round(memory.device_total_bytes(device) / MIB)
    return out


def not_covered() -> dict[str, str]:
    out = {}
    for kind, module, need in (
        ("generate", "llama_cpp", "a CUDA build of llama-cpp-python (GGML_CUDA=on)"),
        ("transcribe", "ctranslate2", "ctranslate2 with CUDA 12 libraries"),
        ("speak", "onnxruntime", "onnxruntime-gpu"),
    ):
        try:
            __import__(module)
            out[kind] = f"{module} imports; its CUDA path is not exercised by this script"
        except ImportError:
            out[kind] = f"not run: needs {need}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--sentences", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=None, help="folder for cuda_check.json")
    args = parser.parse_args()

    from tests.diffusers_models import tiny_pipelines

    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="stoker-cuda-"))
    try:
        step(results, "environment", lambda: environment(args.device))
        folders: dict[str, Path] = {}

        def build() -> dict[str, Any]:
            folders["mini"] = build_embedder(work / "mini")
            tiny = tiny_pipelines(work / "diffusers")
            folders["tiny_sd"], folders["tiny_shap_e"] = tiny.image, tiny.mesh
            folders["tiny_shap_e_img2img"] = tiny.mesh_from_picture
            return {"built": sorted(folders)}

        device, n = args.device, args.sentences
        step(results, "build models", build)
        step(results, "jobs on device", lambda: {"jobs": jobs_on_device(work, device, folders)})
        step(
            results,
            "budget and eviction",
            lambda: budget_and_eviction(work, device, folders["mini"]),
        )
        step(
            results, "embed throughput", lambda: embed_throughput(work, device, folders["mini"], n)
        )
        step(results, "not covered", not_covered)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [[r["check"], "yes" if r["ok"] else "NO", str(r["seconds"]),
             json.dumps({k: v for k, v in r.items() if k not in ("check", "ok", "seconds")})]
            for r in results]  # fmt: skip
    print(markdown_table(["check", "ok", "s", "figures"], rows))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cuda_check.json").write_text(json.dumps(results, indent=2))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
