"""Fuzz the OpenAPI schema with schemathesis against the app (ASGI, embedded default,
no worker): no 500, and every error answer has the JSON error body.

Without a worker, the synchronous OpenAI routes answer 504 after ``sync_wait_s`` (a
documented answer, not a crash) and an undeployed capability 503; those two are the
only 5xx allowed, and they too must carry the error body.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from stoker.api.app import create_app
from stoker.config import load_settings
from tests.api_server import auth, make_key

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),
]

_KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    stoker_settings = load_settings(data_dir=data_dir, api={"sync_wait_s": 0.05})
    _KEY["headers"] = auth(make_key(stoker_settings, "fuzz"))
    app = create_app(stoker_settings, deliver_webhooks=False)
    with TestClient(app):  # runs the lifespan: app.state.api stays set for the cases
        yield app


def check_error_shape(response: Any) -> None:
    status = response.status_code
    assert status not in (500, 502), f"{status}: {response.text[:500]}"
    if status >= 400:
        body = response.json()
        error = body["error"]
        assert isinstance(error["message"], str) and error["message"], body
        assert isinstance(error["type"], str), body
    if status >= 500:
        assert status in (503, 504), response.text[:500]


def test_no_server_errors_and_json_errors(api_app: FastAPI) -> None:
    # Given every operation of the app's OpenAPI schema
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation, mode in itertools.product(operations, list(GenerationMode)):
        # When hypothesis sends it a bounded number of valid and invalid requests
        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            # Then none is a 500 and every error has the JSON error body
            check_error_shape(case.call(headers=_KEY["headers"]))

        try:
            run()
        except Unsatisfiable:  # an operation without inputs has no invalid variant
            assert mode is GenerationMode.NEGATIVE, operation.label
