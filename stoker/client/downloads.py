"""Where a job's outputs go in a download folder (`stoker get`): a batch's inputs'
outputs beside their relative paths or line names, an OpenAI batch's output and
error files.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from stoker.errors import ObjectNotFound
from stoker.queues.batches import batch_unit, children
from stoker.queues.records import JobRecord
from stoker.storage.keys import job_key

if TYPE_CHECKING:
    from stoker.client.stoker import Stoker


def openai_results(client: Stoker, batch: JobRecord, out_dir: Path) -> list[Path]:
    """For a batch submitted as an OpenAI Batch file (:meth:`Stoker.submit_openai_batch`),
    its output and error files, written to ``out_dir``; [] for any other batch."""
    from stoker.api import batch_lines

    if batch.params.get("unit") != "requests":
        return []
    try:
        kept = client.storage.get_bytes(job_key(batch.id, batch_lines.REQUESTS_NAME))
    except ObjectNotFound:  # one of the HTTP API's (its files are in GET /v1/batches)
        return []
    kids = children(client.store, batch.id)
    return batch_lines.write_results(client, kids, json.loads(kept), out_dir)


def children_outputs(client: Stoker, batch: JobRecord, out_dir: Path) -> list[tuple[str, Path]]:
    """(key, file) of each input's outputs beside its relative path: ``talks/a.mp3``
    → ``talks/a.srt``; outputs not named after their input in a folder of its name:
    line ``00007`` of a prompt file → ``00007/image-00.png``.

    Inputs that share a folder and a stem (``a.mp3`` and ``a.wav``) would write the
    same files, so theirs keep the input's whole name: ``a.mp3.srt``, ``a.wav.srt``.
    A line's name is whole already (``v1.2`` has no suffix; names are unique).
    """
    kids = children(client.store, batch.id)
    names = [_relative_name(kid) for kid in kids]
    if batch_unit(batch) != "files":
        return [
            (ref.key, out_dir / _beside(name.name, ref.name))
            for kid, name in zip(kids, names, strict=True)
            for ref in kid.outputs
            if ref.is_result
        ]
    shared = Counter(name.with_suffix("") for name in names)
    wanted = []
    for kid, name in zip(kids, names, strict=True):
        folder = out_dir / name.parent
        whole_name = shared[name.with_suffix("")] > 1
        for ref in kid.outputs:
            if not ref.is_result:
                continue
            file = ref.name
            if not file.startswith(f"{name.stem}."):
                # Not named after its input (speech.mp3 of each request of an
                # HTTP API batch made before batches had a unit): in a folder of
                # the input's name, so inputs never collide.
                wanted.append((ref.key, folder / name.name / file))
                continue
            if whole_name:
                file = name.name + file.removeprefix(name.stem)
            wanted.append((ref.key, folder / file))
    return wanted


def _beside(name: str, file: str) -> str:
    """Where output ``file`` of the line named ``name`` goes: as it is when named after
    the line (``doors-open.mp3``), else in a folder of its name (``00007/image-00.png``)."""
    return file if file.startswith(f"{name}.") else f"{name}/{file}"


def _relative_name(kid: JobRecord) -> Path:
    """Where a batch's input ``kid`` goes under a download folder: its name, a relative
    path (a recording's under the folder submitted), or its id if the name would lead
    out of the folder."""
    name = Path(str(kid.params.get("name") or kid.id))
    if name.is_absolute() or ".." in name.parts or not name.name:
        return Path(kid.id)
    return name
