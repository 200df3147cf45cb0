"""``headend audit verify`` and ``headend control ...`` (explain, kill switch, operators)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import psycopg

from control import operations
from control.settings import ControlSettings
from headend.clock import clock_from_env


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="audit log tools")
    sub = p.add_subparsers(dest="audit_command", required=True)
    v = sub.add_parser("verify", help="recompute the audit hash chain; exit 1 if it is broken")
    v.add_argument("--database-url", help="default: HEADEND_DATABASE_URL")
    v.set_defaults(func=_verify)

    c = subparsers.add_parser("control", help="guarded disconnect: explain, kill switch, operators")
    csub = c.add_subparsers(dest="control_command", required=True)
    e = csub.add_parser("explain", help="would this account be cut now, and if not why and until when")
    e.add_argument("account_id")
    e.add_argument("--action", default="disconnect")
    e.add_argument("--database-url")
    e.set_defaults(func=_explain)
    k = csub.add_parser("kill-switch", help="stop (on) or allow (off) every disconnect")
    k.add_argument("state", choices=["on", "off"])
    k.add_argument("--by", required=True)
    k.add_argument("--reason", default="")
    k.add_argument("--database-url")
    k.set_defaults(func=_kill_switch)
    o = csub.add_parser("operator", help="set an operator's roles (e.g. approver)")
    o.add_argument("name")
    o.add_argument("roles", nargs="*")
    o.add_argument("--database-url")
    o.set_defaults(func=_operator)


def _url(args: argparse.Namespace) -> str:
    return str(args.database_url or ControlSettings().database_url)


async def _with_conn(url: str, fn: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await fn(conn)


def _verify(args: argparse.Namespace) -> int:
    problems = asyncio.run(_with_conn(_url(args), operations.verify_audit))
    for p in problems:
        print(f"seq {p.seq}: {p.what}")
    print("audit chain OK" if not problems else f"audit chain BROKEN: {len(problems)} problem(s)")
    return 0 if not problems else 1


def _explain(args: argparse.Namespace) -> int:
    now = clock_from_env().now()

    async def run(conn: psycopg.AsyncConnection[Any]) -> operations.Explanation:
        return await operations.explain(conn, args.account_id, now, args.action)

    ex = asyncio.run(_with_conn(_url(args), run))
    d = ex.decision
    out: dict[str, Any] = {"account": ex.account_id, "policy": [ex.policy_profile, ex.policy_version], "kind": d.kind}
    if d.kind == "allowed":
        out["action"] = d.action
    if d.kind == "deferred":
        out["until"] = d.until.isoformat() if d.until else None
    if d.kind != "allowed":
        out["reasons"] = [r.value for r in d.reasons]
    print(json.dumps(out, indent=2))
    return 0


def _kill_switch(args: argparse.Namespace) -> int:
    now = clock_from_env().now()

    async def run(conn: psycopg.AsyncConnection[Any]) -> None:
        await operations.set_kill_switch(conn, on=args.state == "on", by=args.by, reason=args.reason, now=now)

    asyncio.run(_with_conn(_url(args), run))
    print(f"kill switch {args.state}")
    return 0


def _operator(args: argparse.Namespace) -> int:
    async def run(conn: psycopg.AsyncConnection[Any]) -> None:
        await operations.set_operator(conn, args.name, list(args.roles))

    asyncio.run(_with_conn(_url(args), run))
    return 0
