"""An object in storage as an HTTP response body, read a block at a time.

The API never holds a whole output in memory: an audiobook's M4B or a batch's output
file is streamed from storage (local or S3) to the client as it is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

from fastapi.responses import StreamingResponse

from stoker.storage import Storage

#: Bytes read from storage per block of the response.
BLOCK_BYTES = 1 << 16


def object_response(
    storage: Storage,
    key: str,
    media_type: str,
    *,
    size: int | None = None,
    filename: str | None = None,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """The object at ``key`` as a streamed response; ObjectNotFound (404) when it is gone.

    ``filename`` names it for a browser or ``curl -OJ`` (Content-Disposition)."""
    handle = storage.open(key)  # opened now, so a missing object fails before the 200

    def blocks() -> Iterator[bytes]:
        with handle:
            while block := handle.read(BLOCK_BYTES):
                yield block

    sent = dict(headers or {})
    if size is not None:
        sent["Content-Length"] = str(size)
    if filename is not None:
        sent["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(filename)}"
    return StreamingResponse(blocks(), media_type=media_type, headers=sent)
