"""The node's state folder is the owner's alone: folder 0700, SQLite database 0600, whatever the umask.

The database holds every released answer and held, unapproved non-DP outputs;
the folder holds the signing key and the columnar copies of private data.
Created with those modes; an existing folder or database that is wider is
reported in the log at start (the owner decides; the node does not silently
change modes on files it did not create).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def secure_state(state_dir: Path, database: Path | None) -> list[str]:
    """Create the state folder (0700) and the SQLite file (0600) if missing; warn about wider modes.

    ``database`` is None for a non-file database (PostgreSQL). Returns the warnings it logged.
    """
    if not state_dir.exists():
        state_dir.mkdir(parents=True, mode=FOLDER_MODE, exist_ok=True)
        os.chmod(state_dir, FOLDER_MODE)  # mkdir's mode is filtered by the umask
    if database is not None and not database.exists():
        database.parent.mkdir(parents=True, mode=FOLDER_MODE, exist_ok=True)
        fd = os.open(database, os.O_WRONLY | os.O_CREAT, FILE_MODE)
        os.close(fd)
        os.chmod(database, FILE_MODE)
    warnings = []
    for path, allowed in [(state_dir, FOLDER_MODE)] + ([(database, FILE_MODE)] if database is not None else []):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & ~allowed:
            warnings.append(f"{path} has mode {mode:04o}; it holds released answers and private state: "
                            f"run 'chmod {allowed:o} {path}'")
    for warning in warnings:
        log.warning(warning)
    return warnings


def sqlite_path(database_url: str) -> Path | None:
    """The file of a ``sqlite:///...`` URL, or None."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix):
        return None
    rest = database_url[len(prefix):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None
