"""A throwaway PostgreSQL cluster from Debian's packages, for the test suite.

``python -m tests.pg start DIR`` prints a SQLAlchemy URL (and leaves the server
running with its data in DIR); ``python -m tests.pg stop DIR`` stops it.
``scripts/test`` uses these; the ``pg_url`` fixture reuses that server
(``WORKBENCH_TEST_POSTGRES_URL``) or starts its own.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def available() -> bool:
    return _bin("initdb") is not None and _bin("pg_ctl") is not None


def _as_db_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the 'postgres' system user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data_dir: Path) -> str:
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(data_dir, pw.pw_uid, pw.pw_gid)
    db = data_dir / "db"
    subprocess.run(_as_db_user([_bin("initdb"), "-D", str(db), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    port = _free_port()
    opts = f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off"
    subprocess.run(_as_db_user([_bin("pg_ctl"), "-D", str(db), "-o", opts, "-l", str(data_dir / "log"), "-w",
                                "start"]), check=True, capture_output=True)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    import psycopg

    for _ in range(100):
        try:
            psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres").close()
            return url
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise RuntimeError("PostgreSQL did not accept connections")


def stop(data_dir: Path) -> None:
    db = Path(data_dir) / "db"
    if db.exists():
        subprocess.run(_as_db_user([_bin("pg_ctl"), "-D", str(db), "-m", "immediate", "stop"]), capture_output=True)


def fresh_database(url: str, name: str) -> str:
    """Create an empty database ``name`` on the server of ``url``; return its URL."""
    import psycopg

    base = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(base, autocommit=True) as con:
        con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        con.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


if __name__ == "__main__":
    action, folder = sys.argv[1], Path(sys.argv[2])
    if action == "start":
        print(start(folder))
    else:
        stop(folder)
