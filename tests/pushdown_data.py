"""One small dataset served three ways: a Parquet file, a PostgreSQL table and a Parquet folder read by Spark."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import httpx
import polars as pl
import tomli_w

REGIONS = ["north", "south", "east", "west"]
COLUMNS = {
    "pid": {"type": "id"},
    "region": {"type": "category", "categories": REGIONS},
    "sex": {"type": "category", "categories": ["F", "M"]},
    "age": {"type": "int", "bounds": [0, 100]},
    "cost": {"type": "float", "bounds": [0.0, 1000.0]},
}
UNIT = {"id_column": "pid", "max_contributions": 2}
#: The same columns with ``region`` declared without its category list: a private key set.
PRIVATE_REGION = {**COLUMNS, "region": {"type": "category"}}


def make_frame(people: int = 10_000, seed: int = 3) -> pl.DataFrame:
    """``people`` identifiers with one or two rows each; a few null costs."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(1, 3, people)
    pid = np.repeat(np.arange(people), rows)
    n = len(pid)
    cost = rng.gamma(2.0, 120.0, n).clip(0, 1000)
    frame = pl.DataFrame({
        "pid": [f"p{i:06d}" for i in pid],
        "region": rng.choice(REGIONS, n, p=[0.4, 0.3, 0.2, 0.1]),
        "sex": rng.choice(["F", "M"], n),
        "age": rng.integers(0, 101, n),
        "cost": cost,
    })
    return frame.with_columns(pl.when(pl.int_range(pl.len()) % 97 == 0).then(None).otherwise(pl.col("cost"))
                              .alias("cost"))


def load_postgres(url: str, table: str, frame: pl.DataFrame) -> None:
    """Create ``table`` on the server of ``url`` (a SQLAlchemy-style psycopg url) and copy ``frame`` into it."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        con.execute(f'DROP TABLE IF EXISTS "{table}"')
        con.execute(f'CREATE TABLE "{table}" (pid text, region text, sex text, age bigint, cost double precision)')
        with con.cursor().copy(f'COPY "{table}" (pid, region, sex, age, cost) FROM STDIN') as copy:
            for row in frame.iter_rows():
                copy.write_row(row)


def write_config(root: Path, datasets: dict[str, dict], port: int, workers: int = 2) -> Path:
    """A node config serving ``datasets`` (name -> ``{"path": ...}`` or ``{"source": {...}}``, and any other
    dataset setting to override, e.g. ``columns``)."""
    config = {"node": {"name": "scale-test", "state_dir": "state", "port": port, "workers": workers,
                       "query_timeout_s": 300},
              "datasets": {name: {"tier": "private", "max_rows": 1_000_000, "privacy_unit": UNIT,
                                  "budget": {"epsilon": 1000.0, "delta": 1e-3}, "columns": COLUMNS, **where}
                           for name, where in datasets.items()}}
    path = root / "node.toml"
    path.write_text(tomli_w.dumps(config))
    return path


@contextmanager
def analyst_on_node(config: Path, datasets, purpose: str, *, epsilon: float = 1000.0,
                    timeout_s: float = 300) -> Iterator[httpx.Client]:
    """Provision analyst ``ana`` with a grant on each of ``datasets``, start the node of ``config`` and yield an
    HTTP client with ana's token; the node is stopped (by process group) afterwards."""
    from tests.conftest import start_node
    from workbench.node import admin
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    service = NodeService(NodeConfig.load(config), start_workers=False)
    try:
        token = admin.add_user(service.store, service.authority, "ana", "analyst", actor="test")
        for name in datasets:
            admin.add_grant(service.store, "ana", name, purpose, epsilon=epsilon, delta=1e-3, actor="test")
    finally:
        service.close()
    process = start_node(config)
    port = int(config.read_text().split("port = ")[1].split()[0])
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", headers={"Authorization": f"Bearer {token}"},
                          timeout=timeout_s)
    try:
        yield client
    finally:
        client.close()
        os.killpg(process.pid, 15)
        process.wait(timeout=60)
