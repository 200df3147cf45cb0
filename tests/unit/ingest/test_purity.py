"""The pure core of ingest imports no I/O library and never reads the clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[3] / "ingest"
PURE = [
    "decode",
    "tasmota",
    "shelly",
    "dispatch",
    "validation",
    "registers_sunspec",
    "registers_sdm",
    "models",
    "errors",
]
FORBIDDEN = {"asyncio", "psycopg", "psycopg_pool", "paho", "pymodbus", "fastapi", "socket", "threading", "logging"}


@pytest.mark.parametrize("name", PURE)
def test_pure_module(name: str) -> None:
    tree = ast.parse((PKG / f"{name}.py").read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("ingest."):
                assert node.module.split(".")[1] in PURE, f"{name} imports the shell module {node.module}"
        elif isinstance(node, ast.Attribute) and node.attr in {"now", "utcnow", "today", "time", "monotonic"}:
            base = node.value
            assert not (isinstance(base, ast.Name) and base.id in {"datetime", "date", "time"}), (
                f"{name} reads the clock ({ast.unparse(node)})"
            )
    assert not imported & FORBIDDEN, f"{name} imports {sorted(imported & FORBIDDEN)}"
