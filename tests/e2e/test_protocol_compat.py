"""Partners on different releases: the current client with the previous node, the previous client with the current one.

"The previous release" is the tag ``v0.1.0`` if the repository has it, else commit ``17c85c4`` (the
main branch the ecosystem work started from, protocol 1). Its tree is exported with ``git archive``
into a temporary folder and run from there (same virtualenv), so both sides are real processes of
real releases. The core paths (catalogue, preview, release, replay, budget) must work both ways;
a version neither side speaks is refused in one sentence.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import tomllib
from pathlib import Path

import httpx
import pytest

import workbench as wb
from workbench.protocol import PROTOCOL_HEADER, PROTOCOLS_HEADER

from tests.conftest import launch, make_config

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_TAG, PREVIOUS_COMMIT = "v0.1.0", "17c85c4"

pytestmark = pytest.mark.slow


def previous_release() -> str | None:
    for ref in (PREVIOUS_TAG, PREVIOUS_COMMIT):
        found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=REPO,
                               capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.strip()
    return None


@pytest.fixture(scope="module")
def previous_tree(tmp_path_factory) -> Path:
    commit = previous_release()
    if commit is None:
        pytest.skip("neither the tag v0.1.0 nor commit 17c85c4 is in this repository (a shallow clone?)")
    folder = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "workbench"], cwd=REPO, capture_output=True,
                             check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def previous(tree: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run Python with the previous release first on the path (and as the working folder: ``-c`` puts it first)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([sys.executable, *args], env=env, cwd=tree, capture_output=True, text=True, timeout=300,
                          **kwargs)


@pytest.fixture(scope="module")
def previous_node(previous_tree, tmp_path_factory):
    """A node of the previous release (provisioned and served by its own code)."""
    path = make_config(tmp_path_factory.mktemp("old-node"))
    setup = previous(previous_tree, "-c", textwrap.dedent(f"""
        import json, workbench
        assert workbench.__file__.startswith({str(previous_tree)!r}), workbench.__file__
        from workbench.demo.nodes import ensure_accounts
        from workbench.node.service import NodeService
        from workbench.node.settings import NodeConfig
        svc = NodeService(NodeConfig.load({str(path)!r}), start_workers=False)
        print(json.dumps({{"analyst": ensure_accounts(svc).analyst_token}}))
        svc.close()
    """))
    assert setup.returncode == 0, setup.stderr
    token = json.loads(setup.stdout.strip().splitlines()[-1])["analyst"]
    port = tomllib.loads(path.read_text())["node"]["port"]
    env = {**os.environ, "PYTHONPATH": str(previous_tree)}
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "node", "serve", "--config", str(path)], env=env,
                            cwd=previous_tree, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def _wait_healthy(url: str, proc: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the previous release's node exited"
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a starting server
    raise AssertionError("the previous release's node did not start")


CORE_PATHS = """
import json, sys, workbench as wb
node = wb.connect(sys.argv[1], token=sys.argv[2])
catalog = node.catalog()
ds = node.dataset("patients")
preview = ds.count().preview(epsilon=0.2)
first = ds.count().release(epsilon=0.2)
again = ds.count().release(epsilon=0.2)
print(json.dumps({"datasets": sorted(catalog["name"]), "preview_epsilon": preview.epsilon,
                  "estimate": float(first["estimate"].iloc[0]), "again": float(again["estimate"].iloc[0]),
                  "replayed": bool(again.attrs["replayed"]),
                  "budget": ds.budget(), "version": wb.__version__, "file": wb.__file__}))
"""


def check_core_paths(out: dict) -> None:
    assert out["datasets"] == ["iris", "patients"]
    assert out["preview_epsilon"] == pytest.approx(0.2)
    assert abs(out["estimate"] - 20_000) < 500
    assert out["again"] == out["estimate"] and out["replayed"], "the same question is a free replay"
    assert out["budget"]["epsilon"] == pytest.approx(10.0 - 0.2), "charged once"


def test_current_client_with_the_previous_node(previous_node):
    url, token = previous_node
    out = subprocess.run([sys.executable, "-c", CORE_PATHS, url, token], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(REPO))
    check_core_paths(result)
    node = wb.connect(url, token=token)
    assert node.protocol == "1", "the highest version both speak"
    node.close()


def test_previous_client_with_the_current_node(previous_tree, tmp_path):
    node = launch(tmp_path)
    try:
        out = previous(previous_tree, "-c", CORE_PATHS, node.url, node.analyst_token)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["file"].startswith(str(previous_tree)), "really the previous client"
        check_core_paths(result)
    finally:
        node.stop()


def test_negotiation_and_one_sentence_refusals(shared_node):
    offer = httpx.get(shared_node.url + "/v1/info", headers={PROTOCOLS_HEADER: "1, 2, 7"}, timeout=30)
    assert offer.status_code == 200 and offer.headers[PROTOCOL_HEADER] == "2"
    old = httpx.get(shared_node.url + "/v1/datasets/patients", timeout=30,
                    headers={PROTOCOL_HEADER: "1", "Authorization": f"Bearer {shared_node.analyst_token}"})
    assert "agreement" not in old.json(), "a protocol-1 client would refuse a field it does not know"
    new = httpx.get(shared_node.url + "/v1/datasets/patients", timeout=30,
                    headers={PROTOCOL_HEADER: "2", "Authorization": f"Bearer {shared_node.analyst_token}"})
    assert "agreement" in new.json()
    for header in ({PROTOCOLS_HEADER: "7, 8"}, {PROTOCOL_HEADER: "9"}):
        refused = httpx.get(shared_node.url + "/v1/info", headers=header, timeout=30)
        body = refused.json()
        assert refused.status_code == 400 and body["code"] == "protocol_unsupported"
        assert body["message"].count(".") == 0 or body["message"].rstrip(".").count(". ") == 0, "one sentence"
        assert "1, 2" in body["message"]
    # New request fields an older node does not know are refused by it, never silently dropped.
    unknown = httpx.post(shared_node.url + "/v1/datasets/patients/dp/preview", timeout=30,
                         headers={"Authorization": f"Bearer {shared_node.analyst_token}"},
                         json={"query": {"kind": "count"}, "epsilon": 0.1, "future_field": 1})
    assert unknown.status_code == 422 and unknown.json()["code"] == "invalid_body"
