"""The server extension's endpoints through pytest-jupyter's ``jp_fetch``,
against real nodes (``workbench node serve`` over loopback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

ROOT = Path(__file__).resolve().parents[2]


async def get(jp_fetch, *path, **params):
    """(status, decoded JSON, raw text) of a GET under ``workbench/``."""
    try:
        response = await jp_fetch("workbench", *path, params=params, request_timeout=60)
    except HTTPClientError as error:
        response = error.response
        assert response is not None, error
    text = response.body.decode()
    assert response.headers["Content-Type"].startswith("application/json")
    return response.code, json.loads(text), text


def assert_error(status, body, want_status, want_code):
    assert status == want_status, body
    assert set(body) == {"code", "message"}, body
    assert body["code"] == want_code, body
    assert isinstance(body["message"], str) and body["message"].strip()


async def test_nodes_probes_every_configured_node(jp_fetch, three_nodes):
    status, body, text = await get(jp_fetch, "nodes")
    assert status == 200
    nodes = {n["name"]: n for n in body["nodes"]}
    assert list(nodes) == ["hospital", "offline", "badtoken"]

    up = nodes["hospital"]
    assert up["status"] == "up" and up["error"] is None
    assert up["url"] == three_nodes.url
    assert up["user"] == "analyst" and up["role"] == "analyst"
    assert up["version"] and up["protocol"] == "2"

    assert nodes["offline"]["status"] == "down"
    assert nodes["offline"]["error"]["code"] == "node_unreachable"
    assert nodes["badtoken"]["status"] == "error"  # reachable, but refused the token
    assert nodes["badtoken"]["error"]["code"] == "not_authenticated"

    # Tokens stay in the Jupyter server.
    for secret in (three_nodes.analyst_token, "wb-this-token-is-wrong", "not-a-real-token"):
        assert secret not in text


async def test_catalog_and_schema(jp_fetch, three_nodes):
    status, body, _ = await get(jp_fetch, "catalog", node="hospital")
    assert status == 200 and body["node"] == "hospital"
    datasets = {d["name"]: d for d in body["datasets"]}
    assert {"patients", "iris"} <= set(datasets)
    assert datasets["patients"]["tier"] == "private"
    assert datasets["iris"]["tier"] == "open"
    assert datasets["iris"]["licence"] == "CC-BY-4.0"
    assert datasets["patients"]["columns"] > 0

    status, schema, _ = await get(jp_fetch, "datasets", "patients", node="hospital")
    assert status == 200
    assert schema["name"] == "patients" and schema["tier"] == "private"
    assert schema["privacy_unit"]["id_column"] == "patient_id"
    columns = {c["name"]: c for c in schema["columns"]}
    assert len(columns) == datasets["patients"]["columns"]
    assert all({"name", "type", "bounds", "categories", "description"} <= set(c) for c in columns.values())
    assert any(c["bounds"] for c in columns.values())
    assert any(c["categories"] for c in columns.values())

    status, body, _ = await get(jp_fetch, "datasets", "no_such_dataset", node="hospital")
    assert status == 404 and body["code"] in ("unknown_dataset", "not_found")
    assert set(body) == {"code", "message"}


async def test_grants_and_history_follow_a_release(jp_fetch, three_nodes):
    import workbench as wb

    status, body, _ = await get(jp_fetch, "grants", node="hospital")
    assert status == 200 and body["node"] == "hospital"
    [before] = [g for g in body["grants"] if g["dataset"] == "patients"]
    assert {"grant_id", "purpose", "epsilon", "delta", "epsilon_spent", "epsilon_left", "expires_at"} <= set(before)
    status, body, _ = await get(jp_fetch, "history", node="hospital")
    n_before = len(body["releases"])

    # A release from "a notebook": the real client library against the real node.
    node = wb.connect(three_nodes.url, token=three_nodes.analyst_token)
    try:
        node.dataset("patients").count().release(epsilon=0.25)
    finally:
        node.close()

    status, body, _ = await get(jp_fetch, "grants", node="hospital")
    [after] = [g for g in body["grants"] if g["grant_id"] == before["grant_id"]]
    assert after["epsilon_spent"] == pytest.approx(before["epsilon_spent"] + 0.25)
    assert after["epsilon_left"] == pytest.approx(before["epsilon_left"] - 0.25)

    status, body, _ = await get(jp_fetch, "history", node="hospital")
    assert status == 200 and len(body["releases"]) == n_before + 1
    newest = max(body["releases"], key=lambda r: r["time"])
    assert newest["dataset"] == "patients" and newest["kind"] == "count"
    assert newest["epsilon"] == pytest.approx(0.25)
    assert newest["time"].startswith("20")  # ISO 8601


async def test_requests_answer_or_say_not_supported(jp_fetch, three_nodes):
    import workbench as wb

    status, body, _ = await get(jp_fetch, "requests", node="hospital")
    if status == 501:
        assert_error(status, body, 501, "not_supported")
        return
    assert status == 200 and isinstance(body["requests"], list)
    n_before = len(body["requests"])
    node = wb.connect(three_nodes.url, token=three_nodes.analyst_token)
    try:
        node.dataset("patients").request_access("a follow-up study", epsilon=2.0)
    finally:
        node.close()
    status, body, _ = await get(jp_fetch, "requests", node="hospital")
    assert len(body["requests"]) == n_before + 1
    newest = max(body["requests"], key=lambda r: r["created_at"])
    assert newest["dataset"] == "patients" and newest["status"] == "pending"
    assert newest["epsilon"] == pytest.approx(2.0) and newest["purpose"] == "a follow-up study"


async def test_node_errors_keep_their_code(jp_fetch, three_nodes):
    for endpoint in ("catalog", "grants", "history", "requests"):
        status, body, _ = await get(jp_fetch, endpoint, node="offline")
        assert_error(status, body, 503, "node_unreachable")
    for endpoint in ("catalog", "grants", "history"):
        status, body, text = await get(jp_fetch, endpoint, node="badtoken")
        assert_error(status, body, 401, "not_authenticated")
        assert "wb-this-token-is-wrong" not in text
    # A node without the governance routes answers 404 before it checks the
    # token, which the client library reports as not_supported.
    status, body, _ = await get(jp_fetch, "requests", node="badtoken")
    assert (status, body["code"]) in ((401, "not_authenticated"), (501, "not_supported"))


async def test_extension_errors(jp_fetch, three_nodes):
    status, body, _ = await get(jp_fetch, "catalog", node="nowhere")
    assert_error(status, body, 404, "unknown_node")
    status, body, _ = await get(jp_fetch, "no", "such", "endpoint")
    assert_error(status, body, 404, "not_found")
    # Without ?node= the first configured node answers.
    status, body, _ = await get(jp_fetch, "catalog")
    assert status == 200 and body["node"] == "hospital"


async def test_no_configuration(jp_fetch, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CONFIG", str(tmp_path / "missing.toml"))
    monkeypatch.delenv("WORKBENCH_URL", raising=False)
    status, body, _ = await get(jp_fetch, "nodes")
    assert status == 200 and body == {"nodes": []}
    status, body, _ = await get(jp_fetch, "catalog")
    assert_error(status, body, 404, "no_config")


async def test_broken_configuration(jp_fetch, tmp_path, monkeypatch):
    path = tmp_path / "broken.toml"
    path.write_text("[nodes.x\nurl = ")
    monkeypatch.setenv("WORKBENCH_CONFIG", str(path))
    status, body, _ = await get(jp_fetch, "nodes")
    assert_error(status, body, 500, "config_error")


async def test_environment_connection(jp_fetch, shared_node, tmp_path, monkeypatch):
    """WORKBENCH_URL / WORKBENCH_TOKEN work as in the kernel library."""
    monkeypatch.setenv("WORKBENCH_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("WORKBENCH_URL", shared_node.url)
    monkeypatch.setenv("WORKBENCH_TOKEN", shared_node.analyst_token)
    status, body, text = await get(jp_fetch, "nodes")
    assert status == 200
    [entry] = body["nodes"]
    assert entry["name"] == "default" and entry["status"] == "up"
    assert shared_node.analyst_token not in text


async def test_jupyter_authentication_is_required(jp_fetch, three_nodes):
    for path in (("nodes",), ("catalog",), ("datasets", "patients"), ("grants",), ("history",), ("requests",)):
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("workbench", *path, headers={"Authorization": "token wrong"})
        assert info.value.code == 403
        body = json.loads(info.value.response.body)
        assert set(body) == {"code", "message"} and body["code"] == "forbidden"


async def test_node_going_down_reads_as_down(jp_fetch, running_node, client_config):
    client_config({"hospital": {"url": running_node.url, "token": running_node.analyst_token}})
    status, body, _ = await get(jp_fetch, "nodes")
    assert body["nodes"][0]["status"] == "up"
    running_node.stop()
    status, body, _ = await get(jp_fetch, "nodes")
    assert status == 200
    [entry] = body["nodes"]
    assert entry["status"] == "down" and entry["error"]["code"] == "node_unreachable"
    status, body, _ = await get(jp_fetch, "grants", node="hospital")
    assert_error(status, body, 503, "node_unreachable")


def test_every_endpoint_is_documented():
    from workbench.jupyter.handlers import ENDPOINTS

    doc = (ROOT / "docs" / "jupyterlab.md").read_text()
    for endpoint in ENDPOINTS:
        assert f"workbench/{endpoint}" in doc, endpoint
    for code in ("unknown_node", "no_config", "config_error", "not_found", "forbidden", "internal_error"):
        assert f"`{code}`" in doc, code
