"""The service wiring: the shared clock reaches the app."""

from __future__ import annotations

from datetime import UTC, datetime

from api.service import build_server
from api.settings import ApiSettings
from headend.clock import AcceleratedClock


def test_server_uses_the_shared_clock() -> None:
    origin = datetime(2030, 1, 1, tzinfo=UTC)
    clock = AcceleratedClock(origin=origin, speed=1.0, real_start=0.0, wall=lambda: 60.0)
    server = build_server(ApiSettings(api_port=0), clock)
    app = server.config.app
    assert app.state.clock() == datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
