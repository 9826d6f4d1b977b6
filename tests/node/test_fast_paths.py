"""The node's fast paths must change nothing a user can observe but speed.

* a replay answered from memory (``workbench.channels.dp.fast_replay``) is byte-for-byte the
  answer the ordinary route gives from the database, is audited, and is refused
  the moment the token is revoked;
* tokens remembered by the authority stop working at once when a user changes;
* group-committed audit records form a valid chain;
* the columnar copy (categories as codes) gives the same public keys and labels,
  and never lets a value outside the public categories appear;
* histogram bins computed arithmetically follow the documented left-closed rule.
"""

from __future__ import annotations

import polars as pl
import pytest

from workbench.node import admin, audit

COUNT_BY_SEX = {"query": {"kind": "count", "by": ["sex"]}, "epsilon": 0.5}


def _release(client, body, headers):
    r = client.post("/v1/datasets/patients/dp/release", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_memory_replay_equals_database_replay(app_client, service):
    first = _release(app_client, COUNT_BY_SEX, app_client.analyst)
    fast = _release(app_client, COUNT_BY_SEX, app_client.analyst)
    assert fast["replayed"] and fast["epsilon_charged"] == 0 and not first["replayed"]
    service.gate.answers = type(service.gate.answers)()  # forget: the next replay comes from the database
    slow = _release(app_client, COUNT_BY_SEX, app_client.analyst)
    assert slow == fast
    assert fast["table"] == first["table"] and fast["release_id"] == first["release_id"]
    assert fast["budget_left"] == first["budget_left"]
    replays = [r for r in audit.records(service.store, actor="analyst", actions=("replay",))]
    assert len(replays) == 2 and all(r["details"]["release_id"] == first["release_id"] for r in replays)
    assert audit.verify(service.store).ok


def test_memory_replay_refused_after_revocation(app_client, service):
    _release(app_client, COUNT_BY_SEX, app_client.analyst)
    _release(app_client, COUNT_BY_SEX, app_client.analyst)  # now remembered: token and answer
    admin.issue_token(service.store, service.authority, "analyst", revoke_old=True)
    r = app_client.post("/v1/datasets/patients/dp/release", json=COUNT_BY_SEX, headers=app_client.analyst)
    assert r.status_code == 401 and r.json()["code"] == "not_authenticated"


def test_memory_replay_keeps_request_id_rules(app_client, service):
    body = dict(COUNT_BY_SEX, request_id="study-0001")
    first = _release(app_client, body, app_client.analyst)
    assert _release(app_client, body, app_client.analyst)["replayed"]
    other = {"query": {"kind": "count"}, "epsilon": 0.5, "request_id": "study-0001"}
    r = app_client.post("/v1/datasets/patients/dp/release", json=other, headers=app_client.analyst)
    assert r.status_code == 422 and r.json()["code"] == "request_id_conflict"
    # Another user's request id is theirs alone: no replay of the analyst's answer for the owner.
    token = admin.add_user(service.store, service.authority, "bob", "analyst")
    admin.add_grant(service.store, "bob", "patients", "second study", 5.0)
    mine = _release(app_client, body, {"Authorization": f"Bearer {token}"})
    assert not mine["replayed"] and mine["epsilon_charged"] == 0.5 and mine["release_id"] != first["release_id"]


def test_bad_requests_still_get_the_routes_errors(app_client):
    _release(app_client, COUNT_BY_SEX, app_client.analyst)
    bad = app_client.post("/v1/datasets/patients/dp/release", content=b"{not json",
                          headers=dict(app_client.analyst, **{"content-type": "application/json"}))
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_body"
    nobody = app_client.post("/v1/datasets/patients/dp/release", json=COUNT_BY_SEX)
    assert nobody.status_code == 401
    unknown = app_client.post("/v1/datasets/nope/dp/release", json=COUNT_BY_SEX, headers=app_client.analyst)
    assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_dataset"


def test_group_committed_replays_keep_the_chain(service):
    from workbench.node.group_commit import GroupCommitter

    committer = GroupCommitter(service.store)
    try:
        futures = [committer.submit(lambda s, i=i: audit.append(s, "tester", "replay", "patients", n=i) or i)
                   for i in range(200)]
        assert [f.result(30) for f in futures] == list(range(200))
        bad = committer.submit(lambda s: 1 / 0)
        good = committer.submit(lambda s: audit.append(s, "tester", "replay", "patients", n=-1) or "ok")
        with pytest.raises(ZeroDivisionError):
            bad.result(30)
        assert good.result(30) == "ok"  # one bad write does not fail its batch
    finally:
        committer.close()
    check = audit.verify(service.store)
    assert check.ok and check.records >= 201
    assert len(list(audit.records(service.store, actor="tester"))) == 201


def test_columnar_copy_uses_public_categories_only(tmp_path):
    from workbench.channels.dp.columnar import columnar_frame, schema
    from workbench.protocol import DatasetInfo

    path = tmp_path / "d.parquet"
    pl.DataFrame({"colour": ["red", "blue", "red", "mauve-secret", None], "x": [1, 2, 3, 4, 5]}).write_parquet(path)
    info = DatasetInfo.model_validate({
        "name": "d", "version": "sha256:abc", "tier": "private", "max_rows": 10,
        "privacy_unit": {"max_contributions": 1},
        "columns": [{"name": "colour", "type": "category", "categories": ["blue", "red"]},
                    {"name": "x", "type": "int", "bounds": [0, 10]}]})
    frame = columnar_frame(tmp_path / "cache", str(path), "parquet", info, ["colour", "x"]).collect()
    assert frame.schema == pl.Schema(schema(info))
    assert frame["colour"].to_list() == [1, 0, 1, None, None]  # the unlisted value is simply absent
    assert not any(b"mauve-secret" in p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())


def test_group_by_on_codes_releases_public_labels(app_client, service):
    body = {"query": {"kind": "count", "by": ["region", "sex"]}, "epsilon": 1.0}
    table = _release(app_client, body, app_client.analyst)["table"]
    info = service.catalog.get("patients").info
    regions, sexes = info.column("region").categories, info.column("sex").categories
    keys = [tuple(row[:2]) for row in table["data"]]
    assert keys == sorted((r, s) for r in regions for s in sexes)
    assert list((service.config.node.state_dir / "columnar").glob("patients-*"))


@pytest.mark.parametrize("edges", [[0.0, 10.0, 20.0, 30.0], [0.0, 1.5, 2.0, 10.0]])
def test_histogram_bins_are_left_closed(edges):
    from workbench.channels.dp.worker import _bin_index

    values = [0.0, 1.4999, 1.5, 2.0, 9.99, 10.0, 19.999, 20.0, 29.0, 30.0]
    values = [min(max(v, edges[0]), edges[-1]) for v in values]
    got = pl.DataFrame({"v": values}).select(_bin_index(pl.col("v"), edges).alias("bin"))["bin"].to_list()
    expected = [min(sum(v >= e for e in edges[1:-1]), len(edges) - 2) for v in values]
    assert got == expected


def test_a_file_swapped_under_a_release_is_refused(service):
    """The catalogue looks at files at most every 0.5 s; the computation checks it reads the version it was told."""
    import os

    from workbench.channels.dp import worker as engine
    from workbench.channels.dp import routes as node_routes
    from workbench.errors import ComputationFailed
    from workbench.protocol import DPRequest

    service.catalog.refresh(force=True)
    entry = service.catalog.get("patients")
    task = node_routes._task(service, entry, DPRequest(query={"kind": "count"}, epsilon=0.5), "release")
    assert engine.run(task)["table"]["data"]
    frame = pl.read_parquet(entry.path)
    frame.head(frame.height - 1).write_parquet(str(entry.path) + ".next")
    os.replace(str(entry.path) + ".next", entry.path)  # next month's extract, one row fewer
    with pytest.raises(ComputationFailed) as refused:
        engine.run(task)
    assert refused.value.code == "dataset_unavailable"
