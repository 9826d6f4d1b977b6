"""SMPC building blocks in-process: the field, shares, sealing (end to end with real nodes: test_federation.py)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.errors import InvalidQuery
from workbench.channels.secagg.he_params import MAX_ABS_TOTAL
from workbench.channels.secagg import smpc_field as field
from workbench.channels.secagg import smpc_sealing as sealing


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-MAX_ABS_TOTAL, MAX_ABS_TOTAL), min_size=1, max_size=20), st.integers(2, 7))
def test_shares_add_up_and_decode_signed(values, n):
    shares = field.split(values, n)
    assert len(shares) == n and all(len(s) == len(values) for s in shares)
    assert all(0 <= v < field.P for s in shares for v in s)
    assert field.decode(field.add(*shares)) == values


def test_totals_at_the_plan_limit_never_wrap():
    parties = [[MAX_ABS_TOTAL // 3] * 4, [MAX_ABS_TOTAL // 3] * 4, [-(MAX_ABS_TOTAL // 3)] * 4]
    partials = [field.add(*col) for col in zip(*[field.split(v, 3) for v in parties])]
    assert field.decode(field.add(*partials)) == [MAX_ABS_TOTAL // 3] * 4
    with pytest.raises(ValueError):
        field.encode([field.P])


def test_any_n_minus_1_shares_look_uniform():
    # Two very different secrets: the first share's distribution is the same (uniform over the field).
    import numpy as np

    firsts = {v: np.array([field.split([v], 3)[0][0] / field.P for _ in range(3000)]) for v in (0, 10**12)}
    for sample in firsts.values():
        assert abs(sample.mean() - 0.5) < 0.03 and abs(sample.var() - 1 / 12) < 0.01
    with pytest.raises(ValueError):
        field.split([1], 1)


def test_sealed_shares_open_only_for_their_recipient_session_and_shape():
    sk_a, pk_a = sealing.new_key()
    sk_b, pk_b = sealing.new_key()
    sk_c, pk_c = sealing.new_key()
    payload = field.to_bytes([1, 2, 3])
    sealed = sealing.seal(sk_a, pk_b, "s1", "a", "b", payload, 3)
    assert sealing.open_sealed(sk_b, pk_a, "s1", "a", "b", sealed, 3) == payload
    for args in [(sk_c, pk_a, "s1", "a", "b"),  # someone else's key
                 (sk_b, pk_a, "s2", "a", "b"),  # another session
                 (sk_b, pk_a, "s1", "c", "b"),  # claimed from another sender
                 (sk_b, pk_c, "s1", "a", "b")]:  # a substituted sender key
        with pytest.raises(InvalidQuery) as err:
            sealing.open_sealed(*args, sealed, 3)
        assert err.value.code == "bad_ciphertext"
    with pytest.raises(InvalidQuery):
        sealing.open_sealed(sk_b, pk_a, "s1", "a", "b", sealed, 4)  # another length
    raw = bytearray(base64.b64decode(sealed))
    raw[20] ^= 1
    with pytest.raises(InvalidQuery):
        sealing.open_sealed(sk_b, pk_a, "s1", "a", "b", base64.b64encode(bytes(raw)).decode(), 3)
    for bad_key in ["!!", base64.b64encode(b"x" * 31).decode(), base64.b64encode(bytes(32)).decode()]:
        with pytest.raises(InvalidQuery):
            sealing.seal(sk_a, bad_key, "s1", "a", "b", payload, 3)
    with pytest.raises(ValueError):
        field.from_bytes(b"\xff" * 8, 1)  # not a field element
