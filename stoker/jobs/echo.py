"""echo: returns its text as ``echo.txt``. No model.

It exercises the whole path (submission, queue, worker, storage, record) with no
inference, so it is what `stoker doctor --roundtrip` and bench/overhead.py use to
measure stoker's own cost per job.
"""

from __future__ import annotations

import shutil
from typing import Any

from pydantic import BaseModel

from stoker.errors import InvalidInput
from stoker.jobs.base import (
    Artifact,
    AssembleContext,
    ChunkContext,
    ChunkPlan,
    PrepareContext,
    Prepared,
    parse_request,
)


class EchoRequest(BaseModel):
    model_config = {"extra": "forbid"}

    text: str


class EchoCapability:
    kind: str = "echo"
    backend: str | None = None
    chunk_ext: str = "txt"
    chunk_content_type: str = "text/plain"
    work_stage: str = "echo"
    engines: tuple[tuple[str, str], ...] = ()

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        req: EchoRequest = parse_request(request, EchoRequest)
        if len(req.text.encode("utf-8")) > ctx.settings.max_text_bytes:
            raise InvalidInput("the text to echo is over the max_text_bytes limit.")
        chunk = ChunkPlan(payload={"text": req.text}, identity={"echo": req.text})
        return Prepared(params={"chars": len(req.text)}, model=None, chunks=[chunk])

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        ctx.out.write_text(payload["text"], encoding="utf-8")

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        chunk_files, workdir = ctx.chunk_files, ctx.workdir
        out = workdir / "echo.txt"
        shutil.copyfile(chunk_files[0], out)
        return [Artifact(out.name, out, "text/plain; charset=utf-8")]
