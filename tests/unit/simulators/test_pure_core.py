"""The pure core of the simulators imports no I/O library (house style: a test keeps it so)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PURE = ["meter", "profiles", "fleet", "clock", "faults", "formats", "registermaps", "driver", "scenario", "models"]
IO = ("asyncio", "paho", "pymodbus", "psycopg", "fastapi")


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io(module: str) -> None:
    code = f"import sys, simulators.{module}; print(','.join(m for m in {IO!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[3]
    )
    assert out.stdout.strip() == ""


def test_pure_modules_never_read_the_clock() -> None:
    root = Path(__file__).parents[3] / "simulators"
    for module in PURE:
        text = (root / f"{module}.py").read_text()
        assert "datetime.now(" not in text and "time.time(" not in text, module
