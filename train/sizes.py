"""Parsing 'AxB' size arguments, one rule for every command (which of A, B is the height is theirs to say)."""

from __future__ import annotations


def parse_pair(text: str) -> tuple[int, int]:
    """'1280x1918' -> (1280, 1918); ValueError unless it is two positive integers joined by 'x'."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"'{text}' is not two whole numbers joined by x") from None
    if a < 1 or b < 1:
        raise ValueError(f"'{text}': sizes must be positive")
    return a, b
