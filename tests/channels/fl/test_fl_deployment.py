"""Flower's deployment engine on loopback: a SuperLink, three nodes each starting its SuperNode, one round.

Slow (Flower polls every few seconds and spawns a process per message), so one round, and one refused app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import tomli_w

import workbench as wb
from tests.conftest import RunningNode, free_port, make_config, provision, start_node

pytestmark = pytest.mark.slow

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")


def _ours(root) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + json.dumps(proc.info.get("environ") or {})
        except Exception:  # noqa: BLE001
            continue
        if str(root) in text and proc.pid != os.getpid():
            found.append(proc)
    return found


def _launch(root, hospital, superlink_port) -> RunningNode:
    config = make_config(root / hospital, hospital)
    raw = tomllib.loads(config.read_text())
    raw["fl"] = {"superlink": f"127.0.0.1:{superlink_port}"}
    config.write_text(tomli_w.dumps(raw))
    accounts = provision(config)
    proc = start_node(config)
    return RunningNode(f"http://127.0.0.1:{raw['node']['port']}", config, accounts.analyst_token,
                       accounts.owner_token, proc)


def test_superlink_and_supernodes_one_round_then_everything_is_gone(tmp_path):
    from workbench.channels.fl.apps import write_app_dir
    from workbench.channels.fl.deployment import flower_env_vars, start_superlink, stop_group

    port = free_port()
    superlink = start_superlink(port, tmp_path / "superlink")
    nodes = []
    try:
        with ThreadPoolExecutor(3) as pool:
            nodes = list(pool.map(lambda h: _launch(tmp_path, h, port), HOSPITALS))
        fed = wb.federation([wb.connect(n.url, token=n.analyst_token) for n in nodes])
        job = fed.dataset("patients").train(model="logistic_regression", y="readmitted", x=["age", "bmi", "visits"],
                                            rounds=1, epsilon=1.0, delta=1e-6, engine="deployment",
                                            superlink=f"127.0.0.1:{port}")
        model = job.result(timeout=600)
        assert len(model.history) == 3 and set(model.history["node"]) == {"hospital-a", "hospital-b", "hospital-c"}
        for node in nodes:
            r = httpx.get(f"{node.url}/v1/datasets/patients/budget",
                          headers={"Authorization": f"Bearer {node.analyst_token}"})
            assert r.json()["epsilon_spent"] == pytest.approx(1.0)

        # A Flower app the owners did not allow: every node's executor refuses it before it runs.
        rogue = write_app_dir(tmp_path / "rogue")
        (rogue / "extra.py").write_text("print('code the owner never reviewed')\n")
        home = tmp_path / "flwr-analyst"
        home.mkdir()
        (home / "config.toml").write_text(f'[superlink]\ndefault = "w"\n\n[superlink.w]\naddress = "127.0.0.1:{port}"'
                                          "\ninsecure = true\n")
        config = {"rounds": 1, "nodes": 3, "shapes": [[3], [1]], "weight_bound": 8.0, "max_weight": 100000.0}
        (tmp_path / "rc.toml").write_text(f"job-ids = {json.dumps(json.dumps(job.job_ids))}\n"
                                          f"job-config = {json.dumps(json.dumps(config))}\n")
        run = subprocess.Popen([str(Path(sys.executable).parent / "flwr"),
                                "run", str(rogue), "w", "--run-config", str(tmp_path / "rc.toml")],
                               env=flower_env_vars(home), start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            refused: set[str] = set()
            while time.monotonic() < deadline and len(refused) < 3:
                for node in nodes:
                    lines = httpx.get(f"{node.url}/v1/audit", headers={"Authorization": f"Bearer {node.owner_token}"})
                    for line in lines.text.splitlines():
                        rec = json.loads(line)
                        if rec["action"] == "refusal" and rec["details"].get("code") == "fl_fab_not_allowed":
                            refused.add(node.url)
                time.sleep(2)
            assert len(refused) == 3
        finally:
            stop_group(run)
    finally:
        for node in nodes:
            node.stop()
        stop_group(superlink)
    deadline = time.monotonic() + 20
    while _ours(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ours(tmp_path) == []
