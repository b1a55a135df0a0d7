"""The lines of an OpenAI Batch file, in and out: a request line → a stoker request
(or the reason it is none), and a job that ended → its line of the output file (or of
the error file), as OpenAI writes them.

Shared by the HTTP API's Batches (api/batches.py) and `stoker run batch` (one
machine, no API), and free of FastAPI: the CLI may run without the API's extra.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from stoker.api.openai_shapes import Adapter, Options
from stoker.errors import InvalidInput, StokerError
from stoker.queues.batches import Refused
from stoker.queues.records import JobRecord, JobState

if TYPE_CHECKING:
    from stoker.client import Stoker


Parsed = tuple[str | None, dict[str, Any] | Refused, Options]
#: custom_ids and requests in line order, and the response options of the lines that
#: have any (keyed by the line's index, as a string: it is stored as JSON)
BatchRequests = tuple[list[str | None], list[dict[str, Any] | Refused], dict[str, Options]]


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
) -> tuple[bool, dict[str, Any]]:
    """(succeeded, the output or error line) of one child."""
    line_id = f"batch_req_{kid.id}"
    if kid.state is JobState.SUCCEEDED:
        try:
            body = adapter.response_body(kid, stoker.output_url, stoker.storage.get_bytes, options)
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
