"""The pure parts of API keys and roles."""

from __future__ import annotations

import hashlib

from api.auth import TOKEN_PREFIX, Principal, Role, hash_token, new_token


def test_tokens_are_random_and_stored_as_sha256() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith(TOKEN_PREFIX) and len(a) >= 40
    assert hash_token(a) == hashlib.sha256(a.encode()).hexdigest()
    assert len(hash_token(a)) == 64


def test_account_visibility_per_role() -> None:
    customer = Principal(1, "acme", Role.CUSTOMER, frozenset({"A-1"}))
    assert customer.may_see_account("A-1") and not customer.may_see_account("A-2")
    assert not Principal(2, "bank", Role.INTEGRATOR).may_see_account("A-1")
    for role in (Role.ADMIN, Role.OPERATOR, Role.APPROVER):
        assert Principal(3, "x", role).may_see_account("anything")


def test_actor_is_the_key_name() -> None:
    assert Principal(1, "olga", Role.OPERATOR).actor == Principal(2, "olga", Role.APPROVER).actor == "olga"
