"""Money is integer micro-credits everywhere; credits are for people to read."""

from __future__ import annotations

MICROS_PER_CREDIT = 1_000_000


def credits(micros: int) -> str:
    """Micro-credits as credits, for messages: 1500000 -> "1.5"."""
    whole, fraction = divmod(abs(micros), MICROS_PER_CREDIT)
    text = f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")
    return f"-{text}" if micros < 0 else text
