"""Integrity checks on demand: the ledger (prepaid.operations.verify_ledger: every balance
equals the sum of its entries, running balances unbroken) and the audit hash chain
(control.operations.verify_audit)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from api.auth import Operators
from api.deps import Conn
from api.errors import ProblemRoute
from control import operations as control
from control.audit import Problem as AuditProblem
from prepaid import operations as prepaid
from prepaid.ledger import Problem as LedgerProblem

router = APIRouter(route_class=ProblemRoute, tags=["integrity"])


class LedgerCheck(BaseModel):
    ok: bool
    problems: list[LedgerProblem]


class AuditCheck(BaseModel):
    ok: bool
    problems: list[AuditProblem]


@router.get("/integrity/ledger", response_model=LedgerCheck, summary="Verify every balance against its ledger")
async def verify_ledger(conn: Conn, _: Operators) -> Any:
    problems = await prepaid.verify_ledger(conn)
    return {"ok": not problems, "problems": problems}


@router.get("/integrity/audit", response_model=AuditCheck, summary="Verify the audit log's hash chain")
async def verify_audit(conn: Conn, _: Operators) -> Any:
    problems = await control.verify_audit(conn)
    return {"ok": not problems, "problems": problems}
