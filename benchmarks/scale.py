"""One node, a lot of rows: time and memory of a DP group-by mean, beside raw Polars streaming on the same file.

For each ``--rows`` size (the file is generated in chunks of ``--chunk`` rows,
4 columns, ~9.5 bytes a row in Parquet):

* raw Polars: ``scan_parquet(...).group_by("region").agg(mean("cost"))`` with
  the streaming engine, in a fresh process (its peak RSS is that process's);
* the node: a real ``workbench node serve`` process (HTTP, token, gate, ledger,
  audit, OpenDP in a worker). Reported separately: start-up (version hash and
  checks of the file), the first release (it writes the node's columnar copy,
  streamed), then the median of ``--repeat`` DP group-by means (each a new
  question), and the peak resident memory summed over the node and all its
  child processes, sampled every 50 ms (``psutil``), during each phase, and the CPU time a release takes in
  the node process (HTTP, gate, ledger, audit) and in its workers (OpenDP), beside raw Polars' CPU time, and
  how often a busy worker had two or more threads runnable ("2+ threads": whether a release uses both cores);
* with ``--spark``: the same DP query on a dataset whose source is the same
  Parquet file read by Spark ``local[2]`` (first, with the session start, and warm).

The load average of the shared machine is printed beside the table.

    python benchmarks/scale.py --rows 100000000 [--rows 1000000000] [--spark] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import tomli_w
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
REGIONS = ["north", "south", "east", "west"]
COLUMNS = {
    "age": {"type": "int", "bounds": [0, 100]},
    "sex": {"type": "category", "categories": ["F", "M"]},
    "region": {"type": "category", "categories": REGIONS},
    "cost": {"type": "float", "bounds": [0.0, 50_000.0]},
}
QUERY = {"kind": "mean", "column": "cost", "by": ["region"]}
#: Raw Polars runs with this process's environment as it started: the node's modules, once imported, set Polars'
#: read options (workbench.node.datafiles.BUFFERED_READS) in ``os.environ``, which raw Polars must not inherit.
RAW_ENV = dict(os.environ)
RAW = """
import resource, sys, time, polars as pl
start = time.perf_counter()
out = pl.scan_parquet(sys.argv[1]).group_by("region").agg(pl.col("cost").mean()).collect(engine="streaming")
usage = resource.getrusage(resource.RUSAGE_SELF)
print(time.perf_counter() - start, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime)
"""


def make_data(rows: int, folder: Path, chunk: int) -> Path:
    """``rows`` rows written ``chunk`` at a time (memory bounded by one chunk), one Parquet file."""
    path = folder / f"scale_{rows}.parquet"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(rows)
    schema = pa.schema([("age", pa.int64()), ("sex", pa.string()), ("region", pa.string()), ("cost", pa.float64())])
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in tqdm(range(0, rows, chunk), desc=f"writing {rows:,} rows", unit="chunk"):
            n = min(chunk, rows - start)
            sex = pa.DictionaryArray.from_arrays(rng.integers(0, 2, n, dtype=np.int8), ["F", "M"])
            region = pa.DictionaryArray.from_arrays(rng.integers(0, 4, n, dtype=np.int8), REGIONS)
            writer.write_table(pa.table({
                "age": rng.integers(0, 101, n),
                "sex": sex.cast(pa.string()),
                "region": region.cast(pa.string()),
                "cost": rng.gamma(2.0, 1500.0, n).clip(0, 50_000),
            }, schema=schema), row_group_size=1_000_000)
    tmp.rename(path)
    return path


def role(proc: psutil.Process, node_pid: int) -> str:
    """Which of the node's processes this is: the node itself, one of its workers, or a process a worker started
    (the writer of a part of the columnar copy). By parentage: a freshly started child still shows its parent's
    command line until it executes its own."""
    if proc.pid == node_pid:
        return "node"
    return "worker" if proc.ppid() == node_pid else "writer"


class PeakRSS:
    """Peaks of the summed memory of a process and all its descendants, sampled in a thread.

    ``peak``: resident set size (``RSS``), which counts the pages of the Parquet files Polars memory-maps
    (shared, reclaimable page cache); ``anon_peak``: anonymous memory (``RssAnon``), what the processes
    themselves allocated; ``roles``: the peak RSS of each kind of process (:func:`role`) summed over its processes
    alive at the same moment; :attr:`parallel`: how often a busy worker had two or more threads runnable."""

    def __init__(self, pid: int, every_s: float = 0.05):
        self.root, self.every, self.peak, self.anon_peak = psutil.Process(pid), every_s, 0, 0
        self.roles: dict[str, int] = {}
        self._role: dict[int, str] = {}
        self._busy = [0, 0]  # samples of a worker with one runnable thread, with two or more
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int, dict[str, int]]:
        rss = anon = 0
        by_role: dict[str, int] = {}
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                kind = self._role.get(proc.pid) or self._role.setdefault(proc.pid, role(proc, self.root.pid))
                used = proc.memory_info().rss
                with open(f"/proc/{proc.pid}/status") as fh:
                    anon += next(int(line.split()[1]) * 1024 for line in fh if line.startswith("RssAnon:"))
                rss += used
                by_role[kind] = by_role.get(kind, 0) + used
                if kind == "worker":
                    self._count_runnable(proc.pid)
            except (psutil.Error, OSError, StopIteration):
                pass
        return rss, anon, by_role

    def _count_runnable(self, pid: int) -> None:
        runnable = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as fh:
                    runnable += fh.read().rsplit(")", 1)[1].split()[0] == "R"
            except OSError:
                pass
        if runnable:
            self._busy[min(runnable, 2) - 1] += 1

    @property
    def parallel(self) -> float:
        """The share of the samples with a busy worker in which two or more of its threads were runnable (running
        or waiting for a core): near 1 when a release keeps both cores busy, near 0 when it runs on one."""
        return self._busy[1] / max(1, sum(self._busy))

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, anon, by_role = self._sample()
            self.peak, self.anon_peak = max(self.peak, rss), max(self.anon_peak, anon)
            for kind, used in by_role.items():
                self.roles[kind] = max(self.roles.get(kind, 0), used)
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) used so far by the node process itself and by all its child processes (the
    workers): where a release's time goes, HTTP/gate/ledger vs OpenDP, whatever the machine's load."""
    root = psutil.Process(pid)
    own = sum(root.cpu_times()[:2])
    children = 0.0
    for proc in root.children(recursive=True):
        try:
            children += sum(proc.cpu_times()[:2])
        except psutil.Error:
            pass
    return own, children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(root: Path, datasets: dict[str, dict]):
    """A provisioned ``workbench node serve`` process; returns (process, base url, token, start-up seconds)."""
    import httpx

    from workbench.node import admin
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    config = {"node": {"name": "scale", "state_dir": str(root / "state"), "workers": 2, "query_timeout_s": 3600},
              "datasets": datasets}
    config_path = root / "scale.toml"
    config_path.write_text(tomli_w.dumps(config))
    start = time.perf_counter()
    service = NodeService(NodeConfig.load(config_path), start_workers=False)  # hashes and checks the files
    token = admin.add_user(service.store, service.authority, "bench", "analyst")
    for name in datasets:
        admin.add_grant(service.store, "bench", name, "benchmark", epsilon=1000.0)
    service.close()
    startup = time.perf_counter() - start
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "node", "serve", "--config", str(config_path),
                             "--port", str(port)], start_new_session=True, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return proc, url, token, startup


def note(phase: str, **values) -> None:
    """Each phase's numbers as soon as they are measured (a long run interrupted still says something)."""
    print(f"[{time.strftime('%H:%M:%S')}] {phase}: " + ", ".join(f"{k}={v:.3g}" for k, v in values.items()),
          flush=True)


def release(client, name: str, epsilon: float) -> float:
    start = time.perf_counter()
    response = client.post(f"/datasets/{name}/dp/release", json={"query": QUERY, "epsilon": epsilon})
    response.raise_for_status()
    return time.perf_counter() - start


def raw_polars(path: Path) -> tuple[float, int, float]:
    """(wall seconds, peak RSS bytes, CPU seconds) of raw Polars streaming in a fresh process."""
    out = subprocess.run([sys.executable, "-c", RAW, str(path)], capture_output=True, text=True, check=True,
                         env=RAW_ENV)
    seconds, rss, cpu = out.stdout.split()
    return float(seconds), int(rss), float(cpu)


def measure(path: Path, rows: int, repeat: int, spark: bool, data_dir: Path) -> dict:
    import httpx

    result = {"rows": rows, "file_gb": path.stat().st_size / 1e9}
    raw = [raw_polars(path) for _ in range(repeat)]
    result["raw_s"], result["raw_rss"] = statistics.median(r[0] for r in raw), max(r[1] for r in raw)
    result["raw_cpu"] = statistics.median(r[2] for r in raw)
    note("raw Polars streaming", seconds=result["raw_s"], rss_gib=result["raw_rss"] / 2 ** 30, cpu_s=result["raw_cpu"])
    datasets = {"file": {"path": str(path), "max_rows": rows, "columns": COLUMNS,
                         "budget": {"epsilon": 1e6, "delta": 1e-3}}}
    if spark:
        datasets["spark"] = {"source": {"url": "local[2]", "parquet": str(path)}, "max_rows": rows,
                             "columns": COLUMNS, "budget": {"epsilon": 1e6, "delta": 1e-3}}
    root = Path(tempfile.mkdtemp(prefix="wb-scale-", dir=data_dir))
    proc, url, token, result["startup_s"] = start_node(root, datasets)
    note("node start-up (hash, checks)", seconds=result["startup_s"])
    try:
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=3600)
        with PeakRSS(proc.pid) as first:
            result["first_s"] = release(client, "file", 1.0)
        result["first_rss"], result["first_anon"] = first.peak, first.anon_peak
        result["first_roles"] = first.roles
        note("first release (columnar copy)", seconds=result["first_s"], rss_gib=first.peak / 2 ** 30,
             anon_gib=first.anon_peak / 2 ** 30, **{f"{k}_gib": v / 2 ** 30 for k, v in sorted(first.roles.items())})
        own_before, workers_before = cpu_seconds(proc.pid)
        with PeakRSS(proc.pid) as steady:
            times = [release(client, "file", 1.0 + (i + 1) * 1e-3) for i in range(repeat)]
        own_after, workers_after = cpu_seconds(proc.pid)
        result["node_cpu"] = (own_after - own_before) / repeat  # HTTP, gate, ledger, audit, hand-off
        result["workers_cpu"] = (workers_after - workers_before) / repeat  # the DP computation
        result["node_s"], result["node_rss"], result["node_anon"] = statistics.median(times), steady.peak, \
            steady.anon_peak
        result["parallel"] = steady.parallel
        note("DP group-by mean via the node", seconds=result["node_s"], rss_gib=steady.peak / 2 ** 30,
             anon_gib=steady.anon_peak / 2 ** 30, node_cpu_s=result["node_cpu"], workers_cpu_s=result["workers_cpu"],
             worker_2_threads_share=steady.parallel)
        if spark:
            with PeakRSS(proc.pid) as spark_peak:
                result["spark_first_s"] = release(client, "spark", 1.0)
                result["spark_s"] = statistics.median(release(client, "spark", 1.0 + (i + 1) * 1e-3)
                                                      for i in range(repeat))
            result["spark_rss"], result["spark_anon"] = spark_peak.peak, spark_peak.anon_peak
            note("Spark local[2]", first_s=result["spark_first_s"], seconds=result["spark_s"],
                 rss_gib=spark_peak.peak / 2 ** 30, anon_gib=spark_peak.anon_peak / 2 ** 30)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        shutil.rmtree(root, ignore_errors=True)  # the node's state and columnar copy (~the data's size)
    return result


def print_table(results: list[dict], load_before, load_after) -> None:
    gib = 2 ** 30
    print(f"\nload average before {load_before[0]:.1f}/{load_before[1]:.1f}/{load_before[2]:.1f}, "
          f"after {load_after[0]:.1f}/{load_after[1]:.1f}/{load_after[2]:.1f} (1/5/15 min; 2 cores, shared)")
    print("CPU s: per release, the node process (HTTP, gate, ledger) + its workers (OpenDP), vs raw Polars; "
          "CPU time does not stretch with the machine's load as wall time does")
    print(f"{'rows':>14} {'raw CPU s':>10} {'node CPU s':>11} {'workers CPU s':>14} {'CPU ratio':>10} "
          f"{'2+ threads':>11}")
    for r in results:
        total = r["node_cpu"] + r["workers_cpu"]
        print(f"{r['rows']:>14,} {r['raw_cpu']:>10.2f} {r['node_cpu']:>11.3f} {r['workers_cpu']:>14.2f} "
              f"{total / r['raw_cpu']:>9.2f}x {r['parallel']:>11.0%}")
    print(f"{'rows':>14} {'file GB':>8} {'raw s':>7} {'raw GiB':>8} {'node s':>7} {'node/raw':>9} "
          f"{'node GiB':>9} {'anon GiB':>9} {'start s':>8} {'1st s':>7} {'1st GiB':>8} {'1st anon':>9} "
          f"{'spark 1st s':>12} {'spark s':>8} {'spark GiB':>10}")
    for r in results:
        spark = (f"{r['spark_first_s']:>12.1f} {r['spark_s']:>8.1f} {r['spark_rss'] / gib:>10.2f}"
                 if "spark_s" in r else f"{'-':>12} {'-':>8} {'-':>10}")
        print(f"{r['rows']:>14,} {r['file_gb']:>8.2f} {r['raw_s']:>7.2f} {r['raw_rss'] / gib:>8.2f} "
              f"{r['node_s']:>7.2f} {r['node_s'] / r['raw_s']:>8.2f}x {r['node_rss'] / gib:>9.2f} "
              f"{r['node_anon'] / gib:>9.2f} {r['startup_s']:>8.1f} {r['first_s']:>7.1f} {r['first_rss'] / gib:>8.2f} "
              f"{r['first_anon'] / gib:>9.2f} {spark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, action="append", help="rows (repeatable); default 100M")
    parser.add_argument("--chunk", type=int, default=10_000_000, help="rows generated at a time")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--spark", action="store_true", help="also Spark local[2] on the same file")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--data", type=Path, default=HERE / "data",
                        help="folder for the generated files and the node's state (reused between runs)")
    parser.add_argument("--generate-only", action="store_true", help="write the files and stop")
    args = parser.parse_args()
    sizes = args.rows or [100_000_000]
    data_dir = args.data
    data_dir.mkdir(exist_ok=True)
    files = {rows: make_data(rows, data_dir, args.chunk) for rows in sizes}
    if args.generate_only:
        return
    load_before = os.getloadavg()
    results = [measure(files[rows], rows, args.repeat, args.spark, data_dir) for rows in sizes]
    load_after = os.getloadavg()
    print_table(results, load_before, load_after)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "load": [load_before, load_after]}, indent=1))


if __name__ == "__main__":
    main()
