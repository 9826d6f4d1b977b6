"""End to end over a real uvicorn process on loopback, as an analyst would use it."""

from __future__ import annotations

import httpx
import pytest

import workbench as wb


@pytest.fixture
def node(running_node):
    handle = wb.connect(running_node.url, token=running_node.analyst_token)
    yield handle
    handle.close()


def test_catalogue_preview_release_budget_replay(node):
    catalog = node.catalog()
    assert {"patients", "iris"} <= set(catalog["name"])
    assert {"name", "tier", "description", "licence"} <= set(catalog.columns)
    assert catalog.set_index("name").loc["iris", "licence"] == "CC-BY-4.0"

    ds = node.dataset("patients")
    assert "age" in ds.columns and ds.schema.column("age").bounds == (0, 100)
    before = ds.budget()
    assert before["epsilon"] == pytest.approx(10.0)

    q = ds.count()
    preview = q.preview(epsilon=0.5)
    assert preview.accuracy["accuracy"].iloc[0] > 0
    assert preview.budget_left_after["epsilon"] == pytest.approx(9.5)
    assert ds.budget()["epsilon"] == pytest.approx(10.0), "a preview must spend nothing"

    df = q.release(epsilon=0.5)
    assert list(df.columns) == ["estimate", "lower", "upper"]
    assert abs(df["estimate"].iloc[0] - 20_000) < 200  # the true count is 20,000
    assert df["lower"].iloc[0] < df["estimate"].iloc[0] < df["upper"].iloc[0]
    assert df.attrs["epsilon_charged"] == pytest.approx(0.5) and not df.attrs["replayed"]
    assert ds.budget()["epsilon"] == pytest.approx(9.5)

    again = q.release(epsilon=0.5)
    assert again.attrs["replayed"] and again.attrs["epsilon_charged"] == 0
    assert again["estimate"].iloc[0] == df["estimate"].iloc[0]
    assert ds.budget()["epsilon"] == pytest.approx(9.5), "a replay must be free"
    assert q.preview(epsilon=0.5).would_replay

    history = node.history()
    assert list(history["replayed"][:2]) == [True, False]


def test_every_query_kind(node):
    ds = node.dataset("patients")
    by_sex = ds.group_by("sex").mean("cost").release(epsilon=0.4)
    assert sorted(by_sex["sex"]) == ["F", "M"]
    assert ((by_sex["lower"] <= by_sex["estimate"]) & (by_sex["estimate"] <= by_sex["upper"])).all()
    hist = ds.histogram("age", bins=5).release(epsilon=0.4)
    assert len(hist) == 5 and hist["estimate"].sum() == pytest.approx(20_000, rel=0.02)
    cats = ds.histogram("diagnosis").release(epsilon=0.4)
    assert set(cats["diagnosis"]) == {"healthy", "diabetes", "hypertension", "heart_disease", "asthma"}
    median = ds.median("age").release(epsilon=0.4)
    assert 40 <= median["estimate"].iloc[0] <= 65
    total = ds.sum("visits").release(epsilon=0.4)
    assert total["estimate"].iloc[0] > 0
    per_region = ds.group_by("region", "sex").count().release(epsilon=0.4)
    assert len(per_region) == 8
    assert node.dataset("patients").budget()["epsilon"] == pytest.approx(10 - 6 * 0.4)


def test_private_keys_need_delta(node):
    ds = node.dataset("patients")
    with pytest.raises(wb.InvalidQuery) as err:
        ds.group_by("patient_id").count().release(epsilon=0.5)
    assert err.value.code == "needs_delta"
    assert ds.budget()["epsilon"] == pytest.approx(10.0), "a refused query costs nothing"
    # With a delta, unknown keys are thresholded: every patient is alone in their group, so nothing survives.
    out = ds.group_by("patient_id").count().release(epsilon=0.5, delta=1e-6)
    assert len(out) == 0


def test_rows_refused_on_private_and_given_on_open(node, running_node):
    with pytest.raises(wb.PrivacyError):
        node.dataset("patients").to_pandas()
    # Going around the client gets the same answer from the node.
    r = httpx.get(running_node.url + "/v1/datasets/patients/rows",
                  headers={"Authorization": f"Bearer {running_node.analyst_token}"})
    assert r.status_code == 403 and r.json()["code"] == "privacy_violation"
    iris = node.dataset("iris").to_pandas()
    assert len(iris) == 150 and iris.attrs["licence"] == "CC-BY-4.0"


def test_protocol_version_and_openapi(running_node):
    r = httpx.get(running_node.url + "/v1/info", headers={"X-Workbench-Protocol": "99"})
    assert r.status_code == 400 and r.json()["code"] == "protocol_unsupported"
    assert "protocol" in r.json()["message"]
    spec = httpx.get(running_node.url + "/v1/openapi.json").json()
    assert "/v1/datasets/{name}/dp/release" in spec["paths"]


def test_token_from_config_file(running_node, tmp_path, monkeypatch):
    from workbench.config import save_connection

    monkeypatch.setenv("WORKBENCH_CONFIG", str(tmp_path / "config.toml"))
    save_connection("a", running_node.url, running_node.analyst_token)
    assert wb.connect(running_node.url).info()["user"] == "analyst"


def test_unreachable_node_is_a_clear_error():
    from tests.conftest import free_port

    with pytest.raises(wb.ConnectionFailed):
        wb.connect(f"http://127.0.0.1:{free_port()}", token="x")
