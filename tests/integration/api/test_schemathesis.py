"""Property-based run of schemathesis against the OpenAPI schema of a live uvicorn.

The app runs in its own thread on a free loopback port over a fresh TimescaleDB
database; every operation is exercised with an admin key (all routes reachable) and a customer key,
bounded examples so the run stays well under two minutes. Checks: no 5xx, responses
match the documented schemas and content types (errors are problem+json).
The SSE stream (endless by design) is excluded; tests/integration/api/test_live.py covers it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from api.app import create_app
from api.settings import ApiSettings
from tests.integration.api.conftest import Keys


@pytest.fixture
def live_url(settings: ApiSettings) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.02)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


MAX_EXAMPLES = 8
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.mark.parametrize(
    ("role", "examples"),
    [pytest.param("admin", MAX_EXAMPLES, id="admin-all-routes"), pytest.param("customer", 3, id="customer")],
)
def test_api_contract(live_url: str, keys: Keys, role: str, examples: int) -> None:
    """Every operation, ``examples`` generated cases each; all failures are reported together.

    As admin every route is reachable; as a customer most answer 403/404, which must still be
    documented problem+json and never a 5xx."""
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json").exclude(path="/v1/stream")
    headers = {"Authorization": f"Bearer {getattr(keys, role)}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def run(case: Any) -> None:
            case.call_and_validate(base_url=live_url, headers=headers, checks=CHECKS)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then fail once
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations > 30
    assert not failures, "\n\n".join(failures)
