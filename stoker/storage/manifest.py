"""``manifest.json``: the one file that says what a finished job produced.

Written last by assembly, so its presence in storage means the job's artifacts are
complete. Readers (a person, `stoker get`, a downstream pipeline) need nothing else.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

MANIFEST_NAME = "manifest.json"


class ManifestEntry(BaseModel):
    name: str
    key: str
    size_bytes: int
    content_type: str
    meta: dict[str, Any] = Field(default_factory=dict)


class Manifest(BaseModel):
    job_id: str
    kind: str
    model: str | None
    params: dict[str, Any]
    outputs: list[ManifestEntry]
    chunks: list[str]  # content-addressed chunk keys, in order
    created_at: float
    finished_at: float = Field(default_factory=time.time)
    stoker_version: str = "0.1.0"
