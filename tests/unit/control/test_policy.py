"""Policy profiles as data: validation, layering (company only stricter), versions."""

from __future__ import annotations

from datetime import time
from decimal import Decimal

import pytest

from control.errors import PolicyError
from control.policy import effective_policy, load_profile, load_profile_document, profile_for, profile_names


def test_profiles_load() -> None:
    assert {"cn-residential", "cn-non-residential", "gb-residential"} <= set(profile_names())
    for name in profile_names():
        assert load_profile(name).profile == name


def test_cn_residential_is_domain_section_6() -> None:
    p = load_profile("cn-residential")
    (w,) = p.windows
    assert (w.weekdays, w.start, w.end) == ((1, 2, 3, 4), time(9), time(15))
    assert p.notice.lead_h == 24 and p.notice.final_reminder_min == 30
    assert (p.weather.min_c, p.weather.max_c, p.weather.max_age_h) == (Decimal(0), Decimal(35), Decimal(12))
    assert p.weather.horizon_h == 24
    assert p.channels_healthy_for_h == 2 and p.reading_max_age_h == 24
    assert (p.load_limit.enabled, p.load_limit.limit_w, p.load_limit.duration_h) == (True, 1000, 24)
    assert (p.grid.disconnects_per_feeder, p.grid.disconnect_period_min) == (20, 15)
    assert (p.grid.reconnects_per_feeder, p.grid.reconnect_period_min, p.grid.reconnect_jitter_max_s) == (30, 5, 600)
    assert p.approvals.batch_threshold == 100 and p.approvals.manual_disconnect
    assert (p.command.disconnect_expiry_min, p.command.readback_s, p.command.max_attempts) == (15, 120, 3)
    assert (p.reconnect.mode, p.reconnect.min_credit_minor, p.reconnect.armed_timeout_h) == ("arm", 500, 24)
    assert set(p.protected_kinds) == {
        "medical_certificate",
        "life_support",
        "vulnerable",
        "elderly_living_alone",
        "child_under_2",
    }
    assert p.warnings.thresholds_minor == (3000, 1000) and p.warnings.hysteresis_minor == 500


def test_non_residential_notice() -> None:
    p = load_profile("cn-non-residential")
    assert p.notice.lead_h == 72 and p.notice.final_reminder_min == 60


def test_gb_is_data_and_company_layer_is_stricter() -> None:
    p = load_profile("gb-residential")
    assert p.country == "GB" and p.subdivision == "ENG"
    assert p.windows[0].start == time(9) and p.windows[0].end == time(14)  # company tightened 08-15
    assert p.notice.final_reminder_min == 120


@pytest.mark.parametrize(
    "company",
    [
        pytest.param({"windows": [{"weekdays": [5], "start": "09:00", "end": "15:00"}]}, id="friday-window"),
        pytest.param({"notice": {"lead_h": 12}}, id="shorter-notice"),
        pytest.param({"weather": {"min_c": -5}}, id="colder"),
        pytest.param({"protected_kinds": ["life_support"]}, id="fewer-protections"),
        pytest.param({"grid": {"disconnects_per_feeder": 50}}, id="faster-cuts"),
        pytest.param({"approvals": {"batch_threshold": 1000}}, id="bigger-batches"),
        pytest.param({"dispute_blocks": False}, id="disputes-ignored"),
        pytest.param({"country": "US"}, id="other-country"),
        pytest.param({"load_limit": {"enabled": False}}, id="skip-load-limit"),
    ],
)
def test_company_policy_may_not_be_looser(company: dict[str, object]) -> None:
    doc = load_profile_document("cn-residential")
    doc["company"] = company
    with pytest.raises(PolicyError):
        effective_policy(doc)


def test_company_policy_may_be_stricter() -> None:
    doc = load_profile_document("cn-residential")
    doc["company"] = {"weather": {"min_c": 3}, "notice": {"lead_h": 48}}
    p = effective_policy(doc)
    assert p.weather.min_c == Decimal(3) and p.notice.lead_h == 48


def test_invalid_documents() -> None:
    with pytest.raises(PolicyError):
        effective_policy({"company": {}})
    doc = load_profile_document("cn-residential")
    doc["floor"]["windows"] = [{"weekdays": [1], "start": "15:00", "end": "09:00"}]
    with pytest.raises(PolicyError):
        effective_policy(doc)


def test_profile_for_service_point() -> None:
    policies = {n: load_profile(n) for n in profile_names()}
    cn_res = profile_for(policies, "CN", "residential")
    cn_imp = profile_for(policies, "CN", "important")
    assert cn_res is not None and cn_res.profile == "cn-residential"
    assert cn_imp is not None and cn_imp.profile == "cn-non-residential"
    assert profile_for(policies, "FR", "residential") is None
