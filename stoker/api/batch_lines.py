"""The lines of an OpenAI Batch file, in and out: a request line → a stoker request
(or the reason it is none), and a job that ended → its line of the output file (or of
the error file), as OpenAI writes them.

Shared by the HTTP API's Batches (api/batches.py) and the CLI's (`stoker submit|run
batch`, :meth:`stoker.client.Stoker.submit_openai_batch`), and free of FastAPI: the
CLI may run without the API's extra. The API keeps a batch's custom_ids and response
options in its own records; the CLI keeps them beside the batch's outputs, in
:data:`REQUESTS_NAME`, and writes the output and error files when they are fetched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stoker.api.openai_shapes import ADAPTERS, Adapter, Options, adapter_for
from stoker.errors import InvalidInput, StokerError
from stoker.jobs.base import NAME_PATTERN
from stoker.jobs.text import read_text_file
from stoker.queues.batches import Refused
from stoker.queues.records import JobRecord, JobState

if TYPE_CHECKING:
    from stoker.client import Stoker


Parsed = tuple[str | None, dict[str, Any] | Refused, Options]
#: custom_ids and requests in line order, and the response options of the lines that
#: have any (keyed by the line's index, as a string: it is stored as JSON)
BatchRequests = tuple[list[str | None], list[dict[str, Any] | Refused], dict[str, Options]]
#: How a job's line points at its outputs: the job → a URL for each output's key
#: (the API's own URLs on local storage, api/views.output_urls); by default
#: :meth:`Stoker.output_url`.
OutputUrls = Callable[[JobRecord], Callable[[str], str]]


#: Where a batch submitted from the CLI keeps what its result lines need, under
#: ``jobs/<batch id>/`` (so it goes when the batch is deleted).
REQUESTS_NAME = "openai_batch.json"
#: The files OpenAI writes for a batch, as `stoker get` names them.
OUTPUT_NAME, ERRORS_NAME = "output.jsonl", "errors.jsonl"
#: Lines whose results are read side by side before they are written out: the output
#: file is written as it is made, not held whole (50,000 embeddings are ~400 MB of JSON).
RESULT_STEP = 512


@dataclass(frozen=True)
class BatchFile:
    """An OpenAI Batch input file, read: the endpoint of its lines and their requests."""

    source: str  # the file's name
    adapter: Adapter
    custom_ids: list[str | None]
    requests: list[dict[str, Any] | Refused]
    options: dict[str, Options]

    def kept(self) -> dict[str, Any]:
        """What the result lines need later (:data:`REQUESTS_NAME`)."""
        return {
            "endpoint": self.adapter.endpoint,
            "custom_ids": self.custom_ids,
            "options": self.options,
        }


def read_file(path: Path, max_lines: int) -> BatchFile:
    """The OpenAI Batch input file at ``path``: every line for the endpoint of the
    first line's ``url``, a line that cannot run refused alone. InvalidInput naming
    the file when it cannot be read or cannot be a batch (no request, more than
    ``max_lines``, an endpoint stoker does not serve, a custom_id used twice)."""
    text = read_text_file(path)
    lines = [(n, t.strip()) for n, t in enumerate(text.splitlines(), start=1) if t.strip()]
    if len(lines) > max_lines:
        raise InvalidInput(
            f"{path} has {len(lines):,} requests, over the {max_lines:,} a batch may hold "
            f"(api.max_batch_lines); split it."
        )
    adapter = adapter_for(_endpoint_of(path, lines))
    try:
        return BatchFile(path.name, adapter, *read_requests(lines, adapter))
    except BatchFileError as exc:
        raise InvalidInput(f"{path}: {exc}") from None


def _endpoint_of(path: Path, lines: list[tuple[int, str]]) -> str:
    """The first readable line's ``url``, as OpenAI's batch names one endpoint."""
    for number, text in lines:
        try:
            url = json.loads(text).get("url")
        except (json.JSONDecodeError, AttributeError):
            continue  # refused as its line; the endpoint comes from a readable one
        if url in ADAPTERS:
            return str(url)
        raise InvalidInput(
            f"{path} line {number}: url {url!r} is not an endpoint stoker serves; "
            f"use one of {', '.join(sorted(ADAPTERS))}."
        )
    raise InvalidInput(f"{path} has no request line (a JSON object with a url).")


def result_lines(
    stoker: Stoker,
    kids: list[JobRecord],
    kept: Mapping[str, Any],
    expired: bool = False,
    urls: OutputUrls | None = None,
) -> Iterator[tuple[JobRecord, bool, dict[str, Any]]]:
    """(job, succeeded, its output or error line) of each of a batch's ``kids``, in line
    order; ``kept`` holds the batch's endpoint, custom_ids and options (the API's batch
    record, or :meth:`BatchFile.kept`). Most lines read their job's output (a GET each
    on S3): side by side on the I/O threads, a step at a time, so the caller writes
    them out as they come instead of holding them all."""
    adapter = adapter_for(kept["endpoint"])
    custom_ids, options = kept.get("custom_ids", []), kept.get("options", {})

    def line_of(kid: JobRecord) -> tuple[bool, dict[str, Any]]:
        index = kid.parent_index or 0
        custom_id = custom_ids[index] if index < len(custom_ids) else None
        line_options = options.get(str(index), {})
        return result_line(stoker, adapter, kid, custom_id, line_options, expired, urls)

    for at in range(0, len(kids), RESULT_STEP):
        step = kids[at : at + RESULT_STEP]
        for kid, (ok, line) in zip(step, stoker.io.all(line_of, step), strict=True):
            yield kid, ok, line


def write_results(
    stoker: Stoker, kids: list[JobRecord], kept: Mapping[str, Any], out_dir: Path
) -> list[Path]:
    """The output and error files of a batch whose jobs are ``kids`` (in line order),
    from what :meth:`BatchFile.kept` kept, written to ``out_dir``; returns them, and
    the files of the lines that point at theirs by URL (:func:`line_files`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {True: out_dir / OUTPUT_NAME, False: out_dir / ERRORS_NAME}
    adapter = adapter_for(kept["endpoint"])
    options = kept.get("options", {})
    files: list[tuple[str, Path]] = []
    with paths[True].open("w") as good, paths[False].open("w") as bad:
        for kid, ok, line in result_lines(stoker, kids, kept):
            (good if ok else bad).write(json.dumps(line) + "\n")
            if ok and _points_at_files(adapter, options.get(str(kid.parent_index or 0), {})):
                files += line_files(kid, line["custom_id"], out_dir)
    # The URLs in the output file expire (presigned on S3) or point into the data
    # directory; the user asked for the batch's results here, so its files come too.
    return [paths[True], paths[False], *stoker.io.all(lambda f: stoker.storage.download(*f), files)]


def _points_at_files(adapter: Adapter, options: Options) -> bool:
    """Whether a line's response points at its job's files by URL: not an image line
    that asked for b64_json, whose images are in the line."""
    return adapter.files and options.get("response_format") != "b64_json"


def line_files(kid: JobRecord, custom_id: str | None, out_dir: Path) -> list[tuple[str, Path]]:
    """(key, file) of a line's outputs in a folder named after its custom_id: an
    OpenAI batch names its requests by custom_id only. A custom_id that cannot be a
    folder's name (a slash, a space, over 100 characters, the name of the output or
    error file beside it) gives ``_00007``, the request's position, which no
    custom_id that can be one matches."""
    folder = f"_{(kid.parent_index or 0) + 1:05d}"
    if custom_id and re.fullmatch(NAME_PATTERN, custom_id):
        folder = folder if custom_id in (OUTPUT_NAME, ERRORS_NAME) else custom_id
    return [(ref.key, out_dir / folder / ref.name) for ref in kid.outputs if ref.is_result]


class BatchFileError(InvalidInput):
    """A file that cannot be a batch at all (``code`` says why: no requests, a
    custom_id used twice); a bad line is only refused."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def read_requests(numbered: Iterable[tuple[int, str]], adapter: Adapter) -> BatchRequests:
    """The requests of the (line number, text) of a batch file's non-blank lines."""
    custom_ids: list[str | None] = []
    requests: list[dict[str, Any] | Refused] = []
    options: dict[str, Options] = {}
    seen: set[str] = set()
    for number, text in numbered:
        custom_id, request, line_options = parse_line(number, text, adapter)
        if line_options:
            options[str(len(requests))] = line_options
        if custom_id is not None:
            if custom_id in seen:
                raise BatchFileError(
                    f"line {number}: custom_id {custom_id!r} is used twice; "
                    f"each line needs its own.",
                    "duplicate_custom_id",
                )
            seen.add(custom_id)
        custom_ids.append(custom_id)
        requests.append(request)
    if not requests:
        raise BatchFileError("the input file has no requests.", "empty_file")
    return custom_ids, requests, options


def parse_line(number: int, text: str, adapter: Adapter) -> Parsed:
    """(custom_id, stoker request, response options) of line ``number``, or a
    :class:`Refused` in place of the request, naming the line and what is wrong."""
    try:
        line = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, Refused(f"line {number}", f"line {number} is not JSON ({exc.msg})."), {}
    if not isinstance(line, dict):
        return None, Refused(f"line {number}", f"line {number} must be a JSON object."), {}
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, Refused(f"line {number}", f"line {number} has no custom_id string."), {}
    problem = None
    if line.get("method") != "POST":
        problem = f"line {number}: method must be POST."
    elif line.get("url") != adapter.endpoint:
        problem = (
            f"line {number}: url {line.get('url')!r} must equal the batch's endpoint "
            f"{adapter.endpoint!r}."
        )
    elif not isinstance(line.get("body"), dict):
        problem = f"line {number}: body must be a JSON object."
    if problem:
        return custom_id, Refused(f"line {number}", problem), {}
    try:
        return custom_id, adapter.to_request(line["body"]), adapter.options(line["body"])
    except InvalidInput as exc:
        return custom_id, Refused(f"line {number}", f"line {number}: {exc}"), {}


def result_line(
    stoker: Stoker,
    adapter: Adapter,
    kid: JobRecord,
    custom_id: str | None,
    options: Options,
    expired: bool = False,
    urls: OutputUrls | None = None,
) -> tuple[bool, dict[str, Any]]:
    """(succeeded, the output or error line) of one child."""
    line_id = f"batch_req_{kid.id}"
    if kid.state is JobState.SUCCEEDED:
        url_for = urls(kid) if urls else stoker.output_url
        try:
            body = adapter.response_body(kid, url_for, stoker.storage.get_bytes, options)
        except StokerError as exc:
            body, kid_error = None, str(exc)
        else:
            response = {"status_code": 200, "request_id": kid.id, "body": body}
            return True, {
                "id": line_id,
                "custom_id": custom_id,
                "response": response,
                "error": None,
            }
        return False, {
            "id": line_id,
            "custom_id": custom_id,
            "response": None,
            "error": {"code": "result_unreadable", "message": kid_error},
        }
    if kid.state is JobState.CANCELLED and expired:
        error = {"code": "batch_expired", "message": "the batch expired before this ran."}
        return False, {"id": line_id, "custom_id": custom_id, "response": None, "error": error}
    if kid.state is JobState.CANCELLED:
        error = {"code": "batch_cancelled", "message": "the batch was cancelled first."}
        return False, {"id": line_id, "custom_id": custom_id, "response": None, "error": error}
    err = kid.error
    code = err.kind if err else "failed"
    status = 400 if code in ("invalid_input", "unknown_model") else 500
    message = err.message if err else "the request failed."
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status == 400 else "server_error",
            "code": code,
            "param": None,
        }
    }
    response = {"status_code": status, "request_id": kid.id, "body": body}
    return False, {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
