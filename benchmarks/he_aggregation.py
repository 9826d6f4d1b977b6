"""Secure sums across 3 nodes: HE (BFV) vs SMPC (additive sharing) vs a plaintext federated DP sum.

Part A, in-process (the protocols' own work, no HTTP): vectors of 10, 1k, 4k and
16k integers, already noised, from 3 nodes. HE: each node loads the analyst's
public context, encrypts (one BFV ciphertext per 4096 values) and serializes;
the aggregator loads and adds; the analyst decrypts. SMPC: each node makes a
key pair, splits its vector into 3 shares (``secrets``), seals 2 of them to
their recipients; each node opens the 2 it received and adds them to its own;
the analyst adds the 3 partials mod P. Plaintext: each node serializes its
noisy vector as JSON, the analyst parses and adds. Bytes are what the
protocol puts on the wire (base64/JSON as sent); messages are HTTP requests.

Part B, end to end (``--e2e``): 3 demo nodes and the aggregator as real
processes on loopback; a secure sum of 3 columns + count and a 2-regressor
regression over HE and SMPC, and the same totals as plaintext federated DP
queries; median of 3 warm runs (fresh epsilon each, so nothing is a replay).

Run: .venv/bin/python benchmarks/he_aggregation.py [--e2e] [--plot out.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from workbench.channels.secagg import he_params as params
from workbench.channels.secagg import smpc_field as field
from workbench.channels.secagg import smpc_sealing as sealing

NODES = 3
LENGTHS = (10, 1_000, 4_096, 16_384)
SLOTS = params.POLY_MODULUS_DEGREE


def _b64len(n: int) -> int:
    return 4 * math.ceil(n / 3)


def he_sum(parts: list[list[int]], ctx, public_raw: bytes) -> tuple[list[int], int]:
    import tenseal as ts

    wire = _b64len(len(public_raw)) * (1 + len(parts))  # analyst -> aggregator, aggregator -> each node
    blobs = []
    for values in parts:  # each node
        public = ts.context_from(public_raw)
        chunks = [ts.bfv_vector(public, values[i:i + SLOTS]).serialize() for i in range(0, len(values), SLOTS)]
        blobs.append(chunks)
        wire += sum(_b64len(len(c)) for c in chunks)
    agg_ctx = ts.context_from(public_raw)  # the aggregator
    totals = []
    for j in range(len(blobs[0])):
        total = ts.bfv_vector_from(agg_ctx, blobs[0][j])
        for node in blobs[1:]:
            total = total + ts.bfv_vector_from(agg_ctx, node[j])
        raw = total.serialize()
        wire += _b64len(len(raw))
        totals.extend(ts.bfv_vector_from(ctx, raw).decrypt())  # the analyst
    return totals, wire


def smpc_sum(parts: list[list[int]]) -> tuple[list[int], int]:
    n, length, sid = len(parts), len(parts[0]), "bench"
    names = [f"n{i}" for i in range(n)]
    keys = [sealing.new_key() for _ in range(n)]
    wire = sum(len(k[1]) for k in keys) * (1 + n)  # each posts its key, each fetches all keys
    mailbox: dict[str, dict[str, str]] = {m: {} for m in names}
    own = {}
    for i, values in enumerate(parts):  # each node splits and seals
        shares = field.split(values, n)
        own[names[i]] = shares[i]
        for j, share in enumerate(shares):
            if j != i:
                mailbox[names[j]][names[i]] = sealing.seal(keys[i][0], keys[j][1], sid, names[i], names[j],
                                                           field.to_bytes(share), length)
    wire += 2 * sum(len(t) for box in mailbox.values() for t in box.values())  # posted, then fetched
    partials = []
    for j, me in enumerate(names):  # each node opens what it received
        opened = [field.from_bytes(sealing.open_sealed(keys[j][0], keys[names.index(s)][1], sid, s, me, t, length),
                                   length) for s, t in mailbox[me].items()]
        partial = field.add(own[me], *opened)
        wire += len(json.dumps(partial))
        partials.append(partial)
    return field.decode(field.add(*partials)), wire


def plain_sum(parts: list[list[int]]) -> tuple[list[int], int]:
    texts = [json.dumps(values) for values in parts]
    total = np.sum([np.array(json.loads(t), dtype=np.int64) for t in texts], axis=0)
    return total.tolist(), sum(len(t) for t in texts)


def messages(length: int) -> dict[str, int]:
    """HTTP requests of one secure sum over 3 nodes (the minimum; SMPC polls may add a few)."""
    return {"he": 1 + NODES + NODES + NODES + 1,  # session, contribute x3, node reads session x3, posts x3, result
            "smpc": 1 + NODES + NODES * 5,  # session, contribute x3; per node: session, key, keys, shares, inbox
            "plain": NODES}


def in_process(lengths=LENGTHS, repeats: int = 3) -> list[dict]:
    ctx = params.new_context()
    public_raw = params.public_bytes(ctx)
    rows = []
    rng = np.random.default_rng(0)
    for n in lengths:
        parts = [rng.integers(-10**9, 10**9, n).tolist() for _ in range(NODES)]
        truth = np.sum(np.array(parts), axis=0).tolist()
        times = {"he": [], "smpc": [], "plain": []}
        for _ in range(repeats):
            for name, fn in (("he", lambda: he_sum(parts, ctx, public_raw)), ("smpc", lambda: smpc_sum(parts)),
                             ("plain", lambda: plain_sum(parts))):
                t0 = time.perf_counter()
                total, wire = fn()
                times[name].append(time.perf_counter() - t0)
                assert list(total[:n]) == truth, name
                times.setdefault(f"{name}_wire", wire)
        m = messages(n)
        best = {k: min(times[k]) for k in ("he", "smpc", "plain")}
        rows.append({"values": n, "he_s": best["he"], "smpc_s": best["smpc"], "plain_s": best["plain"],
                     "he_x": best["he"] / best["plain"], "smpc_x": best["smpc"] / best["plain"],
                     "he_bytes": times["he_wire"], "smpc_bytes": times["smpc_wire"],
                     "plain_bytes": times["plain_wire"], "he_msgs": m["he"], "smpc_msgs": m["smpc"],
                     "plain_msgs": m["plain"]})
    return rows


def print_in_process(rows: list[dict]) -> None:
    print("Part A: in-process, 3 nodes, min of 3 (s; x = time / plaintext time)")
    print(f"{'values':>7} | {'HE s':>7} {'SMPC s':>7} {'plain s':>8} | {'HE x':>6} {'SMPC x':>7} | "
          f"{'HE bytes':>10} {'SMPC bytes':>11} {'plain bytes':>11} | {'msgs HE/SMPC/plain':>18}")
    for r in rows:
        print(f"{r['values']:>7} | {r['he_s']:>7.3f} {r['smpc_s']:>7.3f} {r['plain_s']:>8.5f} | "
              f"{r['he_x']:>6.0f} {r['smpc_x']:>7.0f} | {r['he_bytes']:>10,} {r['smpc_bytes']:>11,} "
              f"{r['plain_bytes']:>11,} | {r['he_msgs']:>6}/{r['smpc_msgs']}/{r['plain_msgs']}")


# ---------------------------------------------------------------- part B: real processes


class _Meter:
    """Counts the analyst's HTTP bytes and requests on a Node (httpx event hooks)."""

    def __init__(self):
        self.bytes = 0
        self.requests = 0

    def attach(self, node) -> None:
        node._http.event_hooks["request"].append(self._request)
        node._http.event_hooks["response"].append(self._response)

    def _request(self, request) -> None:
        self.requests += 1
        self.bytes += len(request.content or b"")

    def _response(self, response) -> None:
        response.read()
        self.bytes += len(response.content)


def end_to_end(repeats: int = 3) -> list[dict]:
    import socket

    root = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    os.environ.update({"WORKBENCH_HOME": str(root / "home"), "WORKBENCH_CONFIG": str(root / "config.toml"),
                       "XDG_DATA_HOME": str(root / "xdg"), "XDG_CONFIG_HOME": str(root / "xdgc")})
    import workbench as wb
    from workbench.demo import launcher

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        first = s.getsockname()[1]
    while not all(launcher._port_free(first + i) for i in range(4)):
        first += 7
    demo = launcher.start_demo(root, launcher.node_urls(first), first + 3, mock=False)
    rows = []
    try:
        nodes = [wb.connect(u) for u in demo.urls.values()]
        meter = _Meter()
        for n in nodes:
            meter.attach(n)
        ds = wb.federation(nodes).dataset("patients")
        cols = ["cost", "visits", "age"]
        eps = iter(0.011 + 0.0007 * i for i in range(1000))

        def plain():
            out = [ds.sum(c).release(epsilon=next(eps)) for c in cols]
            return out + [ds.count().release(epsilon=next(eps))]

        cases = [
            ("secure sum (3 cols + count)", "plaintext DP", plain),
            ("secure sum (3 cols + count)", "HE", lambda: ds.secure_sum(cols, epsilon=next(eps), count=True)),
            ("secure sum (3 cols + count)", "SMPC",
             lambda: ds.secure_sum(cols, epsilon=next(eps), count=True, protocol="smpc")),
            ("regression cost ~ age + bmi", "HE",
             lambda: ds.linear_regression(y="cost", x=["age", "bmi"], epsilon=next(eps) * 10)),
            ("regression cost ~ age + bmi", "SMPC",
             lambda: ds.linear_regression(y="cost", x=["age", "bmi"], epsilon=next(eps) * 10, protocol="smpc")),
            ("evaluate sse (2 regressors)", "HE",
             lambda: ds.evaluate({"age": 40.0, "bmi": 90.0}, 500.0, y="cost", metric="sse", epsilon=next(eps) * 10)),
        ]
        for _task, _proto, fn in cases:  # warm the workers (first use imports OpenDP/TenSEAL in each)
            fn()
        for task, proto, fn in cases:
            times, sent, reqs = [], [], []
            for _ in range(repeats):
                b0, r0 = meter.bytes, meter.requests
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
                extra = 0
                if hasattr(out, "attrs") and "bytes" in out.attrs:
                    extra = out.attrs["bytes"].get("analyst_sent", 0) + out.attrs["bytes"].get("analyst_received", 0)
                sent.append(meter.bytes - b0 + extra)
                reqs.append(meter.requests - r0 + {"HE": 2, "SMPC": 1, "plaintext DP": 0}[proto])  # + aggregator
            rows.append({"task": task, "protocol": proto, "s": statistics.median(times),
                         "analyst_bytes": int(statistics.median(sent)), "analyst_requests": int(statistics.median(reqs))})
    finally:
        demo.stop()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    base = {r["task"]: r["s"] for r in rows if r["protocol"] == "plaintext DP"}
    for r in rows:
        r["x_plain"] = r["s"] / base[r["task"]] if r["task"] in base else float("nan")
    return rows


def print_e2e(rows: list[dict]) -> None:
    print("\nPart B: end to end, 3 node processes + aggregator on loopback, median of 3 warm runs")
    print(f"{'task':<30} {'protocol':<13} {'s':>7} {'x plain':>8} {'analyst bytes':>14} {'analyst reqs':>13}")
    for r in rows:
        x = "" if math.isnan(r["x_plain"]) else f"{r['x_plain']:.1f}"
        print(f"{r['task']:<30} {r['protocol']:<13} {r['s']:>7.2f} {x:>8} {r['analyst_bytes']:>14,} "
              f"{r['analyst_requests']:>13}")


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    xs = [r["values"] for r in rows]
    for key, label in (("he", "HE (BFV)"), ("smpc", "SMPC"), ("plain", "plaintext")):
        ax[0].loglog(xs, [r[f"{key}_s"] for r in rows], marker="o", label=label)
        ax[1].loglog(xs, [r[f"{key}_bytes"] for r in rows], marker="o", label=label)
    ax[0].set(xlabel="values per node", ylabel="seconds (3 nodes)", title="time")
    ax[1].set(xlabel="values per node", ylabel="bytes on the wire", title="bytes")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--e2e", action="store_true", help="also run part B on real node processes")
    parser.add_argument("--plot", default=None, help="save a plot of part A here")
    args = parser.parse_args(argv)
    rows = in_process()
    print_in_process(rows)
    four_k = next(r for r in rows if r["values"] == 4_096)
    print(f"3-node 4k-slot HE secure sum in-process: {four_k['he_s']:.3f} s (target <= 0.5 s): "
          f"{'met' if four_k['he_s'] <= 0.5 else 'NOT met'}")
    if args.plot:
        plot(rows, args.plot)
    if args.e2e:
        print_e2e(end_to_end())
    return 0


if __name__ == "__main__":
    sys.exit(main())
