"""In-process cost of a 3-node BFV secure sum vs a plaintext sum, by vector length.

Run: .venv/bin/python benchmarks/he.py   (prints a table; one run, side by side)
"""

from __future__ import annotations

import time

import numpy as np

from workbench.he import params


def run(lengths=(10, 1_000, 4_096), nodes: int = 3, repeats: int = 3) -> list[dict]:
    import tenseal as ts

    rows = []
    ctx = params.new_context()
    public_raw = params.public_bytes(ctx)
    for n in lengths:
        rng = np.random.default_rng(n)
        parts = [rng.integers(-10**9, 10**9, n).tolist() for _ in range(nodes)]
        he_times, plain_times = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            public = ts.context_from(public_raw)  # each party loads the public context
            blobs = [ts.bfv_vector(public, p).serialize() for p in parts]  # nodes encrypt
            total = ts.bfv_vector_from(public, blobs[0])
            for b in blobs[1:]:
                total = total + ts.bfv_vector_from(public, b)  # aggregator adds
            out = ts.bfv_vector_from(ctx, total.serialize()).decrypt()  # analyst decrypts
            he_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plain = np.sum(np.array(parts), axis=0)
            plain_times.append(time.perf_counter() - t0)
            assert out == plain.tolist()
        he, pt = min(he_times), min(plain_times)
        rows.append({"values": n, "he_s": he, "plain_s": pt, "ratio": he / pt if pt else float("inf"),
                     "bytes_wire": len(public_raw) * nodes + sum(len(b) for b in blobs) + len(total.serialize()),
                     "messages": 1 + 2 * nodes + 1})
    return rows


if __name__ == "__main__":
    print(f"{'values':>7} {'HE s':>8} {'plain s':>10} {'ratio':>9} {'bytes on wire':>14} {'messages':>9}")
    for r in run():
        print(f"{r['values']:>7} {r['he_s']:>8.3f} {r['plain_s']:>10.6f} {r['ratio']:>9.0f} {r['bytes_wire']:>14,} "
              f"{r['messages']:>9}")
