"""Line files for image, mesh and speak: each line a request on top of the file's
defaults, or a refusal that names the line (jobs/line_files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.errors import InvalidInput
from stoker.jobs.base import parse_request
from stoker.jobs.image import ImageRequest
from stoker.jobs.line_files import MAX_LINES, line_requests, read_line_file
from stoker.queues.batches import Refused

DEFAULTS = {"model": "tiny", "steps": 4}


def test_each_text_line_is_a_prompt_named_by_its_line() -> None:
    items = line_requests(
        "a lighthouse\n\n  a barn  \n", DEFAULTS, field="prompt", jsonl=False, source="p.txt"
    )
    assert items == [
        {"model": "tiny", "steps": 4, "prompt": "a lighthouse", "name": "00001"},
        {"model": "tiny", "steps": 4, "prompt": "a barn", "name": "00003"},
    ]


def test_a_jsonl_line_overrides_the_defaults_and_may_name_itself() -> None:
    text = '{"prompt": "a barn", "steps": 2, "count": 3, "name": "barn.v2"}\n'
    [item] = line_requests(text, DEFAULTS, field="prompt", jsonl=True, source="p.jsonl")
    assert item == {"model": "tiny", "steps": 2, "count": 3, "prompt": "a barn", "name": "barn.v2"}


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("a barn", "line 2: not valid JSON"),
        ('["a barn"]', "line 2: a JSON object is needed"),
        ('{"prompt": "  "}', 'line 2: "prompt" must be a non-empty string'),
        ('{"prompt": 7}', 'line 2: "prompt" must be a non-empty string'),
        ('{"prompt": "x", "model": "other"}', 'remove "model" from the line'),
        ('{"prompt": "x", "name": "../up"}', "the name '../up' must be 1 to 100 letters"),
        ('{"prompt": "x", "name": "first"}', "the name 'first' is line 1's too"),
    ],
)
def test_a_line_that_is_not_a_request_is_refused_alone_naming_it(line: str, says: str) -> None:
    # Given a good first line and a bad second one
    text = '{"prompt": "a lighthouse", "name": "first"}\n' + line + "\n"
    items = line_requests(text, DEFAULTS, field="prompt", jsonl=True, source="p.jsonl")
    # Then the first is a request and the second a refusal naming file, line and fix
    assert items[0] == {**DEFAULTS, "prompt": "a lighthouse", "name": "first"}
    assert isinstance(items[1], Refused) and items[1].name == "00002"
    assert items[1].reason.startswith("p.jsonl line 2: ") and says in items[1].reason


def test_an_empty_or_huge_file_is_refused_whole() -> None:
    with pytest.raises(InvalidInput, match=r'p.jsonl has no lines; .* as \{"prompt"'):
        line_requests("\n  \n", DEFAULTS, field="prompt", jsonl=True, source="p.jsonl")
    with pytest.raises(InvalidInput, match=r"10,001 lines, over the 10,000 .* split it"):
        line_requests("x\n" * (MAX_LINES + 1), {}, field="prompt", jsonl=False, source="p.txt")


def test_a_file_is_read_as_jsonl_by_its_suffix_and_must_be_utf8(tmp_path: Path) -> None:
    jsonl = tmp_path / "p.JSONL"
    jsonl.write_text('{"prompt": "a"}\n')
    assert read_line_file(jsonl, "image", {}) == [{"prompt": "a", "name": "00001"}]
    jsonl.write_text('\ufeff{"prompt": "a"}\n')  # a byte-order mark, as some editors write
    assert read_line_file(jsonl, "image", {}) == [{"prompt": "a", "name": "00001"}]
    text = tmp_path / "p.txt"
    text.write_text('{"prompt": "a"}\n')  # in a text file, the line is the prompt
    assert read_line_file(text, "mesh", {}) == [{"prompt": '{"prompt": "a"}', "name": "00001"}]
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidInput, match=r"latin.txt is not valid UTF-8 \(bad byte at offset 3"):
        read_line_file(latin, "image", {})
    with pytest.raises(InvalidInput, match=r"cannot read .*missing.txt"):
        read_line_file(tmp_path / "missing.txt", "image", {})


def test_a_speak_line_is_a_text_and_other_kinds_take_no_line_files(tmp_path: Path) -> None:
    lines = tmp_path / "lines.jsonl"
    lines.write_text(
        '{"text": "Doors open at nine.", "name": "open", "voice": "v"}\n{"prompt": "x"}\n'
    )
    opened, wrong = read_line_file(lines, "speak", {"format": "mp3"})
    assert opened == {"format": "mp3", "text": "Doors open at nine.", "voice": "v", "name": "open"}
    assert isinstance(wrong, Refused) and '"text" must be a non-empty string' in wrong.reason
    with pytest.raises(InvalidInput, match=r"`embed` takes no file of lines; image, mesh, speak"):
        read_line_file(lines, "embed", {})


def test_an_unknown_option_of_a_line_is_named_with_the_options_there_are() -> None:
    with pytest.raises(InvalidInput, match=r"'stepz' is not an option here; .*steps, "):
        parse_request({"prompt": "x", "stepz": 3}, ImageRequest)


@pytest.mark.parametrize("name", ["../up", ".hidden", "a/b", "", "x" * 101])
def test_a_request_name_that_could_not_name_a_file_is_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match=r"invalid name"):
        parse_request({"prompt": "x", "name": name}, ImageRequest)
    assert parse_request({"prompt": "x", "name": "barn.v2_1-a"}, ImageRequest).name


def test_an_empty_string_option_is_named_as_empty() -> None:
    from stoker.jobs.generate import GenerateRequest

    with pytest.raises(InvalidInput, match=r"^system is empty; give it a value or leave it out"):
        parse_request({"prompt": "x", "system": ""}, GenerateRequest)
