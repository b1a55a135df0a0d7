"""One contract, two backends: a local directory and a real S3-protocol server (moto).

Every test taking ``storage`` runs against both; S3- or local-only behaviour is tested
separately at the end.
"""

from __future__ import annotations

import errno
import hashlib
import mimetypes
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from stoker.config import load_settings
from stoker.errors import ConfigError, InvalidInput, ObjectNotFound, StorageUnavailable
from stoker.storage import ObjectInfo, Storage, open_storage
from stoker.storage.local import LocalStorage
from stoker.storage.s3 import MiB, S3Storage, S3Tuning
from tests.servers import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    if request.param == "local":
        yield open_storage(load_settings(data_dir=tmp_path, storage_url=f"file://{tmp_path}/out"))
        return
    bucket, endpoint = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_endpoint")
    settings = load_settings(
        data_dir=tmp_path, storage_url=f"s3://{bucket}/some/prefix", s3_endpoint_url=endpoint
    )
    s3 = open_storage(settings)
    assert isinstance(s3, S3Storage)
    yield s3
    s3.close()


def is_s3(storage: Storage) -> bool:
    return storage.url.startswith("s3://")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the contract ---------------------------------------------------------------------


def test_remote_is_what_a_call_costs(storage: Storage) -> None:
    # A worker overlaps many calls on threads only where each is a network round trip
    assert storage.remote is is_s3(storage)


def test_put_and_get_bytes_roundtrip(storage: Storage) -> None:
    info = storage.put_bytes("jobs/j1/out.bin", b"\x00\xffdata", "application/x-test")
    assert info == ObjectInfo("jobs/j1/out.bin", 6, "application/x-test")
    assert storage.get_bytes("jobs/j1/out.bin") == b"\x00\xffdata"
    # A second put replaces the object.
    storage.put_bytes("jobs/j1/out.bin", b"new")
    assert storage.get_bytes("jobs/j1/out.bin") == b"new"


def test_put_json_stores_indented_utf8(storage: Storage) -> None:
    info = storage.put_json("jobs/j1/manifest.json", {"name": "ünï", "n": [1]})
    expected = '{\n  "name": "ünï",\n  "n": [\n    1\n  ]\n}'.encode()
    assert storage.get_bytes("jobs/j1/manifest.json") == expected
    assert info.content_type == "application/json"
    assert storage.stat("jobs/j1/manifest.json").content_type == "application/json"


def test_exists(storage: Storage) -> None:
    storage.put_bytes("a/b.txt", b"x")
    assert storage.exists("a/b.txt")
    assert not storage.exists("a/c.txt")
    assert not storage.exists("a")  # a prefix is not an object


def test_stat_gives_size_and_content_type(storage: Storage) -> None:
    # Given a .wav stored with the type local storage would guess for it
    wav_type = mimetypes.guess_type("x.wav")[0]
    assert wav_type is not None
    storage.put_bytes("jobs/j1/voice.wav", b"RIFF" * 10, wav_type)
    # Then both backends report it
    assert storage.stat("jobs/j1/voice.wav") == ObjectInfo("jobs/j1/voice.wav", 40, wav_type)


def test_list_by_prefix_is_sorted_and_stays_in_the_prefix(storage: Storage) -> None:
    for key in ["jobs/b/2", "jobs/a/1", "jobs/b/1", "jobs/bb/1", "other/1", "jobs.txt"]:
        storage.put_bytes(key, key.encode())
    assert [i.key for i in storage.list("jobs/b/")] == ["jobs/b/1", "jobs/b/2"]
    assert [i.key for i in storage.list("jobs/b")] == ["jobs/b/1", "jobs/b/2", "jobs/bb/1"]
    assert [i.key for i in storage.list()] == [
        "jobs.txt", "jobs/a/1", "jobs/b/1", "jobs/b/2", "jobs/bb/1", "other/1",
    ]  # fmt: skip
    (other,) = storage.list("other/")
    assert (other.key, other.size_bytes, other.content_type) == ("other/1", 7, None)
    # When it was written (S3 gives whole seconds): what a cache sweep goes by
    assert other.modified_at is not None and abs(other.modified_at - time.time()) < 60
    assert list(storage.list("missing/")) == []


def test_delete_is_idempotent(storage: Storage) -> None:
    storage.put_bytes("jobs/j1/x", b"x")
    storage.delete("jobs/j1/x")
    storage.delete("jobs/j1/x")
    storage.delete("never/was")
    assert not storage.exists("jobs/j1/x")
    assert list(storage.list()) == []


@pytest.mark.parametrize("method", ["get_bytes", "open", "stat"])
def test_missing_object_raises_object_not_found(storage: Storage, method: str) -> None:
    with pytest.raises(ObjectNotFound, match=r"no object at 'nope/x' in .*; check"):
        getattr(storage, method)("nope/x")


def test_download_of_missing_object_raises_and_writes_nothing(
    storage: Storage, tmp_path: Path
) -> None:
    with pytest.raises(ObjectNotFound):
        storage.download("nope/x", tmp_path / "dl" / "x")
    assert not (tmp_path / "dl" / "x").exists()


def test_put_file_and_download_12_mib(storage: Storage, tmp_path: Path) -> None:
    # Given a 12 MiB file (above the S3 multipart threshold of 8 MiB)
    source = tmp_path / "big.bin"
    with source.open("wb") as f:
        for _ in range(12):
            f.write(os.urandom(MiB))
    # When it is stored and downloaded into a directory that does not exist yet
    info = storage.put_file("jobs/j1/big.bin", source, "audio/wav")
    target = storage.download("jobs/j1/big.bin", tmp_path / "dl" / "deep" / "big.bin")
    # Then the bytes are the same
    assert info == ObjectInfo("jobs/j1/big.bin", 12 * MiB, "audio/wav")
    assert target == tmp_path / "dl" / "deep" / "big.bin"
    assert sha256_of(target) == sha256_of(source)
    assert storage.stat("jobs/j1/big.bin").size_bytes == 12 * MiB


def test_put_file_of_missing_path_is_invalid_input(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not an existing file"):
        storage.put_file("jobs/j1/x", tmp_path / "nope")


def test_open_streams_the_object(storage: Storage) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    storage.put_bytes("jobs/j1/stream.bin", data)
    with storage.open("jobs/j1/stream.bin") as f:
        first = f.read(1000)
        rest = b"".join(iter(lambda: f.read(64 * 1024), b""))
    assert first + rest == data


@pytest.mark.timeout(30)
def test_copy_has_the_bytes_size_and_given_content_type(storage: Storage) -> None:
    # Given an object stored with one content type
    data = os.urandom(3000)
    storage.put_bytes("chunks/g/ab/abc.mp3", data, "application/octet-stream")
    mp3_type = mimetypes.guess_type("x.mp3")[0]  # what local storage reports for .mp3
    assert mp3_type is not None
    # When it is copied to a job's key with another
    info = storage.copy("chunks/g/ab/abc.mp3", "jobs/j1/001 Chapter.mp3", mp3_type)
    # Then the copy has the same bytes, and the size and content type are reported
    assert info == ObjectInfo("jobs/j1/001 Chapter.mp3", 3000, mp3_type)
    assert storage.get_bytes("jobs/j1/001 Chapter.mp3") == data
    assert storage.stat("jobs/j1/001 Chapter.mp3") == info
    # And the source is still there, unchanged
    assert storage.get_bytes("chunks/g/ab/abc.mp3") == data


@pytest.mark.timeout(30)
def test_copy_of_a_missing_source_is_object_not_found(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound, match=r"no object at 'nope/x\.mp3' in .*; check"):
        storage.copy("nope/x.mp3", "jobs/j1/x.mp3")
    assert not storage.exists("jobs/j1/x.mp3")
    assert list(storage.list()) == []


@pytest.mark.timeout(30)
def test_copy_replaces_the_target_and_later_writes_stay_apart(storage: Storage) -> None:
    # Given a source and an existing object at the target key
    storage.put_bytes("src/a.bin", b"source")
    storage.put_bytes("dst/a.bin", b"old target, longer")
    # When the source is copied over it
    assert storage.copy("src/a.bin", "dst/a.bin").size_bytes == 6
    # Then the target holds the source's bytes
    assert storage.get_bytes("dst/a.bin") == b"source"
    # And writing or deleting either one later leaves the other as it was
    storage.put_bytes("src/a.bin", b"source, rewritten")
    assert storage.get_bytes("dst/a.bin") == b"source"
    storage.put_bytes("dst/a.bin", b"target, rewritten")
    assert storage.get_bytes("src/a.bin") == b"source, rewritten"
    storage.delete("src/a.bin")
    assert storage.get_bytes("dst/a.bin") == b"target, rewritten"
    # And a copy onto itself changes nothing and leaves nothing else behind
    assert storage.copy("dst/a.bin", "dst/a.bin").size_bytes == len(b"target, rewritten")
    assert [i.key for i in storage.list()] == ["dst/a.bin"]
    assert storage.get_bytes("dst/a.bin") == b"target, rewritten"


def test_url_for_serves_the_object(storage: Storage) -> None:
    storage.put_bytes("jobs/j1/out.txt", b"hello")
    url = storage.url_for("jobs/j1/out.txt", expires_s=60)
    if is_s3(storage):
        assert url.startswith("http://") and "X-Amz-Signature=" in url
    else:
        assert url.startswith("file:///") and url.endswith("/out/jobs/j1/out.txt")
    # urllib reads file:// URLs and (moto serving them) presigned GETs alike. moto does not
    # check signatures, so this proves the URL names the object, not that it is signed well.
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"hello"


def test_url_for_refuses_an_expiry_sigv4_cannot_sign(storage: Storage) -> None:
    with pytest.raises(InvalidInput, match="expiry"):
        storage.url_for("jobs/j1/out.txt", expires_s=8 * 24 * 3600)


CALLS: dict[str, Callable[[Storage, str, Path], Any]] = {
    "put_bytes": lambda s, k, p: s.put_bytes(k, b"x"),
    "put_file": lambda s, k, p: s.put_file(k, p),
    "put_json": lambda s, k, p: s.put_json(k, {}),
    "copy from": lambda s, k, p: s.copy(k, "jobs/j1/copy"),
    "copy to": lambda s, k, p: s.copy("jobs/j1/missing", k),  # InvalidInput, not not-found
    "get_bytes": lambda s, k, p: s.get_bytes(k),
    "download": lambda s, k, p: s.download(k, p.with_suffix(".out")),
    "open": lambda s, k, p: s.open(k),
    "exists": lambda s, k, p: s.exists(k),
    "stat": lambda s, k, p: s.stat(k),
    "list": lambda s, k, p: list(s.list(k)),
    "delete": lambda s, k, p: s.delete(k),
    "url_for": lambda s, k, p: s.url_for(k),
}


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../../b"])
def test_traversal_keys_are_refused_by_every_method(
    storage: Storage, key: str, tmp_path: Path
) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"x")
    for name, call in CALLS.items():
        with pytest.raises(InvalidInput, match="storage key"):
            call(storage, key, source)
            pytest.fail(f"{name} accepted {key!r}")
    assert not (tmp_path / "x").exists()


# --- S3 only ------------------------------------------------------------------------------


def s3_storage(url: str, endpoint: str, tmp_path: Path, tuning: S3Tuning) -> S3Storage:
    settings = load_settings(data_dir=tmp_path, storage_url=url, s3_endpoint_url=endpoint)
    return S3Storage(url, settings, tuning)


def test_s3_put_file_goes_multipart(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    # Given a 12 MiB file and a 5 MiB part size
    tuning = S3Tuning(multipart_threshold_bytes=5 * MiB, multipart_chunk_bytes=5 * MiB)
    s3 = s3_storage(f"s3://{s3_bucket}/p", s3_endpoint, tmp_path, tuning)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * MiB))
    # When it is stored
    s3.put_file("big.bin", source)
    s3.close()
    # Then it was uploaded in 3 parts (a multipart ETag ends in -<parts>), under the prefix
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    head = client.head_object(Bucket=s3_bucket, Key="p/big.bin")
    client.close()
    assert head["ETag"].strip('"').endswith("-3")


def test_s3_copy_below_the_threshold_is_a_stat_and_one_copy_object(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    # Given a stored 5 KB picture, and the requests the storage sends seen
    s3 = s3_storage(f"s3://{s3_bucket}/p", s3_endpoint, tmp_path, S3Tuning())
    s3.put_bytes("chunks/a.png", b"P" * 5000, "image/png")
    sent: list[str] = []
    s3._client.meta.events.register("before-send", lambda request, **_: sent.append(request.method))
    # When it is copied
    info = s3.copy("chunks/a.png", "jobs/j1/image-00.png", "image/png")
    # Then one HEAD read its size and one CopyObject (a PUT) made the copy: the managed
    # copy's own HEAD of the source is not sent
    assert sent == ["HEAD", "PUT"]
    assert info == ObjectInfo("jobs/j1/image-00.png", 5000, "image/png")
    assert s3.get_bytes("jobs/j1/image-00.png") == b"P" * 5000
    s3.close()


@pytest.mark.timeout(60)
def test_s3_copy_goes_multipart_server_side(
    s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    # Given a stored 12 MiB object and a 5 MiB part size
    tuning = S3Tuning(multipart_threshold_bytes=5 * MiB, multipart_chunk_bytes=5 * MiB)
    s3 = s3_storage(f"s3://{s3_bucket}/p", s3_endpoint, tmp_path, tuning)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * MiB))
    s3.put_file("src/big.bin", source, "application/octet-stream")
    # When it is copied
    info = s3.copy("src/big.bin", "jobs/j1/big.flac", "audio/flac")
    got = s3.download("jobs/j1/big.flac", tmp_path / "dl" / "big.flac")
    s3.close()
    # Then the copy was made in 3 parts (UploadPartCopy: a multipart ETag ends in
    # -<parts>), under the prefix, with the bytes and the new content type
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    head = client.head_object(Bucket=s3_bucket, Key="p/jobs/j1/big.flac")
    client.close()
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentType"] == "audio/flac"
    assert info == ObjectInfo("jobs/j1/big.flac", 12 * MiB, "audio/flac")
    assert sha256_of(got) == sha256_of(source)


def test_s3_list_follows_pages(s3_endpoint: str, s3_bucket: str, tmp_path: Path) -> None:
    s3 = s3_storage(f"s3://{s3_bucket}", s3_endpoint, tmp_path, S3Tuning(page_size=3))
    keys = [f"k/{i:02d}" for i in range(10)]
    for key in reversed(keys):
        s3.put_bytes(key, b"x")
    assert [i.key for i in s3.list("k/")] == keys  # 4 pages of at most 3
    s3.close()


def test_s3_missing_bucket_is_a_config_error(s3_endpoint: str, tmp_path: Path) -> None:
    s3 = s3_storage("s3://no-such-bucket-here", s3_endpoint, tmp_path, S3Tuning())
    calls = [
        lambda: s3.put_bytes("k", b"x"),
        lambda: s3.get_bytes("k"),
        lambda: s3.exists("k"),  # HEAD: a bare 404 that must not read as "no such key"
        lambda: list(s3.list()),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match="does not exist; create it"):
            call()
    s3.close()


def test_s3_unreachable_endpoint_is_transient_and_quick(tmp_path: Path) -> None:
    # Given an endpoint nobody listens on, and one try per request
    endpoint = f"http://127.0.0.1:{free_port()}"
    tuning = S3Tuning(max_attempts=1, connect_timeout_s=1, read_timeout_s=1)
    s3 = s3_storage("s3://bucket/p", endpoint, tmp_path, tuning)
    started = time.monotonic()
    for call in [lambda: s3.put_bytes("k", b"x"), lambda: s3.stat("k"), lambda: list(s3.list())]:
        with pytest.raises(StorageUnavailable, match="will be retried") as caught:
            call()
        assert caught.value.retry
    assert time.monotonic() - started < 5
    s3.close()


# --- local only ---------------------------------------------------------------------------


def test_local_root_is_created_and_guesses_content_types(tmp_path: Path) -> None:
    local = open_storage(load_settings(data_dir=tmp_path))  # default: <data_dir>/outputs
    assert isinstance(local, LocalStorage) and (tmp_path / "outputs").is_dir()
    local.put_bytes("a.json", b"{}")
    local.put_bytes("a.unknownext", b"x")
    assert local.stat("a.json").content_type == "application/json"
    assert local.stat("a.unknownext").content_type is None


def test_local_interrupted_write_leaves_no_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = LocalStorage(tmp_path / "root")

    # Given a write that dies halfway (a full disk, say)
    def half_then_fail(src: Any, out: Any, *args: Any) -> None:
        out.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("stoker.storage.local.shutil.copyfileobj", half_then_fail)
    source = tmp_path / "src"
    source.write_bytes(b"whole")
    with pytest.raises(StorageUnavailable, match="No space left"):
        local.put_file("jobs/j1/out", source)
    # and a temp file as a killed worker would leave it
    (tmp_path / "root" / "jobs" / "j1" / ".stoker-tmp-0123").write_bytes(b"half")
    # Then no object exists or is listed
    assert not local.exists("jobs/j1/out")
    assert list(local.list()) == []


def test_local_keys_cannot_escape_the_root_through_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    local = LocalStorage(tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(outside)
    with pytest.raises(InvalidInput, match="outside the storage root"):
        local.get_bytes("link/secret")


def test_local_symlinks_are_checked_at_every_part_of_a_key(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    local = LocalStorage(tmp_path / "root")
    local.put_bytes("jobs/a/x", b"x")  # "jobs" and "jobs/a" are now known real folders
    # A link as the last part of a key, under known folders, is still followed and refused
    (tmp_path / "root" / "jobs" / "a" / "file").symlink_to(outside / "secret")
    with pytest.raises(InvalidInput, match="outside the storage root"):
        local.get_bytes("jobs/a/file")
    # A link that stays inside the root is fine
    (tmp_path / "root" / "jobs" / "b").symlink_to(tmp_path / "root" / "jobs" / "a")
    assert local.get_bytes("jobs/b/x") == b"x"


@pytest.mark.timeout(30)
def test_local_copy_is_a_hard_link_or_else_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stored object
    local = LocalStorage(tmp_path / "root")
    local.put_bytes("chunks/a.mp3", b"chapter")
    source = tmp_path / "root" / "chunks" / "a.mp3"
    # When it is copied on one file system: a link, no second copy of the bytes
    local.copy("chunks/a.mp3", "jobs/j1/a.mp3")
    linked = tmp_path / "root" / "jobs" / "j1" / "a.mp3"
    assert linked.stat().st_ino == source.stat().st_ino and source.stat().st_nlink == 2

    # When links cannot be made (another device under the root)
    def cross_device(src: Any, dst: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr("stoker.storage.local.os.link", cross_device)
    local.copy("chunks/a.mp3", "jobs/j2/a.mp3")
    # Then the bytes are copied instead, and no temp file is left
    copied = tmp_path / "root" / "jobs" / "j2" / "a.mp3"
    assert copied.read_bytes() == b"chapter" and copied.stat().st_ino != source.stat().st_ino
    assert [i.key for i in local.list()] == ["chunks/a.mp3", "jobs/j1/a.mp3", "jobs/j2/a.mp3"]
    assert not list((tmp_path / "root").rglob(".stoker-tmp-*"))


def test_unknown_scheme_is_a_config_error(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, storage_url="gs://bucket/x")
    with pytest.raises(ConfigError, match=r"'gs://bucket/x'.*file://.*s3://"):
        open_storage(settings)
