"""Arithmetic in the prime field of the SMPC protocol.

``P = 2**61 - 1`` (a Mersenne prime). Values are signed integers, encoded as
``v mod P``; a total ``T`` decodes correctly while ``|T| < P / 2`` (about
1.15e18). The encoding plan of :mod:`workbench.channels.secagg.wire` already keeps every
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

import numpy as np

P = (1 << 61) - 1
HALF = P // 2
BYTES = 8
_MASK = np.uint64(P)  # 61 one-bits


def _encode(values: Sequence[int]) -> np.ndarray:
    arr = np.array([int(v) for v in values], dtype=object)
    if any(abs(v) > HALF for v in arr):
        raise ValueError("value outside the field's signed range")
    return np.array([int(v) % P for v in arr], dtype=np.uint64)


def encode(values: Sequence[int]) -> list[int]:
    """Signed integers to field elements (refuses values that could not decode)."""
    return [int(v) for v in _encode(values)]


def decode(values: Sequence[int]) -> list[int]:
    """Field elements to signed integers in ``(-P/2, P/2]``."""
    return [int(v) - P if int(v) > HALF else int(v) for v in values]


def _uniform(length: int) -> np.ndarray:
    """``length`` uniform field elements from the OS CSPRNG (61 random bits, rejecting the one value == P)."""
    out = np.frombuffer(secrets.token_bytes(BYTES * length), dtype=np.uint64) & _MASK
    bad = out == _MASK
    while bad.any():
        out = out.copy()
        out[bad] = np.frombuffer(secrets.token_bytes(BYTES * int(bad.sum())), dtype=np.uint64) & _MASK
        bad = out == _MASK
    return out


def _add(vectors) -> np.ndarray:
    acc = np.zeros(len(vectors[0]), dtype=np.uint64)
    for v in vectors:  # each term < 2**61: acc + v < 2**62, no uint64 overflow
        acc = (acc + np.asarray(v, dtype=np.uint64)) % _MASK
    return acc


def split(values: Sequence[int], n: int) -> list[list[int]]:
    """``n`` additive shares of the signed vector ``values`` (uniform, from :mod:`secrets`)."""
    if n < 2:
        raise ValueError("secret sharing needs at least two parties")
    encoded = _encode(values)
    shares = [_uniform(len(encoded)) for _ in range(n - 1)]
    last = (encoded + _MASK - _add(shares)) % _MASK if shares else encoded
    return [s.tolist() for s in shares] + [last.tolist()]


def add(*vectors: Sequence[int]) -> list[int]:
    """Element-wise sum mod ``P``."""
    return _add([_check(v) for v in vectors]).tolist()


def _check(vector: Sequence[int]) -> np.ndarray:
    if any(not 0 <= int(v) < P for v in vector):
        raise ValueError("element outside the field")
    return np.array([int(v) for v in vector], dtype=np.uint64)


def to_bytes(vector: Sequence[int]) -> bytes:
    return np.asarray(vector, dtype=np.uint64).astype(">u8").tobytes()


def from_bytes(raw: bytes, length: int) -> list[int]:
    if len(raw) != length * BYTES:
        raise ValueError("share has the wrong length")
    out = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
    if (out >= _MASK).any():
        raise ValueError("share element outside the field")
    return out.tolist()
