"""What sender-constrained tokens (DPoP, RFC 9449) cost per request, side by side with bearer tokens.

One real node process over loopback (demo data); the same analyst holds a bearer token and a
DPoP-bound one (``--dpop-jkt``). Requests alternate between the two so both see the same machine
load: ``GET /v1/me`` (authentication only) and a DP release that is a free replay (the node's
fastest path: bearer tokens may take the replay fast path, bound ones never do). Also timed in
process: making a proof (client) and checking one (node).

    python benchmarks/dpop_cost.py            # 300 requests per kind and scheme
    python benchmarks/dpop_cost.py --n 50     # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import launch  # noqa: E402  (a real node process on a free port)
from workbench.client.dpop import DPoPAuth, DPoPKey  # noqa: E402
from workbench.node.dpop import ProofChecker  # noqa: E402

RELEASE = {"query": {"kind": "count"}, "epsilon": 0.1}


def bound_token(node, key: DPoPKey) -> str:
    from workbench.node import admin
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    svc = NodeService(NodeConfig.load(node.config_path), start_workers=False)
    try:
        return admin.issue_token(svc.store, svc.authority, "analyst", dpop_jkt=key.thumbprint)
    finally:
        svc.close()


def timed(client: httpx.Client, method: str, path: str, **kw) -> float:
    start = time.perf_counter()
    response = client.request(method, path, **kw)
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, response.text
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = launch(Path(tmp))
        try:
            key = DPoPKey.generate()
            bearer = httpx.Client(base_url=node.url, headers={"Authorization": f"Bearer {node.analyst_token}"}, timeout=120)
            dpop = httpx.Client(base_url=node.url, auth=DPoPAuth(bound_token(node, key), key), timeout=120)
            path = "/v1/datasets/patients/dp/release"
            for client in (bearer, dpop):  # the first release is charged; later ones are replays
                timed(client, "POST", path, json=RELEASE)
            times: dict[tuple[str, str], list[float]] = {}
            for _ in tqdm(range(args.n), desc="requests"):
                for scheme, client in (("bearer", bearer), ("dpop", dpop)):
                    times.setdefault(("GET /v1/me", scheme), []).append(timed(client, "GET", "/v1/me"))
                    times.setdefault(("DP replay", scheme), []).append(timed(client, "POST", path, json=RELEASE))
        finally:
            node.stop()
    proof_make = _per_call(lambda: key.proof("GET", "http://127.0.0.1/v1/me", "t"), args.n)
    checker = ProofChecker()
    proofs = [key.proof("GET", "http://127.0.0.1/v1/me", "t") for _ in range(args.n)]
    proof_check = _per_call(lambda it=iter(proofs): checker.check(next(it), "GET", "http://127.0.0.1/v1/me", "t"),
                            args.n)
    print(f"\n{'request':<14}{'bearer ms (median)':>20}{'DPoP ms (median)':>18}{'DPoP / bearer':>15}")
    for kind in ("GET /v1/me", "DP replay"):
        b, d = (statistics.median(times[(kind, s)]) * 1e3 for s in ("bearer", "dpop"))
        print(f"{kind:<14}{b:>20.2f}{d:>18.2f}{d / b:>15.2f}")
    print(f"\nmake a proof (client, ES256):  {proof_make * 1e3:.3f} ms")
    print(f"check a proof (node):          {proof_check * 1e3:.3f} ms")


def _per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    main()
