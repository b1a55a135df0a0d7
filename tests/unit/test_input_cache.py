"""The worker's on-disk cache of job inputs, over local storage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stoker.errors import ObjectNotFound
from stoker.storage.keys import content_input_key
from stoker.storage.local import LocalStorage
from stoker.workers.inputs import InputCache


@pytest.fixture()
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def key(n: int) -> str:
    return content_input_key(f"{n:02x}" * 32, "wav")


def test_a_miss_downloads_and_a_hit_reads_the_local_copy(
    storage: LocalStorage, tmp_path: Path
) -> None:
    storage.put_bytes(key(1), b"recording")
    cache = InputCache(storage, tmp_path / "cache", max_bytes=100)

    first = cache.path_for(key(1))
    storage.delete(key(1))  # a hit does not go to storage again
    second = cache.path_for(key(1))

    assert first == second and second.read_bytes() == b"recording"


def test_the_least_recently_used_input_makes_room(storage: LocalStorage, tmp_path: Path) -> None:
    for n in (1, 2, 3):
        storage.put_bytes(key(n), b"x" * 40)
    cache = InputCache(storage, tmp_path / "cache", max_bytes=100)
    one, two = cache.path_for(key(1)), cache.path_for(key(2))
    os.utime(one, (1, 1))  # used long ago
    os.utime(two, (2, 2))
    cache.path_for(key(2))  # used now

    cache.path_for(key(3))  # 120 bytes would not fit

    assert not one.exists() and two.exists()


def test_an_input_gone_from_storage_says_what_to_do(storage: LocalStorage, tmp_path: Path) -> None:
    cache = InputCache(storage, tmp_path / "cache", max_bytes=100)

    with pytest.raises(ObjectNotFound, match="no longer in storage") as caught:
        cache.path_for(key(9))

    assert key(9) in str(caught.value) and "submit the job again" in str(caught.value)
