"""Node workers import only what their task needs (issue 20: a synthesis fit's worker spent ~1 s of CPU importing
the analyst's side of the package root: the client, pandas, httpx and every channel's kernel)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from workbench import LEAN_IMPORT_ENV

PROBE = """
import json, sys
import workbench.node.worker, workbench.channels.synth.worker
loaded = {m: m in sys.modules for m in ("pandas", "httpx", "workbench.client", "workbench.channels.synth.kernel")}
import workbench as wb
from workbench import connect                         # the public names still resolve, on first use
from workbench.client.dataset import RemoteDataset
print(json.dumps({"loaded": loaded, "connect": callable(wb.connect) and connect is wb.connect,
                  "synthesize": hasattr(RemoteDataset, "synthesize")}))
"""


def _probe(lean: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != LEAN_IMPORT_ENV}
    if lean:
        env[LEAN_IMPORT_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_process_skips_the_client_side_and_can_still_reach_it():
    lean = _probe(lean=True)
    assert not any(lean["loaded"].values()), lean["loaded"]
    assert lean["connect"] and lean["synthesize"]       # wb.<name> loads the client side, handles registered


def test_an_analyst_process_gets_the_whole_package_root_as_before():
    full = _probe(lean=False)
    assert all(full["loaded"].values()), full["loaded"]
    assert full["connect"] and full["synthesize"]


def test_the_worker_pool_starts_its_workers_lean():
    from pathlib import Path

    from workbench.node.worker import _Worker

    worker = _Worker(streaming=False)
    try:
        environ, deadline = b"", time.monotonic() + 60
        while not environ and worker.process.poll() is None and time.monotonic() < deadline:
            environ = Path(f"/proc/{worker.process.pid}/environ").read_bytes()   # empty until exec completes
        alive = worker.process.poll() is None
    finally:
        worker.kill()
    assert alive and f"{LEAN_IMPORT_ENV}=1".encode() in environ.split(b"\0")
