"""Run a pushed-down aggregation in PostgreSQL (psycopg), in a read-only transaction."""

from __future__ import annotations

from workbench.node.sources import connect_postgres


def fetch(dataset: str, url: str, query: str) -> list[tuple]:
    """The per-group rows of one aggregation (the SQL comes from :mod:`workbench.channels.dp.pushdown.compile`)."""
    with connect_postgres(dataset, url) as con:
        con.read_only = True
        with con.transaction():
            return con.execute(query).fetchall()
