"""Arithmetic in the prime field of the SMPC protocol.

``P = 2**61 - 1`` (a Mersenne prime). Values are signed integers, encoded as
``v mod P``; a total ``T`` decodes correctly while ``|T| < P / 2`` (about
1.15e18). The encoding plan of :mod:`workbench.he.spec` already keeps every
total below the BFV limit (about 5.6e14), far inside that range, so the same
plan, clamp and overflow check serve both protocols.

A vector is split into ``n`` additive shares: ``n - 1`` drawn uniformly from
the field with :func:`secrets.randbelow`, the last one making the sum right.
Any ``n - 1`` shares are independent and uniform: they say nothing about the
vector.
"""

from __future__ import annotations

import secrets
from typing import Sequence

P = (1 << 61) - 1
HALF = P // 2
BYTES = 8


def encode(values: Sequence[int]) -> list[int]:
    """Signed integers to field elements (refuses values that could not decode)."""
    out = []
    for v in values:
        v = int(v)
        if abs(v) > HALF:
            raise ValueError("value outside the field's signed range")
        out.append(v % P)
    return out


def decode(values: Sequence[int]) -> list[int]:
    """Field elements to signed integers in ``(-P/2, P/2]``."""
    return [int(v) - P if int(v) > HALF else int(v) for v in values]


def split(values: Sequence[int], n: int) -> list[list[int]]:
    """``n`` additive shares of the signed vector ``values`` (uniform, from :mod:`secrets`)."""
    if n < 2:
        raise ValueError("secret sharing needs at least two parties")
    encoded = encode(values)
    shares = [[secrets.randbelow(P) for _ in encoded] for _ in range(n - 1)]
    last = [(v - sum(col)) % P for v, col in zip(encoded, zip(*shares))]
    return shares + [last]


def add(*vectors: Sequence[int]) -> list[int]:
    """Element-wise sum mod ``P``."""
    return [sum(col) % P for col in zip(*vectors)]


def to_bytes(vector: Sequence[int]) -> bytes:
    return b"".join(int(v).to_bytes(BYTES, "big") for v in vector)


def from_bytes(raw: bytes, length: int) -> list[int]:
    if len(raw) != length * BYTES:
        raise ValueError("share has the wrong length")
    out = [int.from_bytes(raw[i:i + BYTES], "big") for i in range(0, len(raw), BYTES)]
    if any(v >= P for v in out):
        raise ValueError("share element outside the field")
    return out
