"""Hostile input, generated: every JSON spec the node accepts, and its whole OpenAPI document.

* Property tests (hypothesis) of every request-body model named in ``/v1/openapi.json``
  (DP, HE, FL, governance, admin: a new channel's spec is picked up automatically):
  arbitrary JSON either validates or raises pydantic's ``ValidationError``; a
  valid spec round-trips canonically and never carries NaN/inf.
* The DP preview endpoint under near-valid specs: never a 5xx, always a JSON
  error with a code.
* schemathesis against the node's OpenAPI document, in-process: no 5xx, no
  hang, on every operation.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import sys
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

MODEL_MODULES = ("workbench.protocol", "workbench.channels.secagg.wire", "workbench.channels.fl.wire", "workbench.channels.synth.wire",
                 "workbench.node.routes", "workbench.node.deps", "workbench.node.governance_routes", "workbench.node.oidc")


def _request_models(app) -> dict[str, type[BaseModel]]:
    """Every requestBody schema of the app's OpenAPI document, resolved to its pydantic class."""
    names = set()
    for ops in app.openapi()["paths"].values():
        for op in ops.values():
            ref = ((op.get("requestBody") or {}).get("content", {}).get("application/json", {})
                   .get("schema", {}).get("$ref"))
            if ref:
                names.add(ref.rsplit("/", 1)[-1])
    classes: dict[str, type[BaseModel]] = {}
    for module_name in MODEL_MODULES:
        try:
            importlib.import_module(module_name)
        except ImportError:
            pass
    # Every workbench module the app loaded (a new channel's spec module is found without editing this list).
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("workbench") or module is None:
            continue
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseModel) and name in names:
                classes[name] = obj
    missing = names - set(classes)
    assert not missing, f"request models not found (add their module to MODEL_MODULES): {missing}"
    return classes


@pytest.fixture(scope="module")
def node_app(tmp_path_factory):
    from tests.conftest import make_config
    from workbench.demo.nodes import ensure_accounts
    from workbench.server import create_app
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    service = NodeService(NodeConfig.load(make_config(tmp_path_factory.mktemp("hostile"))), start_workers=False)
    accounts = ensure_accounts(service)
    app = create_app(service)
    app.state.tokens = accounts
    yield app
    service.close()


# ---------------------------------------------------------------- JSON values, hostile ones included

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["", "../../etc/passwd", "age; DROP TABLE grants;--", "__import__('os')",
                              "gASVAAAAAAAAAAB9lC4=", "\x00", "patient_id", "count", "age", "sex", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
                              "a" * 5000])
           | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=25)


def objects_for(model: type[BaseModel]) -> st.SearchStrategy[dict]:
    """Dicts keyed mostly by the model's own field names (so validation goes deep), values hostile."""
    keys = st.sampled_from(sorted(model.model_fields)) | st.text(max_size=10)
    return st.dictionaries(keys, json_values, max_size=len(model.model_fields) + 2)


def _check_model(model: type[BaseModel], data) -> None:
    try:
        parsed = model.model_validate(data)
    except ValidationError:
        return
    dumped = parsed.model_dump(mode="json")
    text = json.dumps(dumped, allow_nan=False)  # a valid spec never carries NaN or infinity
    assert model.model_validate(json.loads(text)) == parsed, "a valid spec must round-trip"


def test_every_request_model_is_covered(node_app):
    models = _request_models(node_app)
    assert {"DPRequest", "GrantRequest"} <= set(models)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_specs_validate_or_refuse_cleanly(node_app, data):
    models = _request_models(node_app)
    name = data.draw(st.sampled_from(sorted(models)))
    model = models[name]
    value = data.draw(objects_for(model) | json_values)
    _check_model(model, value)


# ---------------------------------------------------------------- near-valid DP specs over HTTP

COLUMNS = ["age", "sex", "bmi", "smoker", "diagnosis", "visits", "cost", "readmitted", "region", "patient_id",
           "nope", "AGE"]
dp_queries = st.fixed_dictionaries(
    {"kind": st.sampled_from(["count", "sum", "mean", "quantile", "histogram"])},
    optional={"column": st.sampled_from(COLUMNS),
              "by": st.lists(st.sampled_from(COLUMNS), max_size=3),
              "quantile": st.floats(min_value=-1, max_value=2),
              "bins": st.integers(-3, 2000) | st.lists(st.floats(-1e6, 1e6), max_size=6)})
dp_requests = st.fixed_dictionaries(
    {"query": dp_queries, "epsilon": st.floats(1e-6, 20) | st.sampled_from([0, -1, 1e-300, 100, 101])},
    optional={"delta": st.sampled_from([0.0, 1e-9, 1e-6, 0.009, 0.5]), "grant_id": st.integers(-1, 5)})


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=dp_requests)
def test_dp_preview_never_5xx(node_app, body):
    from starlette.testclient import TestClient

    client = TestClient(node_app, raise_server_exceptions=False)
    headers = {"Authorization": f"Bearer {node_app.state.tokens.analyst_token}"}
    t0 = time.monotonic()
    r = client.post("/v1/datasets/patients/dp/preview", json=body, headers=headers)
    assert time.monotonic() - t0 < 60
    assert r.status_code < 500, (body, r.status_code, r.text)
    if r.status_code >= 400:
        err = r.json()
        assert set(err) >= {"code", "message"} and err["message"], err
    else:
        accuracy = [a["accuracy"] for a in r.json()["accuracy"]]
        assert all(a is None or (math.isfinite(a) and a >= 0) for a in accuracy)


# ---------------------------------------------------------------- schemathesis over the OpenAPI document


@pytest.mark.slow
def test_openapi_operations_never_5xx(node_app):
    """Every operation, schema-driven bodies and parameters, as the owner (who may call everything)."""
    schema = schemathesis.openapi.from_asgi("/v1/openapi.json", node_app)
    headers = {"Authorization": f"Bearer {node_app.state.tokens.owner_token}"}
    failures, calls = [], {"n": 0}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 30

    for operation in operations:
        @settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=operation.as_strategy())
        def one(case):
            calls["n"] += 1
            t0 = time.monotonic()
            response = case.call(headers=headers)
            elapsed = time.monotonic() - t0
            if elapsed > 60:
                failures.append(f"{case.method} {case.formatted_path} took {elapsed:.0f} s")
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.body!r:.300} -> "
                                f"{response.status_code} {response.text[:300]}")
            elif response.status_code >= 400 and "json" in str(response.headers.get("content-type", "")):
                body = response.json()
                if not ("code" in body and "message" in body):
                    failures.append(f"{case.method} {case.formatted_path}: error without code: {body}")

        one()
    assert calls["n"] >= len(operations)
    assert not failures, "\n".join(failures[:20])
