"""``headend quarantine replay``: quarantined messages are accepted once their meter is registered."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from headend import cli
from ingest.cli import replay
from ingest.dispatch import Prefixes, decode_message
from ingest.settings import IngestSettings
from ingest.store import BatchWriter

from .conftest import query, register_fleet

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 30, tzinfo=UTC)


async def test_replay_after_registering_the_meter(pool: AsyncConnectionPool[Any], fleet: str) -> None:
    w = BatchWriter(pool)
    await w.refresh_directory(force=True)
    prefixes = Prefixes("headend")
    good = json.dumps({"v": 1, "ts": "2026-11-29T10:00:00Z", "values": {"1-0:1.8.0": 42.0}}).encode()
    batch = [
        decode_message("headend/v1/meters/M-NEW/readings", good, w.directory, prefixes),
        decode_message("headend/v1/meters/M-1/readings", b"{oops", w.directory, prefixes),
    ]
    assert (await w.write(batch, NOW)).quarantined == 2
    register_fleet(fleet, {"M-NEW": {}})
    settings = IngestSettings(database_url=fleet)
    assert await replay(settings) == {"accepted": 1, "rejected": 1}
    assert query(fleet, "select meter_id, value from readings") == [("M-NEW", 42.0)]
    assert query(fleet, "select count(*) from billing_queue")[0][0] == 1
    results = query(fleet, "select replay_result from quarantine order by id")
    assert results[0][0] == "accepted" and results[1][0].startswith("rejected: malformed_json")
    assert query(fleet, "select count(*) from quarantine")[0][0] == 2  # a replay adds no rows
    assert await replay(settings) == {}  # already replayed
    assert await replay(settings, again=True) == {"accepted": 1, "rejected": 1}
    assert query(fleet, "select count(*) from billing_queue")[0][0] == 1  # still billed once


def test_cli_list(fleet: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    query(fleet, "insert into quarantine (source, topic, payload, reason) values ('mqtt', 't/x', 'abc', 'schema: x')")
    monkeypatch.setenv("HEADEND_DATABASE_URL", fleet)
    assert cli.main(["quarantine", "list"]) == 0
    out = capsys.readouterr().out
    assert "t/x" in out and "schema: x" in out and "3B" in out
