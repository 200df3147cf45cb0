"""Exact money: integer minor units, one rounding rule.

Rules
- Balances, ledger amounts and top-ups are ``int`` minor units (fen for CNY).
- Prices are decimal strings per kWh in major units (``"0.56"`` CNY/kWh). They are
  converted once, exactly, to integer *micro-minor units per Wh*
  (1e-6 fen per Wh): ``0.56 CNY/kWh = 56 fen/kWh = 0.056 fen/Wh = 56_000 µfen/Wh``.
  A price that does not convert exactly is rejected (no silent rounding of prices).
- Interval charges are exact integers in micro-minor units (energy_wh * rate).
- Rounding happens once, when a ledger entry is posted, by the rule ROUNDING =
  "half up": ``floor(x + 1/2)`` (a tie goes toward +infinity, so the rule commutes
  with whole-unit shifts), and the remainder is carried to the next posting of the
  same meter. The posted debits of a meter therefore always equal the half-up
  rounding of its cumulative exact charge, whatever the batching, and are never
  negative.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

ROUNDING = "half_up"  # floor(x + 1/2)
MICRO = 1_000_000  # micro-minor units per minor unit

# ISO 4217 minor-unit digits of the currencies we accept.
MINOR_DIGITS: dict[str, int] = {"CNY": 2, "EUR": 2, "USD": 2, "GBP": 2, "INR": 2, "ZAR": 2, "KES": 2, "JPY": 0}


def minor_digits(currency: str) -> int:
    try:
        return MINOR_DIGITS[currency]
    except KeyError:
        raise ValueError(f"unsupported currency {currency!r}") from None


def parse_decimal(text: str | int | Decimal) -> Decimal:
    """A decimal from a string (never a float)."""
    if isinstance(text, float):  # pragma: no cover - guarded by types, kept for callers from JSON
        raise ValueError("money must be a decimal string, not a float")
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        raise ValueError(f"not a decimal number: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    return value


def price_micro_per_wh(price_per_kwh: str | Decimal, currency: str) -> int:
    """Exact integer µ-minor units per Wh of a per-kWh price in major units."""
    price = parse_decimal(price_per_kwh)
    if price < 0:
        raise ValueError(f"price must not be negative: {price_per_kwh}")
    # major/kWh * 10^digits minor/major * 10^6 micro/minor / 10^3 Wh/kWh
    scaled = price.scaleb(minor_digits(currency) + 3)
    if scaled != scaled.to_integral_value():
        raise ValueError(
            f"price {price_per_kwh} {currency}/kWh has more precision than 1e-6 minor units per Wh; "
            f"use at most {minor_digits(currency) + 3} decimal places"
        )
    return int(scaled)


def to_minor(amount_major: str | Decimal, currency: str) -> int:
    """Major units (decimal string) to exact minor units; more precision is rejected."""
    value = parse_decimal(amount_major)
    scaled = value.scaleb(minor_digits(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount_major} {currency} is not a whole number of minor units")
    return int(scaled)


def round_micro(amount_micro: int) -> int:
    """Minor units of an exact µ-minor amount, by ROUNDING: floor(x + 1/2)."""
    return (amount_micro + MICRO // 2) // MICRO


def post_with_carry(residual_micro: int, charge_micro: int) -> tuple[int, int]:
    """Round ``residual + charge`` to minor units; return (minor, new residual).

    The residual stays within half a minor unit, so the posted total never drifts
    from the rounded exact total.
    """
    total = residual_micro + charge_micro
    minor = round_micro(total)
    return minor, total - minor * MICRO


def format_minor(amount_minor: int, currency: str) -> str:
    """``12345`` fen -> ``"123.45"`` (for notices; never parsed back)."""
    return str(Decimal(amount_minor).scaleb(-minor_digits(currency)))
