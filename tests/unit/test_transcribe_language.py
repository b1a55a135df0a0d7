"""The language of a transcribe request: checked where faster-whisper is installed,
and by the worker where the submitting machine lacks it."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from stoker.errors import InvalidInput
from stoker.jobs import transcribe


def test_a_language_whisper_does_not_know_is_refused_naming_it() -> None:
    assert transcribe._check_language("auto", "base") is None
    assert transcribe._check_language("de", "base") == "de"
    with pytest.raises(InvalidInput, match="unknown language 'xx'; use an ISO 639-1 code"):
        transcribe._check_language("xx", "base")
    with pytest.raises(InvalidInput, match=r"model 'tiny\.en' only knows English"):
        transcribe._check_language("de", "tiny.en")


def test_without_faster_whisper_the_check_is_left_to_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a submitting machine where faster-whisper cannot be imported
    real_import = builtins.__import__

    def without(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("faster_whisper"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    # Then any code passes here (before, the ImportError escaped as an internal
    # error), and what needs no list is still checked
    assert transcribe._check_language("xx", "base") == "xx"
    with pytest.raises(InvalidInput, match="only knows English"):
        transcribe._check_language("de", "tiny.en")
