"""Results of the engines' operation functions as JSON.

The API never re-implements money or guard logic: it calls ``prepaid.operations``
and ``control.operations`` (and ingest's decoder/writer for quarantine replay) and
returns their frozen dataclasses. ``plain`` turns them into JSON-able values with
exact money (Decimal as a string, never a float).
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any


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
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "model_dump"):
        return plain(value.model_dump(mode="json"))
    return value
