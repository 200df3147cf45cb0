"""The API's routers. ``system`` (/health, /metrics) is mounted at the root; ROUTERS under /v1."""

from __future__ import annotations

from fastapi import APIRouter

from api.routes import accounts, commands, facts, inbox, integrity, live, money, network, readings

ROUTERS: list[APIRouter] = [
    network.router,
    readings.router,
    accounts.router,
    money.router,
    commands.router,
    facts.router,
    inbox.router,
    integrity.router,
    live.router,
]
