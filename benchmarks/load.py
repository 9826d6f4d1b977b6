"""Load generator: N concurrent analysts against one real node process, over loopback.

Three phases, each bounded in time and in request count:

* ``replay``  every analyst re-asks questions it already paid for (free, stored answers);
* ``release`` every analyst asks questions it has not asked before (each one charged);
* ``mixed``   previews, replays and fresh releases drawn at random (60/30/10 by default);

then ``honest`` / ``vs-hostile`` (issue 16): a few honest analysts release fresh questions,
first alone, then while one hostile analyst runs every free heavy call in a loop (previews
that make OpenDP search noise scales, synthesis and HE previews, the catalogue, mocks,
history, replays of its paid answers) from several connections at once; the honest p99
release latency may rise by at most 2x. Then a ``race``: every analyst fires more
concurrent releases at a small dataset than its lifetime budget allows, so the ledger
must refuse the excess.

Afterwards the node is stopped and its state is checked from the SQL store itself:
no grant or dataset spent more than its budget, every charge the clients saw is in
the ledger (and nothing else), every released answer has a committed charge, and
``workbench node audit verify`` accepts the hash chain.

Run ``python benchmarks/load.py`` (1M rows, 32 analysts, ~1-2 minutes) or
``python benchmarks/load.py --rows 20000 --analysts 4 --seconds 3`` for a quick look.
The test suite runs a small version (``tests/adversarial/test_load.py``, through ``benchmarks/loadkit.py``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `benchmarks` importable

from benchmarks.loadkit import hostile_ratio, patients_file, print_table, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--analysts", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per phase")
    parser.add_argument("--workers", type=int, default=2, help="OpenDP worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hostile", dest="hostile", action="store_false",
                        help="skip the honest / vs-hostile phases")
    parser.add_argument("--only-hostile", action="store_true",
                        help="only warm-up, honest, vs-hostile (and the race)")
    args = parser.parse_args(argv)
    data = patients_file(args.rows)
    with tempfile.TemporaryDirectory(prefix="workbench-load-") as tmp:
        out = run(Path(tmp), args.rows, args.analysts, args.seconds, args.max_requests, args.workers, args.seed,
                  data, hostile=args.hostile, only_hostile=args.only_hostile)
    print(f"\n{args.analysts} analysts, {args.rows:,} rows, {args.workers} workers, {args.seconds:g} s per phase\n")
    print_table(out.rows)
    led = out.ledger
    print(f"\nledger: {led['charges']} charges ({led['failed']} failed), {led['releases']} stored answers, "
          f"overspent: {len(led['overspent'])}, mismatches: {len(led['mismatch'])}")
    print(f"audit:  {out.audit_text}")
    rate = {(r["phase"], r["kind"]): r["per_s"] for r in out.rows}
    targets = [("replays/s", rate.get(("replay", "replay"), 0.0), 500),
               ("DP releases/s", rate.get(("release", "release"), 0.0), 20)]
    for label, value, goal in targets if "replay" in out.phases else []:
        print(f"target: {label:14s} {value:8.1f}  (goal >= {goal}) {'met' if value >= goal else 'MISSED'}")
    fairness = hostile_ratio(out.phases)
    if fairness is not None:
        alone, under, ratio = fairness
        hostile = out.phases["hostile"]
        limited = sum(v for k, v in hostile.errors.items() if k.endswith(":rate_limited"))
        calls = sum(len(v) for v in hostile.latencies.values())
        print(f"hostile analyst: {calls} free heavy calls in {hostile.wall:.1f} s, {limited} answered 429")
        print(f"target: honest p99 release {alone:8.1f} ms alone, {under:8.1f} ms under a hostile analyst: "
              f"{ratio:.2f}x (goal <= 2x) {'met' if ratio <= 2 else 'MISSED'}")
    print("0 overspend, valid audit: " + ("yes" if not out.problems else "NO:\n  " + "\n  ".join(out.problems)))
    return 0 if not out.problems else 1


if __name__ == "__main__":
    sys.exit(main())
