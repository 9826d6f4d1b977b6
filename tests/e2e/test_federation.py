"""Federation end to end: three real node processes and a real aggregator process on loopback."""

from __future__ import annotations

import base64
import math
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

import workbench as wb
from tests.conftest import launch, start_aggregator
from tests.intervals import near, near_interval
from workbench.aggregator.app import add_node

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")




@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    from concurrent.futures import ThreadPoolExecutor

    state = root / "aggregator"
    tokens = {h.replace("_", "-"): add_node(state, h.replace("_", "-")) for h in HOSPITALS}
    with ThreadPoolExecutor(4) as pool:  # start the four processes side by side
        agg_future = pool.submit(start_aggregator, state)
        nodes = list(pool.map(lambda h: launch(root / h, h), HOSPITALS))
        proc, agg_url = agg_future.result()
    for node, name in zip(nodes, tokens):
        r = httpx.put(f"{node.url}/v1/he/aggregators/main", json={"url": agg_url, "token": tokens[name]},
                      headers={"Authorization": f"Bearer {node.owner_token}"})
        assert r.status_code == 200, r.text
    handles = [wb.connect(n.url, token=n.analyst_token) for n in nodes]
    data = pl.concat([_read(_data_path(n.config_path)) for n in nodes])
    yield {"nodes": nodes, "handles": handles, "fed": wb.federation(handles), "agg_url": agg_url, "agg": proc,
           "pooled": data, "root": root, "agg_tokens": tokens}
    for h in handles:
        h.close()
    for n in nodes:
        n.stop()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def _data_path(config_path: Path) -> Path:
    import tomllib

    raw = tomllib.loads(config_path.read_text())
    return (config_path.parent / raw["datasets"]["patients"]["path"]).resolve()


def _read(path: Path) -> pl.DataFrame:
    return pl.read_csv(path) if path.suffix == ".csv" else pl.read_parquet(path)


def _spent(handle, dataset="patients") -> float:
    return handle.dataset(dataset).budget()["epsilon_spent"]


# ---------------------------------------------------------------- federated DP


def test_federated_mean_count_charged_once_and_replay_free(env):
    fed = env["fed"]
    pooled = env["pooled"]
    ds = fed.dataset("patients")
    before = [_spent(h) for h in env["handles"]]
    preview = ds.mean("age").preview(epsilon=0.2)
    assert [_spent(h) for h in env["handles"]] == before, "a preview spends nothing"
    assert set(preview.nodes["node"]) == {n.url for n in env["nodes"]}

    df = ds.mean("age").release(epsilon=0.2)
    truth = pooled["age"].mean()
    est = df["estimate"].iloc[0]
    assert near(df.iloc[0], truth)
    assert df.attrs["nodes"] == [n.url for n in env["nodes"]] and df.attrs["missing_nodes"] == []
    after = [_spent(h) for h in env["handles"]]
    assert [a - b for a, b in zip(after, before)] == pytest.approx([0.2] * 3), "each node charged exactly once"

    again = ds.mean("age").release(epsilon=0.2)
    assert again.attrs["replayed"] and again["estimate"].iloc[0] == est
    assert [_spent(h) for h in env["handles"]] == pytest.approx(after), "a replay is free"

    count = ds.count().release(epsilon=0.3)
    assert near(count.iloc[0], pooled.height), count


def test_federated_group_by_histogram_quantile(env):
    ds = env["fed"].dataset("patients")
    pooled = env["pooled"]
    by_sex = ds.group_by("sex").count().release(epsilon=0.2)
    truth = dict(pooled.group_by("sex").len().iter_rows())
    for _, row in by_sex.iterrows():
        assert near(row, truth[row["sex"]]), (row, truth)
        assert row["nodes_reporting"] == 3
    hist = ds.histogram("diagnosis").release(epsilon=0.2)
    assert hist["estimate"].sum() == pytest.approx(pooled.height, abs=400)
    median = ds.median("age").release(epsilon=0.3)
    assert abs(median["estimate"].iloc[0] - pooled["age"].median()) < 2.0
    assert median["lower"].iloc[0] <= median["estimate"].iloc[0] <= median["upper"].iloc[0]
    means = ds.group_by("smoker").mean("bmi").release(epsilon=0.2)
    truth_bmi = dict(pooled.group_by("smoker").agg(pl.col("bmi").mean()).iter_rows())
    for _, row in means.iterrows():
        assert near(row, truth_bmi[row["smoker"]]), (row, truth_bmi)


# ---------------------------------------------------------------- secure aggregation (HE)


def test_secure_sum_matches_pooled_total(env):
    ds = env["fed"].dataset("patients")
    pooled = env["pooled"]
    before = [_spent(h) for h in env["handles"]]
    df = ds.secure_sum(["cost", "visits"], epsilon=0.2, count=True)
    after = [_spent(h) for h in env["handles"]]
    assert [a - b for a, b in zip(after, before)] == pytest.approx([0.2] * 3)
    truth = {"sum(cost)": pooled["cost"].sum(), "sum(visits)": pooled["visits"].sum(), "count": pooled.height}
    for _, row in df.iterrows():
        assert near(row, truth[row["statistic"]]), row
    assert df.attrs["aggregator"] == env["agg_url"] and df.attrs["mode"] == "distributed"
    assert df.attrs["parties"] == ["hospital-a", "hospital-b", "hospital-c"]

    conservative = ds.secure_sum("visits", epsilon=0.2, mode="conservative")
    assert near(conservative.iloc[0], truth["sum(visits)"]), conservative


def test_secure_sum_replay_is_free_and_same_total(env):
    ds = env["fed"].dataset("patients")
    first = ds.secure_sum("age", epsilon=0.1)
    spent = [_spent(h) for h in env["handles"]]
    second = ds.secure_sum("age", epsilon=0.1)
    assert [_spent(h) for h in env["handles"]] == pytest.approx(spent)
    assert all(second.attrs["replayed"].values())
    assert second["estimate"].iloc[0] == first["estimate"].iloc[0], "the same noisy total, re-encrypted"
    assert second.attrs["session_id"] != first.attrs["session_id"]


def test_linear_regression_close_to_pooled_ols(env):
    ds = env["fed"].dataset("patients")
    pooled = env["pooled"].with_columns(pl.col("bmi").fill_null(35.0), pl.col("cost").fill_null(25_000.0),
                                        pl.col("age").fill_null(50))
    x = np.column_stack([np.ones(pooled.height), pooled["age"].to_numpy(), pooled["bmi"].to_numpy()])
    y = pooled["cost"].to_numpy()
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    se = np.sqrt(np.diag(resid @ resid / (len(y) - 3) * np.linalg.inv(x.T @ x)))
    before = [_spent(h) for h in env["handles"]]
    fit = ds.linear_regression(y="cost", x=["age", "bmi"], epsilon=0.5)
    assert [_spent(h) - b for h, b in zip(env["handles"], before)] == pytest.approx([0.5] * 3)
    assert list(fit.index) == ["intercept", "age", "bmi"]
    for term, b, s in zip(fit.index, beta, se):
        # The DP noise moves the intercept by ~450 EUR on average here (more than its sampling error, ~130):
        # the tolerance combines both, as the interval does.
        tolerance = 5 * math.hypot(s, fit.loc[term, "dp_std_err"])
        assert abs(fit.loc[term, "coef"] - b) < tolerance, (term, fit.loc[term, "coef"], b, s)
        assert fit.loc[term, "std_err"] == pytest.approx(s, rel=0.5)
    assert fit.attrs["epsilon_charged"] == {n.url: 0.5 for n in env["nodes"]}


def test_regression_question_pooled_by_secure_aggregation(env):
    """``fed_ds.linear_regression(y, x).release(epsilon, protocol=...)``: the single-node table (SEs with the DP
    noise), its moments summed under encryption or secret sharing; per-node DP moments by default."""
    ds = env["fed"].dataset("patients")
    frame = env["pooled"].to_pandas()
    beta = np.linalg.lstsq(np.c_[np.ones(len(frame)), frame["age"], frame["bmi"]], frame["cost"], rcond=None)[0]
    question = ds.linear_regression(y="cost", x=["age", "bmi"])
    before = [_spent(h) for h in env["handles"]]
    preview = question.preview(epsilon=0.6, protocol="he")
    assert [_spent(h) for h in env["handles"]] == before, "a preview spends nothing"
    assert len(preview.accuracy) == 10 and (preview.accuracy["accuracy"] > 0).all()  # n, 3 sums, 6 products
    assert set(preview.nodes["node"]) == {n.url for n in env["nodes"]}
    for protocol in ("he", None):
        before = [_spent(h) for h in env["handles"]]
        fit = question.release(epsilon=0.6, protocol=protocol)
        assert [_spent(h) - b for h, b in zip(env["handles"], before)] == pytest.approx([0.6] * 3)
        assert list(fit["term"]) == ["intercept", "age", "bmi"]
        for (_, row), b in zip(fit.iterrows(), beta):
            assert near(row, b), (protocol, row["term"], row["estimate"], b)
    corr = ds.corr(["age", "cost"]).release(epsilon=0.6, protocol="smpc")
    pair = corr[(corr["row"] == "age") & (corr["column"] == "cost")].iloc[0]
    assert near(pair, frame[["age", "cost"]].corr().iloc[0, 1]), pair
    assert corr.attrs["protocol"] == "smpc"
    with pytest.raises(wb.WorkbenchError) as caught:
        ds.filter(wb.col("age") >= 65).corr(["age", "cost"]).release(epsilon=0.6, protocol="he")
    assert caught.value.code == "not_supported"


# ---------------------------------------------------------------- what flows over the wire


def _session(env, op=None, parties=None):
    from workbench.channels.secagg import he_params as params

    ctx = params.new_context()
    body = {"dataset": "patients", "op": op or {"kind": "sum", "columns": ["visits"]}, "epsilon": 0.1,
            "parties": parties or ["hospital-a", "hospital-b", "hospital-c"],
            "context": params.b64encode(params.public_bytes(ctx))}
    r = httpx.post(env["agg_url"] + "/v1/sessions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return ctx, r.json()


def test_analyst_never_sees_a_partial_and_aggregator_cannot_decrypt(env):
    import tenseal as ts

    ctx, created = _session(env)
    node, handle = env["nodes"][0], env["handles"][0]
    r = httpx.post(f"{node.url}/v1/datasets/patients/he/contribute",
                   json={"aggregator_url": env["agg_url"], "session_id": created["session_id"]},
                   headers={"Authorization": f"Bearer {node.analyst_token}"}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    # The node's answer to the analyst: hashes and accounting only, no values, no ciphertext.
    assert set(body) == {"dataset", "dataset_version", "session_id", "release_id", "replayed", "epsilon",
                         "epsilon_charged", "grant_id", "ciphertext_sha256", "ciphertext_bytes"}
    assert len(r.content) < 1000
    # The aggregator will not hand out the total before every party contributed, nor any single ciphertext.
    result = httpx.get(f"{env['agg_url']}/v1/sessions/{created['session_id']}/result",
                       headers={"X-Result-Token": created["result_token"]})
    assert result.status_code == 503 and result.json()["code"] == "session_incomplete"
    assert "ciphertext" not in result.text
    # The analyst cannot read the session as if it were a node (no node token), nor forge a contribution.
    assert httpx.get(f"{env['agg_url']}/v1/sessions/{created['session_id']}").status_code == 401
    forged = httpx.post(f"{env['agg_url']}/v1/sessions/{created['session_id']}/contributions",
                        json={"ciphertext": "AAAA"}, headers={"Authorization": "Bearer analyst-guess"})
    assert forged.status_code == 401
    # The history endpoint carries no values either.
    history = handle.history()
    assert "values" not in history.to_json()
    # A one-party session is refused at the aggregator.
    from workbench.channels.secagg import he_params as params

    one = httpx.post(env["agg_url"] + "/v1/sessions", json={
        "dataset": "patients", "op": {"kind": "sum", "columns": ["visits"]}, "epsilon": 0.1,
        "parties": ["hospital-a"], "context": params.b64encode(params.public_bytes(ctx))}, timeout=60)
    assert one.status_code == 403 and one.json()["code"] == "privacy_violation"
    # The aggregator's view: a ciphertext under the analyst's public context cannot be decrypted with it.
    pub = ts.context_from(params.public_bytes(ctx))
    vec = ts.bfv_vector(pub, [123])
    with pytest.raises(Exception):
        vec.decrypt()


def test_node_refuses_untrusted_aggregator_before_charging(env):
    node, handle = env["nodes"][1], env["handles"][1]
    before = _spent(handle)
    r = httpx.post(f"{node.url}/v1/datasets/patients/he/contribute",
                   json={"aggregator_url": "http://127.0.0.1:9", "session_id": "x" * 32},
                   headers={"Authorization": f"Bearer {node.analyst_token}"})
    assert r.status_code == 403 and r.json()["code"] == "untrusted_aggregator"
    assert _spent(handle) == before


@pytest.mark.parametrize("case", ["secret", "galois", "wrong_params", "garbage", "oversized"])
def test_crafted_contexts_refused_4xx_and_nodes_keep_serving(env, case):
    import tenseal as ts

    from workbench.channels.secagg import he_params as params

    if case == "secret":
        raw = params.new_context().serialize(save_secret_key=True)
    elif case == "galois":
        ctx = params.new_context()
        ctx.generate_galois_keys()
        pub = ctx.copy()
        pub.make_context_public()
        raw = pub.serialize(save_galois_keys=True)
    elif case == "wrong_params":
        ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=4096, plain_modulus=1032193)
        raw = params.public_bytes(ctx)
    elif case == "garbage":
        raw = os.urandom(5000)
    else:
        raw = os.urandom(params.MAX_CONTEXT_BYTES + 10)
    body = {"dataset": "patients", "op": {"kind": "sum", "columns": ["visits"]}, "epsilon": 0.1,
            "parties": ["hospital-a", "hospital-b"], "context": base64.b64encode(raw).decode()}
    r = httpx.post(env["agg_url"] + "/v1/sessions", json=body, timeout=60)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["code"] in ("bad_context", "payload_too_large")
    assert httpx.get(env["agg_url"] + "/v1/health").status_code == 200


def test_crafted_ciphertexts_refused_at_the_aggregator(env):
    from workbench.channels.secagg import he_params as params

    ctx, created = _session(env, parties=["hospital-a", "hospital-b"])
    token = add_node(env["root"] / "aggregator", "hospital-a")  # rotate: act as node A towards the aggregator
    try:
        url = f"{env['agg_url']}/v1/sessions/{created['session_id']}/contributions"
        auth = {"Authorization": f"Bearer {token}"}
        import tenseal as ts

        wrong_len = params.b64encode(ts.bfv_vector(ctx, [1, 2, 3]).serialize())
        good = ts.bfv_vector(ctx, [5]).serialize()
        flipped = bytearray(good)
        for i in range(0, len(flipped), 97):
            flipped[i] ^= 0xFF
        for text in ["!!!notbase64", params.b64encode(os.urandom(2000)), wrong_len,
                     params.b64encode(bytes(flipped[:300]))]:
            r = httpx.post(url, json={"ciphertext": text}, headers=auth, timeout=60)
            assert 400 <= r.status_code < 500, (r.status_code, r.text)
        big = httpx.post(url, content=b"{" + b" " * 900_000 + b"}", headers={**auth, "content-type": "application/json"})
        assert big.status_code == 413
        assert httpx.get(env["agg_url"] + "/v1/health").status_code == 200
    finally:
        # give node A its registration back (the session fixture's token no longer works after the rotation)
        new = add_node(env["root"] / "aggregator", "hospital-a")
        node = env["nodes"][0]
        r = httpx.put(f"{node.url}/v1/he/aggregators/main", json={"url": env["agg_url"], "token": new},
                      headers={"Authorization": f"Bearer {node.owner_token}"})
        assert r.status_code == 200


# ---------------------------------------------------------------- SMPC: the same secure sums by secret sharing


def test_smpc_secure_sum_and_regression_match_pooled_truth(env):
    ds = env["fed"].dataset("patients")
    pooled = env["pooled"]
    before = [_spent(h) for h in env["handles"]]
    df = ds.secure_sum(["cost", "visits"], epsilon=0.2, count=True, protocol="smpc")
    after = [_spent(h) for h in env["handles"]]
    assert [a - b for a, b in zip(after, before)] == pytest.approx([0.2] * 3), "each ledger charged once"
    truth = {"sum(cost)": pooled["cost"].sum(), "sum(visits)": pooled["visits"].sum(), "count": pooled.height}
    for _, row in df.iterrows():
        assert near(row, truth[row["statistic"]]), row
    assert df.attrs["protocol"] == "smpc" and df.attrs["parties"] == ["hospital-a", "hospital-b", "hospital-c"]
    again = ds.secure_sum(["cost", "visits"], epsilon=0.2, count=True, protocol="smpc")
    assert all(again.attrs["replayed"].values()) and list(again["estimate"]) == list(df["estimate"])
    assert [_spent(h) for h in env["handles"]] == pytest.approx(after), "a replay is free"

    fit = ds.linear_regression(y="cost", x=["age", "bmi"], epsilon=0.5, protocol="smpc")
    y, X = _pooled_xy(env, "cost", ["age", "bmi"], {"cost": 25_000.0, "age": 50, "bmi": 35.0})
    design = np.column_stack([np.ones(len(y)), X])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    se = np.sqrt(np.diag(((y - design @ beta) ** 2).sum() / (len(y) - 3) * np.linalg.inv(design.T @ design)))
    for term, b, s in zip(fit.index, beta, se):
        tolerance = 5 * math.hypot(s, fit.loc[term, "dp_std_err"])  # sampling and DP noise
        assert abs(fit.loc[term, "coef"] - b) < tolerance, (term, fit.loc[term, "coef"], b, s)
    assert fit.attrs["protocol"] == "smpc"


def test_smpc_partials_are_uniform_and_relay_is_node_only(env):
    from workbench.channels.secagg import smpc_field as field

    ds = env["fed"].dataset("patients")
    out = ds.secure_sum("visits", epsilon=0.15, protocol="smpc")
    from workbench.channels.secagg.kernel import secure_aggregate
    from workbench.channels.secagg.wire import HEOp

    agg = secure_aggregate(ds, HEOp(kind="sum", columns=["visits"]), 0.15, protocol="smpc")  # replay: free
    partials = [field.decode(c.partial)[0] for c in agg.contributions]
    # The partials add up to the total in the field (mod P), and only there.
    assert sum(partials) % field.P == agg.totals[0] % field.P
    assert agg.totals[0] == out["estimate"].iloc[0]
    # Each partial is a uniform field element: none is anywhere near a hospital's visits (< 1e6).
    assert all(abs(p) > 1e9 for p in partials), partials
    # The analyst (no node token) cannot read keys, shares or inboxes, nor post to a session.
    created = httpx.post(env["agg_url"] + "/v1/sessions", json={
        "dataset": "patients", "op": {"kind": "sum", "columns": ["visits"]}, "epsilon": 0.1,
        "parties": ["hospital-a", "hospital-b"], "protocol": "smpc"}, timeout=30).json()
    sid = created["session_id"]
    for method, path in [("GET", "keys"), ("GET", "inbox"), ("POST", "key"), ("POST", "shares")]:
        r = httpx.request(method, f"{env['agg_url']}/v1/sessions/{sid}/smpc/{path}", json={},
                          headers={"Authorization": "Bearer analyst-guess"})
        assert r.status_code in (401, 422), (path, r.status_code)
    # No HE result for an SMPC session, and an SMPC session refuses a context.
    r = httpx.get(f"{env['agg_url']}/v1/sessions/{sid}/result", headers={"X-Result-Token": created["result_token"]})
    assert r.status_code == 422
    bad = httpx.post(env["agg_url"] + "/v1/sessions", json={
        "dataset": "patients", "op": {"kind": "sum", "columns": ["visits"]}, "epsilon": 0.1,
        "parties": ["hospital-a", "hospital-b"], "protocol": "smpc", "context": "AAAA"}, timeout=30)
    assert bad.status_code == 422


def test_smpc_abort_releases_a_waiting_node(env):
    import threading

    node = env["nodes"][0]
    created = httpx.post(env["agg_url"] + "/v1/sessions", json={
        "dataset": "patients", "op": {"kind": "sum", "columns": ["age"]}, "epsilon": 0.05,
        "parties": ["hospital-a", "hospital-b"], "protocol": "smpc"}, timeout=30).json()
    answer = {}

    def ask():
        answer["r"] = httpx.post(f"{node.url}/v1/datasets/patients/smpc/contribute",
                                 json={"aggregator_url": env["agg_url"], "session_id": created["session_id"]},
                                 headers={"Authorization": f"Bearer {node.analyst_token}"}, timeout=90)

    t = threading.Thread(target=ask)
    t.start()
    keys_url = f"{env['agg_url']}/v1/sessions/{created['session_id']}/smpc/keys"
    as_b = {"Authorization": f"Bearer {env['agg_tokens']['hospital-b']}"}
    deadline = time.monotonic() + 60
    while "hospital-a" not in httpx.get(keys_url, headers=as_b, timeout=30).json()["keys"]:
        assert time.monotonic() < deadline, "node A never posted its key"  # then it waits for hospital-b's
        time.sleep(0.1)
    r = httpx.post(f"{env['agg_url']}/v1/sessions/{created['session_id']}/abort",
                   headers={"X-Result-Token": created["result_token"]})
    assert r.status_code == 200
    t.join(60)
    assert not t.is_alive(), "the waiting node was not released by the abort"  # (it would wait 90 s)
    assert answer["r"].status_code == 422 and answer["r"].json()["code"] == "session_closed"
    assert "partial" not in answer["r"].text


# ---------------------------------------------------------------- encrypted model evaluation


def _pooled_xy(env, y, x, fill):
    pooled = env["pooled"].with_columns([pl.col(c).fill_null(v) for c, v in fill.items()])
    return pooled[y].cast(pl.Float64).to_numpy(), np.column_stack([pooled[c].cast(pl.Float64).to_numpy() for c in x])


def test_evaluate_sse_matches_plaintext_within_dp_error(env):
    ds = env["fed"].dataset("patients")
    y, X = _pooled_xy(env, "cost", ["age", "bmi"], {"cost": 25_000.0, "age": 50, "bmi": 35.0})
    design = np.column_stack([np.ones(len(y)), X])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    truth = float(((y - design @ beta) ** 2).sum())
    before = [_spent(h) for h in env["handles"]]
    out = ds.evaluate(beta[1:], beta[0], y="cost", x=["age", "bmi"], metric="sse", epsilon=1.0, alpha=0.01)
    assert [_spent(h) - b for h, b in zip(env["handles"], before)] == pytest.approx([1.0] * 3)
    res = out.set_index("statistic")
    assert near(res.loc["sse total"], truth), (res, truth)
    assert near(res.loc["count"], len(y)), res
    assert near(res.loc["sse mean"], truth / len(y))
    # A second model on the same variables, metric and epsilon: post-processing of the same noisy moments.
    worse = ds.evaluate({"age": 0.0, "bmi": 0.0}, float(y.mean()), y="cost", metric="sse", epsilon=1.0)
    assert [_spent(h) - b for h, b in zip(env["handles"], before)] == pytest.approx([1.0] * 3), "free"
    assert all(worse.attrs["replayed"].values())
    assert worse.set_index("statistic").loc["sse total", "estimate"] > res.loc["sse total", "estimate"]


def test_evaluate_logloss_matches_plaintext_within_dp_and_approximation_error(env):
    ds = env["fed"].dataset("patients")
    y, X = _pooled_xy(env, "readmitted", ["age", "visits"], {"age": 50, "visits": 25})
    design = np.column_stack([np.ones(len(y)), X])
    w = np.zeros(3)
    for _ in range(25):  # Newton steps for the pooled logistic fit (the analyst's model)
        p = 1 / (1 + np.exp(-design @ w))
        w += np.linalg.solve(design.T @ (design * (p * (1 - p))[:, None]), design.T @ (y - p))
    z = design @ w
    truth = float((np.logaddexp(0, z) - y * z).sum())
    out = ds.evaluate(w[1:], w[0], y="readmitted", x=["age", "visits"], metric="logloss", epsilon=1.0, alpha=0.01)
    res = out.set_index("statistic")
    slack = out.attrs["approximation_bound_total"]
    assert res.loc["logloss total", "lower"] - slack <= truth <= res.loc["logloss total", "upper"] + slack
    mean, slack_mean = res.loc["logloss mean"], slack / len(y)
    assert near_interval(mean["lower"] - slack_mean, mean["upper"] + slack_mean, truth / len(y)), (mean, slack_mean)
    assert out.attrs["degree"] == 6 and out.attrs["moments"] == 31


def test_evaluate_yields_aggregates_only_and_bad_weights_are_refused(env):
    import tenseal as ts
    from tenseal import sealapi

    from workbench.channels.secagg import he_params as params
    from workbench.channels.secagg.wire import eval_monomials, HEOp

    op = HEOp(kind="evaluate", y="cost", x=["age"], metric="sse", degree=2)
    k = len(eval_monomials(op))
    ctx = params.new_eval_context()
    public = params.b64encode(params.public_bytes(ctx))
    # Crafted weights: every moment's ciphertext packs 4096 distinct values (claiming 2 slots), hoping that
    # something per row or per moment survives in the other slots.
    full = ts.ckks_vector(ctx, [float(i % 97) for i in range(4096)]).serialize()
    crafted = [params.b64encode(b"\x0a\x01\x02" + full[4:])] * k
    body = {"dataset": "patients", "op": op.model_dump(mode="json"), "epsilon": 0.3,
            "parties": ["hospital-a", "hospital-b", "hospital-c"], "context": public, "weights": crafted}
    created = httpx.post(env["agg_url"] + "/v1/sessions", json=body, timeout=120)
    assert created.status_code == 200, created.text
    sid = created.json()["session_id"]
    for node in env["nodes"]:
        r = httpx.post(f"{node.url}/v1/datasets/patients/he/contribute",
                       json={"aggregator_url": env["agg_url"], "session_id": sid},
                       headers={"Authorization": f"Bearer {node.analyst_token}"}, timeout=120)
        assert r.status_code == 200, r.text
        assert "values" not in r.json() and len(r.content) < 1000
    result = httpx.get(f"{env['agg_url']}/v1/sessions/{sid}/result",
                       headers={"X-Result-Token": created.json()["result_token"]}, timeout=60).json()
    cipher = ts.ckks_vector_from(ctx, base64.b64decode(result["ciphertext"])).ciphertext()
    cipher = cipher[0] if isinstance(cipher, list) else cipher
    plain = sealapi.Plaintext()
    sealapi.Decryptor(ctx.seal_context().data, ctx.secret_key().data).decrypt(cipher, plain)
    slots = sealapi.CKKSEncoder(ctx.seal_context().data).decode_double(plain)
    assert max(abs(v) for v in slots[2:]) < 1e-3, "only two numbers survive the node's product"

    # Weight ciphertexts with bad sizes or parameters: refused with a 4xx before any node is involved.
    good = params.b64encode(ts.ckks_vector(ctx, [1.0, 0.0]).serialize())
    wrong_len = params.b64encode(ts.ckks_vector(ctx, [1.0, 0.0, 0.0]).serialize())
    lower = params.b64encode((ts.ckks_vector(ctx, [1.0, 0.0]) * [1.0, 1.0]).serialize())
    bfv = params.b64encode(ts.bfv_vector(params.new_context(), [1, 0]).serialize())
    for weights in ([good] * (k - 1), [good] * (k + 1), [wrong_len] + [good] * (k - 1),
                    [lower] + [good] * (k - 1), [bfv] + [good] * (k - 1),
                    ["A" * 500_000] + [good] * (k - 1), ["!!"] + [good] * (k - 1)):
        r = httpx.post(env["agg_url"] + "/v1/sessions", json={**body, "weights": weights}, timeout=120)
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])
    bfv_context = httpx.post(env["agg_url"] + "/v1/sessions", timeout=60, json={
        **body, "weights": [good] * k, "context": params.b64encode(params.public_bytes(params.new_context()))})
    assert bfv_context.status_code == 422 and bfv_context.json()["code"] == "bad_context"
    assert httpx.get(env["agg_url"] + "/v1/health").status_code == 200


# ---------------------------------------------------------------- a node is down (keep last: it stops one)


def test_node_down_clear_error_or_partial(env):
    ds = env["fed"].dataset("patients")
    env["nodes"][2].stop()
    before = [_spent(h) for h in env["handles"][:2]]
    with pytest.raises(wb.ConnectionFailed) as err:
        ds.mean("visits").release(epsilon=0.1)
    assert env["nodes"][2].url in str(err.value)
    assert [_spent(h) for h in env["handles"][:2]] == before, "nothing charged when a node is down"
    with pytest.raises(wb.ConnectionFailed) as err:
        ds.secure_sum("visits", epsilon=0.1)
    assert env["nodes"][2].url in str(err.value)
    with pytest.raises(wb.ConnectionFailed):
        ds.secure_sum("visits", epsilon=0.1, protocol="smpc")
    assert [_spent(h) for h in env["handles"][:2]] == before
    partial = ds.mean("visits").release(epsilon=0.1, allow_partial=True)
    assert partial.attrs["missing_nodes"] == [env["nodes"][2].url]
    assert partial.attrs["nodes"] == [n.url for n in env["nodes"][:2]]
