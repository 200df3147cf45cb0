"""The demo's simulated start is a Tuesday 08:00 in a week the window is open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import holidays
import pytest

from headend.demo import pick_origin


@pytest.mark.parametrize(
    "real_now",
    [
        pytest.param(datetime(2026, 11, 29, 19, 0, tzinfo=UTC), id="ordinary"),
        pytest.param(datetime(2026, 10, 9, 12, 0, tzinfo=UTC), id="after-national-day"),
        pytest.param(datetime(2027, 2, 14, 12, 0, tzinfo=UTC), id="after-spring-festival"),
        pytest.param(datetime(2026, 1, 3, 0, 0, tzinfo=UTC), id="new-year"),
    ],
)
def test_origin_is_a_clear_tuesday_morning(real_now: datetime) -> None:
    origin = pick_origin(real_now)
    assert origin.weekday() == 1 and (origin.hour, origin.minute) == (8, 0)
    assert origin <= real_now - timedelta(days=7)
    cal = holidays.country_holidays("CN", years=[origin.year, origin.year + 1])
    for i in range(4):  # Tue, Wed, Thu and Fri (Thu must not be a holiday eve)
        assert (origin + timedelta(days=i)).date() not in cal
