"""``headend apikey ...``: create, revoke and list API keys.

``headend apikey create --name N --role R [--account A ...]`` prints the token once
(only its SHA-256 is stored); ``headend apikey revoke (--id I | --name N)``;
``headend apikey list``.
"""

from __future__ import annotations

import argparse
from typing import Any

from api import keys
from api.auth import Role
from headend import db
from headend.settings import CommonSettings


def _url(args: argparse.Namespace) -> str:
    url: str = args.database_url or CommonSettings().database_url
    return url


def _create(args: argparse.Namespace) -> int:
    with db.connect(_url(args)) as conn:
        try:
            created = keys.create_key(conn, name=args.name, role=Role(args.role), account_ids=args.account)
        except ValueError as exc:
            print(f"headend apikey: {exc}")
            return 2
    print(f"created key {created.key_id} ({created.name}, {created.role.value}); the token is shown only once:")
    print(created.token)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with db.connect(_url(args)) as conn:
        n = keys.revoke_key(conn, key_id=args.id, name=args.name)
    print(f"revoked {n} key(s)")
    return 0 if n else 1


def _list(args: argparse.Namespace) -> int:
    with db.connect(_url(args)) as conn:
        for row in keys.list_keys(conn):
            print(keys.describe(row))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("apikey", help="manage API keys (create prints the token once)")
    p.add_argument("--database-url", help="default: HEADEND_DATABASE_URL")
    sub = p.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")

    c = sub.add_parser("create", help="create a key and print its token once")
    c.add_argument("--name", required=True)
    c.add_argument("--role", required=True, choices=[r.value for r in Role])
    c.add_argument("--account", action="append", default=[], help="an account a customer key may see (repeat)")
    c.set_defaults(func=_create)

    r = sub.add_parser("revoke", help="revoke a key by id or by name")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--id", type=int)
    g.add_argument("--name")
    r.set_defaults(func=_revoke)

    ls = sub.add_parser("list", help="list keys (never their tokens)")
    ls.set_defaults(func=_list)
