"""SQL helpers of the hot path: PostgreSQL array literals built in one string.

The engine writes every batch with a few ``INSERT/UPDATE ... FROM unnest(...)``
statements. Dumping Python lists element by element costs more than the SQL at
2,000 rows a batch, so the columns are sent as array *literals* (one text
parameter each, cast in SQL: ``%s::bigint[]``). Timestamps travel as epoch seconds
(``to_timestamp``). Text elements are always double-quoted and escaped, so any
string is safe.
"""

from __future__ import annotations

from collections.abc import Iterable


def ints(values: Iterable[int | None]) -> str:
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


def floats(values: Iterable[float | int | None]) -> str:
    return "{" + ",".join("NULL" if v is None else repr(float(v)) for v in values) + "}"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def texts(values: Iterable[str | None]) -> str:
    return "{" + ",".join("NULL" if v is None else _quote(v) for v in values) + "}"
