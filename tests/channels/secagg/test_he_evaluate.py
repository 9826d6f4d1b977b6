"""Encrypted model evaluation in-process: the polynomial is the metric, the CKKS path, vetting of weights."""

from __future__ import annotations

import base64

import numpy as np
import polars as pl
import pytest

from workbench.errors import InvalidQuery, PayloadTooLarge
from workbench.channels.secagg import he_params as params
from workbench.channels.secagg.he_evaluate import (LENGTH, check_weights, encode_weights, metric_polynomial, node_evaluate,
                                   softplus_poly, theta_vector)
from workbench.channels.secagg.worker import exact_sums
from workbench.channels.secagg.wire import HEOp, eval_monomials, plan
from workbench.protocol import ColumnInfo, DatasetInfo, PrivacyUnit


def _info() -> DatasetInfo:
    return DatasetInfo(name="t", tier="private", max_rows=1000, privacy_unit=PrivacyUnit(),
                       columns=[ColumnInfo(name="a", type="float", bounds=(0.0, 10.0)),
                                ColumnInfo(name="b", type="int", bounds=(-5, 5)),
                                ColumnInfo(name="y", type="float", bounds=(0.0, 100.0)),
                                ColumnInfo(name="flag", type="bool")])


def _frame(n=300, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 11, n)  # some out of bounds: clipped
    b = rng.integers(-5, 6, n)
    y = np.clip(3 + 4 * a - 2 * b + rng.normal(0, 5, n), 0, 100)
    flag = rng.random(n) < 1 / (1 + np.exp(-(-1 + 0.3 * a - 0.2 * b)))
    return pl.DataFrame({"a": a, "b": b, "y": y, "flag": flag})


def _moments_exact(info, op, df):
    p = plan(info, op, 2, 1.0, "distributed")
    values = exact_sums(info, op, p, df.lazy())
    return p, np.array([v / 10 ** d for v, d in zip(values, p.decimals)])


def test_sse_polynomial_equals_the_per_row_metric():
    info, df = _info(), _frame()
    op = HEOp(kind="evaluate", y="y", x=["a", "b"], metric="sse", degree=2)
    p, moments = _moments_exact(info, op, df)
    w, b0 = [3.5, -1.5], 4.0
    theta = theta_vector(op, metric_polynomial(op, p, w, b0)[0])
    a, bb, y = np.clip(df["a"].to_numpy(), 0, 10), df["b"].to_numpy(), df["y"].to_numpy()
    truth = float(((y - b0 - w[0] * a - w[1] * bb) ** 2).sum())
    assert float(theta @ moments) == pytest.approx(truth, rel=1e-5)
    assert moments[0] == df.height, "the first moment counts the rows"


@pytest.mark.parametrize("degree", [2, 4, 6])
def test_logloss_polynomial_is_within_its_stated_bound(degree):
    info, df = _info(), _frame()
    op = HEOp(kind="evaluate", y="flag", x=["a", "b"], metric="logloss", degree=degree)
    p, moments = _moments_exact(info, op, df)
    w, b0 = [0.3, -0.2], -1.0
    poly, bound = metric_polynomial(op, p, w, b0)
    theta = theta_vector(op, poly)
    a, bb = np.clip(df["a"].to_numpy(), 0, 10), df["b"].to_numpy().astype(float)
    yv = df["flag"].to_numpy().astype(float)
    z = b0 + w[0] * a + w[1] * bb
    exact = float((np.logaddexp(0, z) - yv * z).sum())
    assert abs(float(theta @ moments) - exact) <= bound * df.height + 1e-6
    assert len(eval_monomials(op)) == len(theta)


def test_softplus_fit_improves_with_degree():
    errors = [softplus_poly(4.0, d)[1] for d in (2, 4, 6)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01


def test_bad_ops_refused():
    info = _info()
    with pytest.raises(InvalidQuery):
        plan(info, HEOp(kind="evaluate", y="y", x=["a"], metric="sse", degree=4), 2, 1.0, "distributed")
    with pytest.raises(InvalidQuery) as err:
        plan(info, HEOp(kind="evaluate", y="y", x=["a"], metric="logloss", degree=2), 2, 1.0, "distributed")
    assert err.value.code == "bad_bounds", "logloss needs a 0/1 outcome"
    with pytest.raises(InvalidQuery):  # too many moments (one ciphertext each)
        many = DatasetInfo(name="m", tier="private", max_rows=10, privacy_unit=PrivacyUnit(),
                           columns=[ColumnInfo(name=f"c{i}", type="float", bounds=(0, 1)) for i in range(8)])
        plan(many, HEOp(kind="evaluate", y="c0", x=[f"c{i}" for i in range(1, 8)], metric="logloss", degree=4),
             2, 1.0, "distributed")


# ---------------------------------------------------------------- the CKKS path, in-process


def _session(op, p, theta, max_rows):
    import tenseal as ts

    ctx = params.new_eval_context()
    slots, s, s_count = encode_weights(op, p, theta, max_rows)
    weights = [params.b64encode(ts.ckks_vector(ctx, v).serialize()) for v in slots]
    return ctx, weights, s, s_count


def test_encrypted_evaluation_matches_plaintext_and_only_two_slots_survive():
    import tenseal as ts
    from tenseal import sealapi

    info, df = _info(), _frame()
    op = HEOp(kind="evaluate", y="y", x=["a", "b"], metric="sse", degree=2)
    p = plan(info, op, 2, 1.0, "distributed")
    values = exact_sums(info, op, p, df.lazy())
    theta = theta_vector(op, metric_polynomial(op, p, [3.5, -1.5], 4.0)[0])
    ctx, weights, s, s_count = _session(op, p, theta, info.max_rows)
    public = params.b64encode(params.public_bytes(ctx))
    payload = {"context": public, "weights": weights, "moments": len(theta)}
    assert check_weights(payload)["weights"] == len(theta)
    out = node_evaluate({**payload, "values": values, "decimals": p.decimals, "max_rows": info.max_rows})
    vec = ts.ckks_vector_from(ctx, base64.b64decode(out["ciphertext"]))
    total, count = vec.decrypt()[:LENGTH]
    moments = np.array([v / 10 ** d for v, d in zip(values, p.decimals)])
    assert total * info.max_rows / s == pytest.approx(float(theta @ moments), rel=1e-6)
    assert count * info.max_rows / s_count == pytest.approx(df.height, abs=1e-3)
    # A crafted weight ciphertext that packs values into every slot (and claims 2): the node's product
    # keeps only the first two slots; the rest decrypts to ~0.
    full = ts.ckks_vector(ctx, [1.0] * 4096).serialize()
    crafted = b"\x0a\x01\x02" + full[4:]  # protobuf: size field 4096 -> 2
    rigged = [params.b64encode(crafted)] + weights[1:]
    out = node_evaluate({**payload, "weights": rigged, "values": values, "decimals": p.decimals,
                         "max_rows": info.max_rows})
    cipher = ts.ckks_vector_from(ctx, base64.b64decode(out["ciphertext"])).ciphertext()
    cipher = cipher[0] if isinstance(cipher, list) else cipher
    plain = sealapi.Plaintext()
    sealapi.Decryptor(ctx.seal_context().data, ctx.secret_key().data).decrypt(cipher, plain)
    every_slot = sealapi.CKKSEncoder(ctx.seal_context().data).decode_double(plain)
    assert max(abs(v) for v in every_slot[2:]) < 1e-4


def test_node_refuses_bad_weight_ciphertexts():
    import tenseal as ts

    info = _info()
    op = HEOp(kind="evaluate", y="y", x=["a"], metric="sse", degree=2)
    p = plan(info, op, 2, 1.0, "distributed")
    theta = np.ones(len(p.slots))
    ctx, weights, _s, _c = _session(op, p, theta, info.max_rows)
    public = params.b64encode(params.public_bytes(ctx))
    base = {"context": public, "moments": len(theta)}

    def refused(weights_, code=None, context=public):
        with pytest.raises((InvalidQuery, PayloadTooLarge)) as err:
            check_weights({**base, "context": context, "weights": weights_})
        if code:
            assert err.value.code in (code if isinstance(code, tuple) else (code,))
        return err.value

    refused(weights[:-1], "bad_ciphertext")  # one missing
    refused(weights + weights[:1], "bad_ciphertext")  # one too many
    refused([params.b64encode(ts.ckks_vector(ctx, [1.0, 2.0, 3.0]).serialize())] + weights[1:], "bad_ciphertext")
    refused(["A" * (params.MAX_CIPHERTEXT_BYTES * 2)] + weights[1:], "payload_too_large")
    refused([params.b64encode(b"\x00" * 5000)] + weights[1:], "bad_ciphertext")
    # Under other parameters: a BFV vector, a CKKS vector of another context, a lower level, another scale.
    bfv = params.new_context()
    refused([params.b64encode(ts.bfv_vector(bfv, [1, 2]).serialize())] + weights[1:], "bad_ciphertext")
    low = ts.ckks_vector(ctx, [1.0, 2.0]) * [1.0, 1.0]  # already rescaled: no level left for the node
    refused([params.b64encode(low.serialize())] + weights[1:], "bad_ciphertext")
    other = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 60])
    other.global_scale = 2 ** 30
    refused([params.b64encode(ts.ckks_vector(other, [1.0, 2.0]).serialize())] + weights[1:], "bad_ciphertext")
    # The context itself: BFV where CKKS is pinned, other CKKS parameters, a secret key.
    refused(weights, "bad_context", context=params.b64encode(params.public_bytes(bfv)))
    small = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[50, 40, 50])
    small.global_scale = 2 ** 40
    refused(weights, "bad_context", context=params.b64encode(params.public_bytes(small)))
    with_secret = ctx.serialize(save_secret_key=True)  # larger than the cap, or refused for its key
    refused(weights, ("bad_context", "payload_too_large"), context=params.b64encode(with_secret))
