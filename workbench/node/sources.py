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


def source_version(source, consent_fingerprint: str = "") -> str:
    """The dataset version of a table: the owner's ``version`` label, where the table is (no credentials) and
    the consent rule's fingerprint (a new opt-out is a new version)."""
    label = json.dumps([source.kind, public_url(source.url), source.table, source.parquet, source.version,
                        source.decimals, *([consent_fingerprint] if consent_fingerprint else [])])
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


#: What a declared column type accepts, in the engine's own type names (normalised to lower case, without
#: parameters): ``string``/``id`` columns are cast to text by the SQL, so any type will do.
ACCEPTED = {
    "int": {"int2", "int4", "int8", "smallint", "integer", "bigint", "tinyint", "byte", "short", "int", "long",
            "int16", "int32", "int64", "int8", "uint8", "uint16", "uint32", "uint64"},
    "float": {"float4", "float8", "real", "double precision", "numeric", "decimal", "float", "double", "float32",
              "float64"},
    "bool": {"bool", "boolean"},
    "text": {"text", "varchar", "character varying", "bpchar", "character", "char", "name", "string", "str",
             "utf8", "large_string", "categorical", "enum"},
}


def type_problems(config, present: dict[str, str]) -> list[str]:
    """What is missing from a table, or of the wrong type, compared with the dataset's declared columns.

    ``present``: column name -> the engine's type name. ``int`` needs an integer type; ``float`` a number;
    ``bool`` a boolean; a ``category`` text (or integers / booleans when its public categories are)."""
    problems, wanted = [], dict(config.columns)
    unit = config.privacy_unit.id_column
    if unit and unit not in wanted:
        wanted[unit] = None
    if config.consent is not None and config.consent.column is not None:
        problems += _consent_problems(config.consent.column, present)
    for name, column in wanted.items():
        if name not in present:
            problems.append(f"column {name!r} is in the config but not in the table")
            continue
        kind = re.sub(r"\(.*", "", present[name].lower()).strip()
        accepted = _accepted(column)
        if accepted is not None and kind not in accepted:
            problems.append(f"column {name!r} is {present[name]}, not {column.type}")
    return problems


def _consent_problems(name: str, present: dict[str, str]) -> list[str]:
    """A consent column must be boolean: the SQL keeps a row only where it is true, and never casts it."""
    if name not in present:
        return [f"consent column {name!r} is not in the table"]
    if re.sub(r"\(.*", "", present[name].lower()).strip() not in ACCEPTED["bool"]:
        return [f"consent column {name!r} is {present[name]}, not boolean"]
    return []


def _accepted(column) -> set[str] | None:
    if column is None or column.type in ("string", "id"):
        return None
    if column.type == "float":
        return ACCEPTED["float"] | ACCEPTED["int"]
    if column.type in ("int", "bool"):
        return ACCEPTED[column.type]
    values = column.categories or []
    if values and all(isinstance(v, bool) for v in values):
        return ACCEPTED["bool"]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return ACCEPTED["int"]
    return ACCEPTED["text"]


def check_columns(name: str, config) -> None:
    """Refuse a table that lacks a declared column or holds one of the wrong type (PostgreSQL: one query that
    reads no rows; Spark: the schema Spark reads, see :func:`spark_columns`), at start-up and in ``node check``."""
    source = config.source
    present = (table_columns(name, source.url, source.table) if source.kind == "postgres"
               else spark_columns(source))
    problems = type_problems(config, present)
    if problems:
        where = source.table or source.parquet
        raise ValueError(f"table {where!r} does not match its config: " + "; ".join(problems))


_SPARK_SCHEMAS: dict[str, tuple[float, dict | str]] = {}
SPARK_SCHEMA_TTL_S = 300.0


def spark_columns(source) -> dict[str, str]:
    """Column name -> Spark type of a Spark source, read by Spark itself in a short-lived child process (the node
    process never holds a JVM). The answer (or the failure) is kept for five minutes, so a broken source does
    not start a JVM per request."""
    import subprocess
    import sys
    import time

    key = json.dumps([source.url, source.table, source.parquet, source.version])
    hit = _SPARK_SCHEMAS.get(key)
    if hit is None or time.monotonic() - hit[0] > SPARK_SCHEMA_TTL_S:
        done = subprocess.run([sys.executable, "-m", "workbench.channels.dp.pushdown.spark", key],
                              capture_output=True, text=True, timeout=900)
        lines = done.stdout.strip().splitlines()
        answer = json.loads(lines[-1]) if done.returncode == 0 and lines else (
            f"Spark could not read the source ({done.stderr.strip().splitlines()[-1:] or 'no message'})")
        hit = _SPARK_SCHEMAS[key] = (time.monotonic(), answer)
    if isinstance(hit[1], str):
        raise ValueError(hit[1])
    return hit[1]


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


def table_columns(dataset: str, url: str, table: str) -> dict[str, str]:
    """Column name -> PostgreSQL type name of ``table`` (reads no rows)."""
    from psycopg import sql

    with connect_postgres(dataset, url) as con:
        cursor = con.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(sql.Identifier(*table.split("."))))
        types = con.adapters.types
        return {d.name: (types.get(d.type_code).name if types.get(d.type_code) else str(d.type_code))
                for d in cursor.description}
