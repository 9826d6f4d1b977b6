"""Run a pushed-down aggregation in PostgreSQL (psycopg), in a read-only transaction."""

from __future__ import annotations

import psycopg
from psycopg import sql

from ...errors import ComputationFailed
from .sources import with_credentials


def _connect(dataset: str, url: str) -> psycopg.Connection:
    try:
        return psycopg.connect(with_credentials(dataset, url), connect_timeout=10)
    except psycopg.OperationalError:
        # The message may name the host or user: the owner sees it in the node's log, the analyst does not.
        raise ComputationFailed(f"Dataset '{dataset}': its PostgreSQL server cannot be reached.",
                                code="dataset_unavailable") from None


def columns(dataset: str, url: str, table: str) -> set[str]:
    """The column names of ``table`` (reads no rows)."""
    with _connect(dataset, url) as con:
        cursor = con.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(sql.Identifier(*table.split("."))))
        return {d.name for d in cursor.description}


def fetch(dataset: str, url: str, query: str) -> list[tuple]:
    """The per-group rows of one aggregation (the SQL comes from :mod:`workbench.dp.pushdown.compile`)."""
    with _connect(dataset, url) as con:
        con.read_only = True
        with con.transaction():
            return con.execute(query).fetchall()
