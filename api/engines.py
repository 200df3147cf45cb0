"""The operation functions of prepaid and control, looked up when a route needs them.

The API never re-implements money or guard logic: it calls
``prepaid.operations`` and ``control.operations`` (and ingest's decoder/writer for
quarantine replay). A function missing from this build answers 501 (problem code
``not-available``) instead of failing at import time, so every other route works
while an engine is still being written.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from api.errors import NotAvailable


def operation(module: str, name: str) -> Callable[..., Any]:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise NotAvailable(f"{module} is not available in this build") from exc
        raise
    fn = getattr(mod, name, None)
    if fn is None or not callable(fn):
        raise NotAvailable(f"{module}.{name} is not available in this build")
    return fn  # type: ignore[no-any-return]


def plain(value: Any) -> Any:
    """A JSON-able copy of an operation's result: dataclasses, Decimals as strings, enums as values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return plain(value.model_dump(mode="json"))
    return value
