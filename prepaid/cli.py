"""``headend ledger verify``: prove balance == sum of entries for every account."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import psycopg

from headend.settings import CommonSettings


async def _verify(url: str) -> int:
    from prepaid.operations import verify_ledger

    async with await psycopg.AsyncConnection.connect(url) as conn:
        problems = await verify_ledger(conn)
    for p in problems:
        print(f"{p.account_id}: {p.detail}")
    if problems:
        print(f"{len(problems)} account(s) fail the ledger check")
        return 1
    print("ledger ok: every balance equals the sum of its entries")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    return asyncio.run(_verify(args.database_url or CommonSettings().database_url))


def register(subparsers: Any) -> None:
    ledger = subparsers.add_parser("ledger", help="prepaid ledger tools")
    sub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    p = sub.add_parser("verify", help="exit 1 and list accounts whose balance != sum of ledger entries")
    p.add_argument("--database-url", help="default: HEADEND_DATABASE_URL")
    p.set_defaults(func=_cmd_verify)
