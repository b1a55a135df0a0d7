"""Object keys: what is accepted, how content is digested, how keys are laid out."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from stoker.errors import InvalidInput
from stoker.storage.keys import (
    chunk_key,
    content_digest,
    input_key,
    job_key,
    job_prefix,
    validate_key,
    validate_prefix,
)

GOOD_KEYS = [
    "a",
    "jobs/123/out.wav",
    "chunks/speak/ab/abcdef.wav",
    ".hidden/..dots../x.",  # dots inside a segment are fine
    "name with spaces/ünïcødé.txt",
    "x" * 1024,
]

BAD_KEYS = [
    ("", "is empty"),
    ("/etc/passwd", "absolute"),
    ("../x", "'..'"),
    ("a/../../b", "'..'"),
    ("a/./b", "'.'"),
    (".", "'.'"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("a\\b", "backslash"),
    ("a\x00b", "control character"),
    ("a\nb", "control character"),
    ("a\x7fb", "control character"),
    ("x" * 1025, "longer than 1024 bytes"),
    ("é" * 513, "longer than 1024 bytes"),  # 1026 UTF-8 bytes, 513 characters
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_invalid_keys_are_refused_with_the_reason(key: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=r"storage key .* is invalid") as caught:
        validate_key(key)
    assert reason in str(caught.value)


@pytest.mark.parametrize("prefix", ["", "jobs/", "jobs/12", "jobs/12/"])
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "../", "jobs//", "/jobs/"])
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidInput):
        validate_prefix(prefix)


def test_content_digest_is_sha256_of_canonical_json() -> None:
    # Sorted keys, no spaces, non-ASCII kept as UTF-8.
    expected = hashlib.sha256('{"a":[1,2],"b":"é"}'.encode()).hexdigest()
    assert content_digest({"b": "é", "a": [1, 2]}) == expected


def test_content_digest_ignores_dict_order_but_not_values() -> None:
    first = {"voice": "joe", "params": {"speed": 1.0, "pitch": 0}}
    second = {"params": {"pitch": 0, "speed": 1.0}, "voice": "joe"}
    assert content_digest(first) == content_digest(second)
    assert content_digest(first) != content_digest({**first, "voice": "amy"})


def test_content_digest_of_bytes_is_their_sha256() -> None:
    data = b"\x00\x01audio"
    digest = hashlib.sha256(data).hexdigest()
    assert content_digest(data) == digest
    # Nested bytes stand for their digest, so identities need not inline the data.
    assert content_digest({"audio": data}) == content_digest({"audio": digest})


def test_content_digest_refuses_values_json_cannot_encode() -> None:
    with pytest.raises(TypeError, match="cannot digest a set"):
        content_digest({"x": {1, 2}})


def test_key_layout() -> None:
    digest = "ab" + "0" * 62
    assert chunk_key("speak", digest, "wav") == f"chunks/speak/ab/{digest}.wav"
    assert job_prefix("j1") == "jobs/j1/"
    assert job_key("j1", "out.wav") == "jobs/j1/out.wav"
    assert input_key("j1", "text.txt") == "jobs/j1/inputs/text.txt"


@pytest.mark.parametrize("call", [lambda: job_key("a/b", "x"), lambda: input_key("j1", "../x")])
def test_key_builders_refuse_unsafe_parts(call: Callable[[], str]) -> None:
    with pytest.raises(InvalidInput):
        call()
