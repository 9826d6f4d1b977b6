"""HE building blocks in-process: overflow guards, clipping, distributed noise, context vetting, fuzzing."""

from __future__ import annotations

import math
import os
import random

import numpy as np
import polars as pl
import pytest

from workbench.errors import InvalidQuery, PayloadTooLarge
from workbench.channels.secagg import he_params as params
from workbench.channels.secagg.worker import _distributed_share, add_noise, exact_sums
from workbench.channels.secagg.wire import HEOp, plan
from workbench.protocol import ColumnInfo, DatasetInfo, PrivacyUnit


def _info(max_rows=1000, bounds=(0.0, 100.0), kind="float") -> DatasetInfo:
    return DatasetInfo(name="t", tier="private", max_rows=max_rows, privacy_unit=PrivacyUnit(),
                       columns=[ColumnInfo(name="v", type=kind, bounds=bounds),
                                ColumnInfo(name="w", type="float", bounds=(-5.0, 5.0))])


def test_inputs_at_their_bounds_never_wrap():
    import tenseal as ts

    info = _info(max_rows=100_000, bounds=(-50_000.0, 50_000.0))
    op = HEOp(kind="sum", columns=["v"], count=True)
    p = plan(info, op, 3, 0.01, "conservative")
    ctx = params.new_context()
    public = ts.context_from(params.public_bytes(ctx))
    # Every node at the largest value it may ever send (data at the bound plus the clamp on its noise).
    worst = [ts.bfv_vector(public, [a for a in p.max_abs_per_node]) for _ in range(3)]
    total = ts.bfv_vector_from(ctx, (worst[0] + worst[1] + worst[2]).serialize())
    assert total.decrypt() == [3 * a for a in p.max_abs_per_node]
    negative = [ts.bfv_vector(public, [-a for a in p.max_abs_per_node]) for _ in range(3)]
    total = ts.bfv_vector_from(ctx, (negative[0] + negative[1] + negative[2]).serialize())
    assert total.decrypt() == [-3 * a for a in p.max_abs_per_node]


def test_plans_that_could_wrap_are_refused():
    info = _info(max_rows=10_000_000, bounds=(0.0, 1e9))
    with pytest.raises(InvalidQuery) as err:
        plan(info, HEOp(kind="sum", columns=["v"]), 64, 0.001, "distributed")
    assert err.value.code == "would_overflow"


def test_out_of_bound_values_are_clipped_and_nulls_imputed():
    info = _info()
    op = HEOp(kind="sum", columns=["v", "w"], count=True)
    p = plan(info, op, 2, 1.0, "distributed")
    lf = pl.LazyFrame({"v": [1e12, -7.0, None, 50.5], "w": [100.0, -100.0, 1.25, float("nan")]})
    values = exact_sums(info, op, p, lf)
    assert values[0] / 10 ** p.decimals[0] == pytest.approx(100 + 0 + 50 + 50.5)
    assert values[1] / 10 ** p.decimals[1] == pytest.approx(5 - 5 + 1.25 + 0)
    assert values[2] == 4


def test_distributed_shares_add_up_to_discrete_laplace():
    rng = np.random.default_rng(1)
    b, k, n = 3.0, 3, 60_000
    totals = np.array([sum(_distributed_share(b, k, rng) for _ in range(k)) for _ in range(n)])
    # Discrete Laplace(b): variance 2q/(1-q)^2 with q = exp(-1/b); P(0) = (1-q)/(1+q).
    q = math.exp(-1 / b)
    assert totals.var() == pytest.approx(2 * q / (1 - q) ** 2, rel=0.05)
    assert (totals == 0).mean() == pytest.approx((1 - q) / (1 + q), abs=0.01)
    one_share = np.array([_distributed_share(b, k, rng) for _ in range(n)])
    assert one_share.var() == pytest.approx(2 * q / (1 - q) ** 2 / k, rel=0.07), "one share carries 1/k of the noise"


def test_noisy_contribution_is_clamped():
    info = _info()
    p = plan(info, HEOp(kind="sum", columns=["v"]), 2, 1.0, "conservative")
    noisy = add_noise([p.max_abs_per_node[0] * 10], p)
    assert noisy == [p.max_abs_per_node[0]]


def _encode(raw: bytes) -> dict:
    return {"context": params.b64encode(raw)}


def test_context_vetting():
    ctx = params.new_context()
    ok = params.check_context(_encode(params.public_bytes(ctx)))
    assert len(ok["context_sha256"]) == 64 and ok["bytes"] < params.MAX_CONTEXT_BYTES
    with pytest.raises(InvalidQuery, match="secret key"):
        params.check_context(_encode(ctx.serialize(save_secret_key=True)))
    with pytest.raises(PayloadTooLarge):
        params.check_context({"context": "A" * (params.MAX_CONTEXT_BYTES * 2)})
    with pytest.raises(InvalidQuery):
        params.check_context({"context": "not base64!"})


def test_fuzzed_contexts_and_ciphertexts_raise_clean_errors():
    import tenseal as ts

    random.seed(7)
    ctx = params.new_context()
    public = params.public_bytes(ctx)
    cipher = ts.bfv_vector(ctx, [1, 2]).serialize()
    loaded = params.load_public_context(public)
    for i in range(60):
        blob = bytearray(public if i % 2 else cipher)
        for _ in range(random.randint(1, 20)):
            blob[random.randrange(len(blob))] = random.randrange(256)
        blob = bytes(blob[: random.randint(1, len(blob))]) if i % 3 == 0 else bytes(blob)
        try:
            if i % 2:
                params.load_public_context(blob)
            else:
                params.load_vector(loaded, blob, 2)
        except (InvalidQuery, PayloadTooLarge):
            pass  # refused cleanly; a loaded mutant is also fine (BFV ciphertexts carry no integrity)
    assert os.getpid() > 0
