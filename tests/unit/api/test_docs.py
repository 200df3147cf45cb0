"""docs/api.md stays true: every route of the OpenAPI schema is documented there."""

from __future__ import annotations

from pathlib import Path

from api.app import create_app
from api.settings import ApiSettings

DOC = Path(__file__).resolve().parents[3] / "docs" / "api.md"


def test_every_route_is_documented() -> None:
    text = DOC.read_text()
    schema = create_app(ApiSettings()).openapi()
    missing = [
        f"{method.upper()} {path}"
        for path, item in schema["paths"].items()
        for method in item
        if f"| {method.upper()} | `{path}`" not in text and path not in ("/docs", "/openapi.json")
    ]
    assert not missing, f"routes missing from docs/api.md: {missing}"


def test_every_error_is_problem_json_in_the_schema() -> None:
    schema = create_app(ApiSettings()).openapi()
    for path, item in schema["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and path != "/health":
                    assert "application/problem+json" in response["content"], (method, path, status)
