"""The hand-written Prometheus exposition format."""

from __future__ import annotations

import math

from api.metrics import Family, render


def test_render_families_with_and_without_labels() -> None:
    text = render(
        [
            Family("headend_x_total", "counter", "X things").add(3),
            Family("headend_cmds", "gauge", "Commands").add(2, state="sent", action="disconnect").add(1.5, state="a"),
        ]
    )
    assert text == (
        "# HELP headend_x_total X things\n"
        "# TYPE headend_x_total counter\n"
        "headend_x_total 3\n"
        "# HELP headend_cmds Commands\n"
        "# TYPE headend_cmds gauge\n"
        'headend_cmds{action="disconnect",state="sent"} 2\n'
        'headend_cmds{state="a"} 1.5\n'
    )


def test_label_values_and_help_are_escaped() -> None:
    text = render([Family("m", "gauge", "line1\nline2 \\").add(1, reason='say "hi"\\\n')])
    assert "# HELP m line1\\nline2 \\\\\n" in text
    assert 'm{reason="say \\"hi\\"\\\\\\n"} 1\n' in text


def test_missing_values_are_nan() -> None:
    assert render([Family("m", "gauge", "h").add(None)]).endswith("m NaN\n")
    assert render([Family("m", "gauge", "h").add(math.inf)]).endswith("m +Inf\n")
