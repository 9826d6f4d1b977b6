"""What the node adds on top of OpenDP: DP releases through HTTP, auth, gate and ledger.

For a DP count, a mean, a group-by mean and a filtered several-statistics
group-by (``filter(age >= 30 & sex == "F").group_by(region).agg(n=count,
cost=mean(cost), sd=std(cost))``, the query language's row) over 1M and 10M
rows, side by side in one run on the same Parquet file:

* raw Polars (no privacy),
* bare OpenDP (a fresh ``dp.Context`` over ``pl.scan_parquet`` and ``release()``,
  as a notebook would do it),
* OpenDP with a fixed, pre-solved noise scale (what the node's worker runs),
* the Workbench node (a real ``workbench node serve`` process on loopback: HTTP,
  token check, release gate, SQLite ledger and audit, OpenDP in a worker process),

plus the latency of a cached replay. Each timing is the median of ``--repeat``
runs; every node release is a new question (a different epsilon), so none is a replay.

    .venv/bin/python benchmarks/dp_overhead.py [--sizes 1000000 10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import tomli_w

HERE = Path(__file__).resolve().parent
COLUMNS = {
    "age": {"type": "int", "bounds": [0, 100]},
    "sex": {"type": "category", "categories": ["F", "M"]},
    "region": {"type": "category", "categories": ["north", "south", "east", "west"]},
    "cost": {"type": "float", "bounds": [0.0, 50_000.0]},
}


def make_data(rows: int, folder: Path) -> Path:
    path = folder / f"bench_{rows}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(rows)
    pl.DataFrame({
        "age": rng.integers(0, 101, rows),
        "sex": rng.choice(["F", "M"], rows),
        "region": rng.choice(["north", "south", "east", "west"], rows),
        "cost": rng.gamma(2.0, 1500.0, rows).clip(0, 50_000),
    }).write_parquet(path)
    return path


def timed(fn, repeat: int) -> float:
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------ raw Polars and bare OpenDP

FILTER = (pl.col("age") >= 30) & (pl.col("sex") == "F")
KINDS = ("count", "mean", "group-by mean", "filtered agg")


def agg_spec() -> dict:
    """The filtered several-statistics group-by as the query language's wire spec."""
    from workbench import col

    return {"kind": "agg", "by": ["region"], "where": ((col("age") >= 30) & (col("sex") == "F")).tree,
            "aggs": [{"name": "n", "stat": "count"}, {"name": "cost", "stat": "mean", "column": "cost"},
                     {"name": "sd", "stat": "std", "column": "cost"}]}


def raw_polars(path: Path, kind: str):
    lf = pl.scan_parquet(path)
    if kind == "filtered agg":
        return lambda i: lf.filter(FILTER).group_by("region").agg(
            pl.len().alias("n"), pl.col("cost").mean().alias("cost"), pl.col("cost").std().alias("sd")).collect()
    if kind == "count":
        return lambda i: lf.select(pl.len()).collect()
    if kind == "mean":
        return lambda i: lf.select(pl.col("cost").mean()).collect()
    return lambda i: lf.group_by("region").agg(pl.col("cost").mean()).collect()


def bare_opendp(path: Path, kind: str, rows: int):
    import opendp.prelude as dp

    dp.enable_features("contrib")
    keys = pl.DataFrame({"region": ["north", "south", "east", "west"]})

    def run(i: int):
        eps = 0.5 + i * 1e-3
        ctx = dp.Context.compositor(data=pl.scan_parquet(path), privacy_unit=dp.unit_of(contributions=1),
                                    privacy_loss=dp.loss_of(epsilon=eps), split_evenly_over=1,
                                    margins=[dp.polars.Margin(by=[], max_length=rows)])
        cost = pl.col("cost").fill_nan(0.0).fill_null(0.0).dp.sum((0.0, 50_000.0))
        if kind == "filtered agg":  # the same aggregates the node builds: one OpenDP query, even split
            q = ctx.query().filter(FILTER).group_by("region").agg(*agg_expressions()).with_keys(keys)
        elif kind == "count":
            q = ctx.query().select(dp.len(signed=True))
        elif kind == "mean":
            q = ctx.query().select(cost.alias("sum"), dp.len(signed=True).alias("count"))
        else:
            q = ctx.query().group_by("region").agg(cost.alias("sum"), dp.len(signed=True).alias("count")).with_keys(keys)
        return q.release().collect()
    return run


def agg_expressions() -> list:
    from workbench.channels.dp.statistics import statistic_aggregates
    from workbench.protocol import DatasetInfo, DPQuery

    info = DatasetInfo(name="bench", tier="private", max_rows=1, columns=[{"name": n, **c} for n, c in COLUMNS.items()])
    return [a for s in DPQuery.model_validate(agg_spec()).aggs for a in statistic_aggregates(info, s)]


def fixed_scale_opendp(path: Path, kind: str, rows: int):
    """Bare OpenDP with the noise scale solved once (the explicit-scale path): same work as the node's
    worker, minus HTTP, auth, gate and ledger."""
    import opendp.prelude as dp

    from workbench.channels.dp import worker as engine
    from workbench.protocol import DatasetInfo, DPQuery

    info = DatasetInfo(name="bench", tier="private", max_rows=rows,
                       columns=[{"name": n, **c} for n, c in COLUMNS.items()])
    spec = {"count": {"kind": "count"}, "mean": {"kind": "mean", "column": "cost"},
            "group-by mean": {"kind": "mean", "column": "cost", "by": ["region"]},
            "filtered agg": agg_spec()}[kind]

    def run(i: int):
        return engine.run({"info": info.model_dump(mode="json"), "query": spec, "epsilon": 0.5, "delta": 0.0,
                           "alpha": 0.05, "path": str(path), "format": "parquet", "mode": "release",
                           "cache_key": f"{path}|{kind}"})
    return run


# ------------------------------------------------------------------ the node

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(root: Path, datasets: dict[int, Path]):
    from workbench.node import admin
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    port = free_port()
    config = {"node": {"name": "bench", "state_dir": str(root / "state"), "workers": 2},
              "datasets": {f"d{rows}": {"path": str(path), "max_rows": rows, "columns": COLUMNS,
                                        "budget": {"epsilon": 1e6, "delta": 1e-3}}
                           for rows, path in datasets.items()}}
    config_path = root / "bench.toml"
    config_path.write_text(tomli_w.dumps(config))
    service = NodeService(NodeConfig.load(config_path), start_workers=False)
    token = admin.add_user(service.store, service.authority, "bench", "analyst")
    for name in config["datasets"]:
        admin.add_grant(service.store, "bench", name, "benchmark", epsilon=1000.0)
    service.close()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "node", "serve", "--config", str(config_path),
                             "--port", str(port)], start_new_session=True, stderr=subprocess.DEVNULL)
    import httpx

    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/v1/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return proc, url, token


def node_release(node, rows: int, kind: str):
    ds = node.dataset(f"d{rows}")

    def query():
        if kind == "filtered agg":
            from workbench import col, count, mean, std

            return ds.filter((col("age") >= 30) & (col("sex") == "F")).group_by("region").agg(
                n=count(), cost=mean("cost"), sd=std("cost"))
        if kind == "count":
            return ds.count()
        if kind == "mean":
            return ds.mean("cost")
        return ds.group_by("region").mean("cost")
    return lambda i: query().release(epsilon=0.5 + i * 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = parser.parse_args()

    import workbench as wb

    data_dir = HERE / "data"
    data_dir.mkdir(exist_ok=True)
    print("preparing data ...", flush=True)
    datasets = {rows: make_data(rows, data_dir) for rows in args.sizes}
    root = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    proc, url, token = start_node(root, datasets)
    try:
        node = wb.connect(url, token=token)
        for rows in args.sizes:  # warm the workers and the page cache
            node.dataset(f"d{rows}").count().release(epsilon=9.0)
        print(f"\n{'rows':>10} {'query':<14} {'polars ms':>10} {'opendp ms':>10} {'fixed ms':>10} {'node ms':>10} "
              f"{'node/opendp':>12} {'node/fixed':>11} {'node/polars':>12}")
        for rows, path in datasets.items():
            for kind in args.kinds:
                raw = timed(raw_polars(path, kind), args.repeat)
                bare = timed(bare_opendp(path, kind, rows), args.repeat)
                fixed = timed(fixed_scale_opendp(path, kind, rows), args.repeat + 1)
                via_node = timed(node_release(node, rows, kind), args.repeat)
                print(f"{rows:>10,} {kind:<14} {raw * 1e3:>10.1f} {bare * 1e3:>10.1f} {fixed * 1e3:>10.1f} "
                      f"{via_node * 1e3:>10.1f} {via_node / bare:>11.2f}x {via_node / fixed:>10.2f}x "
                      f"{via_node / raw:>11.2f}x", flush=True)
        q = node.dataset(f"d{args.sizes[-1]}").group_by("region").mean("cost")
        q.release(epsilon=1.25)
        replay = timed(lambda i: q.release(epsilon=1.25), max(args.repeat, 20))
        print(f"\ncached replay (group-by mean, {args.sizes[-1]:,} rows): {replay * 1e3:.1f} ms median")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
