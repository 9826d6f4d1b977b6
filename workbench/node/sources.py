"""Where a table source's settings, credentials and the node's bounding secret come from (node side).

Credentials never sit in the config file or the catalogue: the node reads
``WORKBENCH_SOURCE_<NAME>_USER`` and ``WORKBENCH_SOURCE_<NAME>_PASSWORD``
from its environment, ``<NAME>`` being the dataset's name in upper case with
every character other than a letter or digit replaced by ``_`` (dataset
``claims-2024`` -> ``WORKBENCH_SOURCE_CLAIMS_2024_PASSWORD``). libpq's own
``PGPASSWORD`` / ``~/.pgpass`` work as well. The worker processes inherit the
environment; the task they are sent carries no secret but the bounding key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import ComputationFailed

if TYPE_CHECKING:
    import psycopg

KEY_FILE = "pushdown.key"


def env_prefix(dataset: str) -> str:
    return "WORKBENCH_SOURCE_" + re.sub(r"[^A-Za-z0-9]", "_", dataset).upper()


def with_credentials(dataset: str, url: str) -> str:
    """The PostgreSQL url with the user and password from the environment (if set) and psycopg's scheme."""
    parts = urlsplit(url)
    user = os.environ.get(env_prefix(dataset) + "_USER") or parts.username
    password = os.environ.get(env_prefix(dataset) + "_PASSWORD")
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    if user:
        netloc = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@" + netloc
    return urlunsplit(("postgresql", netloc, parts.path, parts.query, ""))


def public_url(url: str) -> str:
    """The url without user or password (what may go into a version label or a log line)."""
    parts = urlsplit(url)
    if not parts.netloc:
        return url
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def source_version(source) -> str:
    """The dataset version of a table: the owner's ``version`` label and where the table is (no credentials)."""
    label = json.dumps([source.kind, public_url(source.url), source.table, source.parquet, source.version,
                        source.decimals])
    return "table:" + hashlib.sha256(label.encode()).hexdigest()[:32]


def node_secret(state_dir: Path) -> str:
    """The node's key for ranking rows in contribution bounding (created once, 0600, in the state folder)."""
    path = Path(state_dir) / KEY_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_text().strip()


def pushdown_task(entry, state_dir: Path) -> dict:
    """The plain-data description of a table source a worker needs (no credentials)."""
    source = entry.source
    return {"dataset": entry.name, "kind": source.kind, "url": source.url, "table": source.table,
            "parquet": source.parquet, "decimals": source.decimals, "version": source.version,
            "secret": node_secret(state_dir)}


def check_columns(name: str, config) -> None:
    """Refuse a PostgreSQL table that lacks a declared column (Spark tables are checked by their first query)."""
    source = config.source
    if source.kind != "postgres":
        return
    present = table_columns(name, source.url, source.table)
    missing = [c for c in config.columns if c not in present]
    if config.privacy_unit.id_column and config.privacy_unit.id_column not in present:
        missing.append(config.privacy_unit.id_column)
    if missing:
        raise ValueError(f"columns {missing} are in the config but not in table {source.table!r}")


def connect_postgres(dataset: str, url: str) -> "psycopg.Connection":
    """A connection to a dataset's PostgreSQL server, credentials from the environment; unreachable is
    ``dataset_unavailable`` (the driver's message, which may name host or user, stays in the node's log)."""
    import psycopg

    try:
        return psycopg.connect(with_credentials(dataset, url), connect_timeout=10)
    except psycopg.OperationalError:
        # The message may name the host or user: the owner sees it in the node's log, the analyst does not.
        raise ComputationFailed(f"Dataset '{dataset}': its PostgreSQL server cannot be reached.",
                                code="dataset_unavailable") from None


def table_columns(dataset: str, url: str, table: str) -> set[str]:
    """The column names of ``table`` (reads no rows)."""
    from psycopg import sql

    with connect_postgres(dataset, url) as con:
        cursor = con.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(sql.Identifier(*table.split("."))))
        return {d.name for d in cursor.description}
