"""Where job inputs and outputs live: a local directory or an S3-compatible bucket.

Use :func:`open_storage` with the settings; code against :class:`Storage` only.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from stoker.config import Settings
from stoker.errors import ConfigError
from stoker.storage.base import ObjectInfo, Storage

__all__ = ["ObjectInfo", "Storage", "open_storage"]

_SCHEMES = "file:// (a local directory) or s3://bucket[/prefix]"


def open_storage(settings: Settings) -> Storage:
    """The storage named by ``settings.storage_url``.

    ``file://`` opens a directory (created if missing); ``s3://bucket/optional/prefix`` a
    bucket, using the ``s3_*`` settings. Contacts no server. Raises ConfigError for any
    other scheme or a malformed URL.
    """
    url = settings.storage_url
    scheme = urlsplit(url).scheme
    if scheme == "file":
        from stoker.storage.local import LocalStorage, path_from_file_url

        return LocalStorage(path_from_file_url(url), url=url)
    if scheme == "s3":
        # Imported here so processes on local storage never load boto3.
        from stoker.storage.s3 import S3Storage

        return S3Storage(url, settings)
    raise ConfigError(f"storage_url {url!r} has an unsupported scheme; use {_SCHEMES}.")
