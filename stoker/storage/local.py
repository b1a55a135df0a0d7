"""Storage in a local directory: the embedded default (``file://<data_dir>/outputs``).

Each key is a file under the root. Writes go to a temp file in the target's directory and
are moved into place with :func:`os.replace`, so a worker killed mid-write never leaves a
half-written object that :meth:`LocalStorage.exists` would report. Since no write changes a
file in place, :meth:`LocalStorage.copy` can be a hard link. Nothing is stored besides the
bytes: content types are guessed from the key's extension.
"""

from __future__ import annotations

import errno
import mimetypes
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

from stoker.errors import ConfigError, InvalidInput, ObjectNotFound, StorageUnavailable
from stoker.storage.base import (
    JSON_CONTENT_TYPE,
    OCTET_STREAM,
    ObjectInfo,
    check_expiry,
    json_bytes,
    require_file,
)
from stoker.storage.keys import validate_key, validate_prefix

# Temp files of writes in progress; list() skips them.
_TMP_PREFIX = ".stoker-tmp-"
# Directories seen to be real (not symlinks), remembered up to this many.
_REAL_DIRS_MAX = 4096
# Why os.link may fail where a copy works: another device, no links on this file
# system (or not allowed: fs.protected_hardlinks), too many links to one file.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def path_from_file_url(url: str) -> Path:
    """The directory a ``file://`` URL names. Raises ConfigError for another scheme.

    Accepts what Settings builds (``file://`` + a raw path, even a relative one) as well as
    proper URIs (``file:///abs/path%20x``, ``file://localhost/abs``).
    """
    if not url.startswith("file://"):
        raise ConfigError(f"storage URL {url!r} is not a file:// URL; use file:///abs/path.")
    raw = unquote(url.removeprefix("file://"))
    raw = raw.removeprefix("localhost") if raw.startswith("localhost/") else raw
    if not raw:
        raise ConfigError(f"storage URL {url!r} names no directory; use file:///abs/path.")
    return Path(raw).expanduser()


class LocalStorage:
    """A :class:`~stoker.storage.base.Storage` rooted at a directory (created if missing)."""

    remote = False

    def __init__(self, root: Path, url: str | None = None) -> None:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the storage directory {root}: {exc.strerror}; "
                f"fix storage_url or the directory's permissions."
            ) from exc
        self.root = root.resolve()
        self.url = url if url is not None else self.root.as_uri()
        self._real_dirs: set[str] = set()  # see _has_symlink

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r})"

    # --- writing ----------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> ObjectInfo:
        self._write(key, lambda out: out.write(data))
        return ObjectInfo(key, len(data), content_type)

    def put_file(self, key: str, path: Path, content_type: str = OCTET_STREAM) -> ObjectInfo:
        size = require_file(path, validate_key(key))
        self._write(key, lambda out: _copy_from(path, out))
        return ObjectInfo(key, size, content_type)

    def put_json(self, key: str, obj: Any) -> ObjectInfo:
        return self.put_bytes(key, json_bytes(obj), JSON_CONTENT_TYPE)

    def copy(self, src_key: str, dst_key: str, content_type: str = OCTET_STREAM) -> ObjectInfo:
        target = self._path(dst_key)  # both keys checked before anything is read
        source = self._existing(src_key)
        try:
            _ensure_dir(target.parent)
            size = source.stat().st_size
            _atomic_link(source, target)
        except FileNotFoundError as exc:  # the source deleted between the check and the link
            raise self._not_found(src_key) from exc
        except OSError as exc:
            raise _os_error(exc, dst_key, self.url) from exc
        return ObjectInfo(dst_key, size, content_type)

    def delete(self, key: str) -> None:
        target = self._path(key)
        try:
            target.unlink(missing_ok=True)
        except IsADirectoryError:
            return  # a "directory" is a prefix of other keys, not an object
        except OSError as exc:
            raise _os_error(exc, key, self.url) from exc
        self._prune_empty_dirs(target.parent)

    # --- reading ----------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as f:
            return f.read()

    def download(self, key: str, path: Path) -> Path:
        source = self._existing(key)
        _ensure_dir(path.parent)
        _atomic_write(path, lambda out: _copy_from(source, out))
        return path

    def open(self, key: str) -> BinaryIO:
        try:
            return self._existing(key).open("rb")
        except FileNotFoundError as exc:  # deleted between the check and the open
            raise self._not_found(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ObjectInfo:
        size = self._existing(key).stat().st_size
        return ObjectInfo(key, size, mimetypes.guess_type(key, strict=False)[0])

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        # Only walk the deepest directory the prefix fully names.
        start = self.root.joinpath(*prefix.split("/")[:-1])
        found: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(start):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and not name.startswith(_TMP_PREFIX):
                    st = (Path(dirpath) / name).stat()
                    found.append(ObjectInfo(key, st.st_size, modified_at=st.st_mtime))
        # Code-point order of str is the byte order of UTF-8, which is what S3 returns.
        yield from sorted(found, key=lambda info: info.key)

    def url_for(self, key: str, expires_s: int | None = None) -> str:
        check_expiry(expires_s)
        return self._path(key).as_uri()

    # --- helpers ----------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file for ``key``; raises InvalidInput if it would lie outside the root."""
        parts = validate_key(key).split("/")
        path = self.root.joinpath(*parts)
        # validate_key already refuses '..', so only a symlink can lead out.
        if self._has_symlink(parts) and not path.resolve().is_relative_to(self.root):
            raise InvalidInput(
                f"storage key {key!r} resolves outside the storage root {self.url}; "
                f"remove the symlink or use another key."
            )
        return path

    def _has_symlink(self, parts: Sequence[str]) -> bool:
        """Whether any part of the path of ``parts`` under the root is a symlink.

        One lstat per part not seen before, where resolving the whole path took one per
        part on every call: a small job's few writes to its own folder check it once.
        """
        current = str(self.root)
        for i, part in enumerate(parts):
            current = f"{current}{os.sep}{part}"
            last = i == len(parts) - 1
            if not last and current in self._real_dirs:
                continue
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return False  # the rest does not exist yet: nothing in it is a link
            if stat.S_ISLNK(mode):
                return True
            if not last and stat.S_ISDIR(mode):
                if len(self._real_dirs) >= _REAL_DIRS_MAX:
                    self._real_dirs.clear()
                self._real_dirs.add(current)
        return False

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise self._not_found(key)
        return path

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(f"no object at {key!r} in {self.url}; check the key or job id.")

    def _write(self, key: str, fill: Callable[[BinaryIO], object]) -> None:
        target = self._path(key)
        try:
            _ensure_dir(target.parent)
            _atomic_write(target, fill)
        except OSError as exc:
            raise _os_error(exc, key, self.url) from exc

    def _prune_empty_dirs(self, directory: Path) -> None:
        # Keeps the tree (and list()'s walk) from filling with empty job directories.
        while directory != self.root:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty, or another writer just used it
            directory = directory.parent


def _ensure_dir(directory: Path) -> None:
    # A stat first: on some file systems mkdir of an existing directory costs 100×
    # more than a stat, and nearly every write goes to a directory that exists.
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)


def _atomic_write(target: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Write via ``fill`` to a temp file beside ``target``, then rename it into place."""
    tmp_name = target.parent / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
    # Not mkstemp: its 0600 mode would stick to the object; this one follows the umask.
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
        os.replace(tmp_name, target)
    except BaseException:
        tmp_name.unlink(missing_ok=True)
        raise


def _atomic_link(source: Path, target: Path) -> None:
    """Make ``target`` a hard link to ``source`` (a copy where links cannot be made),
    replacing it in one rename like :func:`_atomic_write`.

    Sharing the inode is safe because every write here replaces a file with a new one
    (os.replace) instead of writing into it: a later write to either key leaves the
    other as it was.
    """
    tmp_name = target.parent / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
    try:
        os.link(source, tmp_name)
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        # Another device under the root (a mount), or a file system without links.
        _atomic_write(target, lambda out: _copy_from(source, out))
        return
    try:
        os.replace(tmp_name, target)
    finally:
        # rename(2) does nothing when both names already link one file (a copy onto
        # itself, or through a symlinked folder): the temp name is left to remove.
        tmp_name.unlink(missing_ok=True)


def _copy_from(source: Path, out: BinaryIO) -> None:
    with source.open("rb") as src:
        shutil.copyfileobj(src, out, 1024 * 1024)


def _os_error(exc: OSError, key: str, url: str) -> Exception:
    """Translate a filesystem error on ``key`` into the error tree."""
    if isinstance(exc, IsADirectoryError | NotADirectoryError | FileExistsError):
        return InvalidInput(
            f"storage key {key!r} clashes with another key in {url} (one is a prefix "
            f"'directory' of the other); choose a different key."
        )
    if isinstance(exc, PermissionError):
        return ConfigError(
            f"no permission to write {key!r} in {url}; fix the directory's permissions."
        )
    # Disk full, I/O errors: may pass once space is freed or the disk recovers.
    return StorageUnavailable(
        f"could not write {key!r} in {url}: {exc.strerror or exc}; retry when the disk is fixed."
    )
