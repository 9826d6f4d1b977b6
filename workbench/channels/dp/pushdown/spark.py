"""Run a pushed-down aggregation in Spark (pyspark), one session per worker process.

The source's ``url`` is the Spark master: ``local[2]`` runs Spark inside the
worker's own JVM (tests, one machine); ``spark://host:7077`` (or ``yarn``,
``k8s://...``) sends the work to a cluster, whose executors read the table.
A ``parquet`` source is registered as a temporary view named after the
dataset (its file list is read again when the owner's ``version`` label
changes); a ``table`` source is read from the session's catalog.
"""

from __future__ import annotations

import re
import threading

from workbench.errors import ComputationFailed

_sessions: dict[str, object] = {}
_views: set[tuple[str, str]] = set()
_lock = threading.Lock()


def session(master: str):
    """The worker's Spark session for ``master`` (started on first use: ~5 s, then reused)."""
    with _lock:
        if master not in _sessions:
            from pyspark.sql import SparkSession

            builder = (SparkSession.builder.master(master).appName("workbench-node")
                       .config("spark.ui.enabled", "false")
                       .config("spark.sql.shuffle.partitions", "8")
                       .config("spark.sql.ansi.enabled", "true"))
            _sessions[master] = builder.getOrCreate()
        return _sessions[master]


def view_name(dataset: str) -> str:
    return "wb_" + re.sub(r"[^A-Za-z0-9_]", "_", dataset)


def fetch(source: dict, query: str) -> list[tuple]:
    """The per-group rows of one aggregation (the SQL comes from :mod:`workbench.channels.dp.pushdown.compile`)."""
    try:
        spark = session(source["url"])
        if source.get("parquet"):
            key = (source["dataset"], source["parquet"], source.get("version"))  # a new label re-lists the files
            if key not in _views:
                spark.read.parquet(source["parquet"]).createOrReplaceTempView(view_name(source["dataset"]))
                _views.add(key)
        return [tuple(row) for row in spark.sql(query).collect()]
    except ImportError:
        raise ComputationFailed("pyspark is not installed on this node (pip install pyspark; Java 17).",
                                code="dataset_unavailable") from None


def schema(url: str, table: str | None, parquet: str | None) -> dict[str, str]:
    """Column name -> Spark SQL type (``bigint``, ``double``, ``string``, ...) of a table or Parquet source."""
    spark = session(url)
    frame = spark.read.parquet(parquet) if parquet else spark.table(table)
    return {field.name: field.dataType.simpleString() for field in frame.schema.fields}


if __name__ == "__main__":  # the node's start-up check (workbench.node.sources.spark_columns), in its own process
    import json
    import sys

    _url, _table, _parquet, _version = json.loads(sys.argv[1])
    _columns = schema(_url, _table, _parquet)
    print(json.dumps(_columns), flush=True)
    session(_url).stop()
