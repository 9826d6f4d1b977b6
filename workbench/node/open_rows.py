"""The rows of an open-tier dataset, read and encoded in a worker process (task ``node.open_rows``).

Open data carries no privacy guarantee to protect: its rows are public under
their licence. What this module protects is the node's availability. Reading
up to a million rows and encoding them as JSON took seconds of the node
process's own CPU (and its interpreter lock), so one analyst looping the
download slowed every other request. The worker (in the node's niced pool for
free work) writes the finished JSON body to a private file under the state
folder; the node only streams that file back and deletes it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ..protocol import RowsResponse, Table
from .consent import consenting
from .data import check_stamp, raw_scan

__all__ = ["read"]


def read(task: dict[str, Any]) -> dict[str, Any]:
    """Worker side: the consenting rows as stored (no casts), ``limit`` of them, as a ``RowsResponse`` JSON file.

    Returns ``{"file": path, "rows": n}``; the caller deletes the file once sent."""
    check_stamp(task["path"], task.get("stamp"))  # the rows of the version the response names
    frame = (consenting(raw_scan(task["path"], task["format"]), task.get("consent"))
             .select(task["columns"]).head(task["limit"]).collect())
    body = RowsResponse(dataset=task["dataset"], licence=task["licence"], dataset_version=task["version"],
                        table=Table(columns=frame.columns, data=[list(r) for r in frame.iter_rows()]))
    os.makedirs(task["folder"], mode=0o700, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=task["folder"], suffix=".json", delete=False,
                                     encoding="utf-8") as out:
        out.write(body.model_dump_json())
    return {"file": out.name, "rows": frame.height}
