"""The raw MQTT probe's packets, checked byte by byte."""

from __future__ import annotations

import pytest

from api.health import connect_packet, parse_connack


def test_connect_packet_layout() -> None:
    pkt = connect_packet("abc", keepalive_s=10)
    assert pkt[0] == 0x10
    assert pkt[1] == len(pkt) - 2
    assert pkt[2:8] == b"\x00\x04MQTT"
    assert pkt[8] == 4  # protocol level 3.1.1
    assert pkt[9] == 0x02  # clean session
    assert pkt[10:12] == b"\x00\x0a"
    assert pkt[12:] == b"\x00\x03abc"


def test_connect_packet_long_client_id_uses_multibyte_length() -> None:
    pkt = connect_packet("x" * 200)
    assert pkt[1] & 0x80  # continuation bit
    length = (pkt[1] & 0x7F) + pkt[2] * 128
    assert length == len(pkt) - 3


@pytest.mark.parametrize(
    ("data", "rc"),
    [
        pytest.param(b"\x20\x02\x00\x00", 0, id="accepted"),
        pytest.param(b"\x20\x02\x00\x05", 5, id="not-authorized"),
    ],
)
def test_parse_connack(data: bytes, rc: int) -> None:
    assert parse_connack(data) == rc


def test_parse_connack_rejects_other_packets() -> None:
    with pytest.raises(ValueError, match="not a CONNACK"):
        parse_connack(b"\x30\x02\x00\x00")
