"""Line files: a file of prompts (``image``, ``mesh``) or of texts to speak (``speak``)
→ one request per line, submitted as one batch (a child job per line,
queues/batches.py). Each line's item is its capability's main field, :data:`FIELDS`.

A ``.jsonl`` (or ``.ndjson``) file holds one object per line, ``{"prompt": str,
"name"?: str, ...}`` (``"text"`` for speak), where every other field is one of the
capability's own (``seed``, ``count``, ``voice`` …) and overrides, for that line, the
defaults given for the whole file (the CLI's options). Any other file is plain text:
each non-blank line is one item. A line's ``name`` (by default its line number,
``00007``) names it in the batch's manifest and errors, and its outputs.

A line that cannot be a request (not JSON, no prompt, a bad or repeated name)
becomes a :class:`~stoker.queues.batches.Refused` that names the line and says what
to write instead; the capability validates the others when each is submitted, so a
line that asks for an impossible size is refused alone too. Pure: no model, no store.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from stoker.errors import InvalidInput
from stoker.jobs.base import NAME_PATTERN
from stoker.jobs.text import read_text_file
from stoker.queues.batches import Refused

#: The field each line fills, by capability.
FIELDS = {"image": "prompt", "mesh": "prompt", "speak": "text"}
#: Lines a file may hold: each is a job of the batch.
MAX_LINES = 10_000
JSONL_SUFFIXES = (".jsonl", ".ndjson")

Item = dict[str, Any] | Refused


def read_line_file(path: Path, kind: str, defaults: dict[str, Any]) -> list[Item]:
    """The requests of the line file at ``path`` for ``kind`` (see the module doc), each
    on top of ``defaults``; InvalidInput naming the file when it cannot be read or holds
    nothing, or when ``kind`` takes no line files."""
    if kind not in FIELDS:
        raise InvalidInput(f"`{kind}` takes no file of lines; {', '.join(FIELDS)} do.")
    text = read_text_file(path)
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    return line_requests(text, defaults, field=FIELDS[kind], jsonl=jsonl, source=path.name)


def line_requests(
    text: str, defaults: dict[str, Any], *, field: str, jsonl: bool, source: str
) -> list[Item]:
    """One request (or Refused) per non-blank line of ``text``, in order, its item in
    ``field``."""
    shape = f'{{"{field}": "...", "name": "..."}}'
    lines = [(n, raw.strip()) for n, raw in enumerate(text.splitlines(), start=1) if raw.strip()]
    if not lines:
        written = f" as {shape}" if jsonl else ""
        raise InvalidInput(f"{source} has no lines; write one {field} per line{written}.")
    if len(lines) > MAX_LINES:
        raise InvalidInput(
            f"{source} has {len(lines):,} lines, over the {MAX_LINES:,} one file may "
            f"hold (each is a job); split it into several files."
        )
    items: list[Item] = []
    first_use: dict[str, int] = {}
    for number, line in lines:
        fields = _line_fields(line, field, shape) if jsonl else {field: line}
        if isinstance(fields, str):
            items.append(Refused(f"{number:05d}", f"{source} line {number}: {fields}"))
            continue
        name = fields.pop("name", None) or f"{number:05d}"
        if name in first_use:
            items.append(
                Refused(
                    f"{number:05d}",
                    f"{source} line {number}: the name {name!r} is line "
                    f"{first_use[name]}'s too; give each line its own name.",
                )
            )
            continue
        first_use[name] = number
        items.append({**defaults, **fields, "name": name})
    return items


def _line_fields(line: str, field: str, shape: str) -> dict[str, Any] | str:
    """A JSONL line's fields, or why it is not a request."""
    try:
        fields = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg}, column {exc.colno}); write it as {shape}."
    if not isinstance(fields, dict):
        return f"a JSON object is needed, such as {shape}."
    item = fields.get(field)
    if not isinstance(item, str) or not item.strip():
        return f'"{field}" must be a non-empty string, as in {shape}.'
    if "model" in fields:
        return 'the model is the whole file\'s (--model); remove "model" from the line.'
    name = fields.get("name")
    if name is not None and not (isinstance(name, str) and re.fullmatch(NAME_PATTERN, name)):
        return (
            f"the name {name!r} must be 1 to 100 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (it names the line's outputs)."
        )
    return fields
