"""Where a batch's inputs are found: files under a local folder, or objects under an
S3-compatible bucket's prefix (``s3://bucket/prefix/``).

Workers read every input from stoker's own storage under a content-addressed key, so
a recording in another bucket is staged through the submitting machine: downloaded to
a temporary file, submitted like a local file (hashed, probed, stored once), deleted.
One object is staged at a time, so an archive larger than the local disk still works.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from stoker.config import Settings
from stoker.storage.s3 import S3Storage, parse_s3_url


def is_s3_url(location: str) -> bool:
    return location.startswith("s3://")


def find_files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    """Files under ``folder`` (recursive) whose suffix is in ``suffixes`` (matched
    case-insensitively), sorted by relative path; hidden files and everything under
    hidden folders (names starting with ".") are skipped."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in suffixes and path.is_file():
            found.append(relative)
    return [folder / relative for relative in sorted(found)]


def list_s3(prefix_url: str, settings: Settings, suffixes: frozenset[str]) -> list[tuple[str, str]]:
    """``(name, url)`` of every object under ``prefix_url`` whose suffix is in ``suffixes``.

    Names are relative to the prefix (``talks/a.mp3``); hidden names are skipped.
    """
    if not prefix_url.endswith("/"):
        prefix_url += "/"
    storage = S3Storage(prefix_url, settings)
    found = []
    for info in storage.list(""):
        path = PurePosixPath(info.key)
        if path.suffix.lower() in suffixes and not any(p.startswith(".") for p in path.parts):
            found.append((info.key, prefix_url + info.key))
    return found


@contextmanager
def staged(url: str, settings: Settings) -> Iterator[Path]:
    """A local copy of the object at ``url``, deleted when the block ends."""
    bucket, key = parse_s3_url(url.rsplit("/", 1)[0] + "/")
    name = url.rsplit("/", 1)[1]
    storage = S3Storage(f"s3://{bucket}/{key}", settings)
    with tempfile.TemporaryDirectory(prefix="stoker-stage-") as tmp:
        yield storage.download(name, Path(tmp) / name)
