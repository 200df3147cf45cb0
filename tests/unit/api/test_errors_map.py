"""Domain errors of other packages map to HTTP statuses in one place."""

from __future__ import annotations

import types

import pytest

from api.errors import domain_status
from headend.errors import DatabaseUnavailable


def _domain_error(module: str, name: str) -> Exception:
    cls = types.new_class(name, (Exception,))
    cls.__module__ = module
    return cls("x")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("module", "name", "status"),
    [
        pytest.param("prepaid.errors", "NotFound", 404, id="explicit"),
        pytest.param("control.errors", "ApprovalError", 403, id="approval"),
        pytest.param("control.errors", "CommandNotFound", 404, id="command-missing"),
        pytest.param("prepaid.errors", "WidgetNotFound", 404, id="name-rule-404"),
        pytest.param("control.errors", "BadStateTransition", 409, id="name-rule-409"),
        pytest.param("prepaid.errors", "AmountTooLarge", 422, id="fallback-422"),
    ],
)
def test_domain_status(module: str, name: str, status: int) -> None:
    assert domain_status(_domain_error(module, name)) == status


def test_foreign_errors_are_not_domain_errors() -> None:
    assert domain_status(RuntimeError("boom")) is None
    assert domain_status(_domain_error("somelib.errors", "NotFound")) is None


def test_shared_layer_errors() -> None:
    assert domain_status(DatabaseUnavailable("down")) == 503


def test_real_domain_classes_and_subclasses() -> None:
    from control.errors import ApprovalError, TransitionError
    from prepaid.errors import AlreadyReversed, TariffError

    assert domain_status(ApprovalError("own request")) == 403
    assert domain_status(TransitionError("x")) == 409
    assert domain_status(AlreadyReversed("x")) == 409  # via its base Conflict
    assert domain_status(TariffError("x")) == 422
