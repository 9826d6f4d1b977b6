"""The node-local secret with which a node's own SuperNode talks to the node (never leaves the machine)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_HEADER = "X-Workbench-FL-Key"
KEY_FILE = "fl_supernode.key"

__all__ = ["KEY_FILE", "KEY_HEADER", "ensure_key", "read_key"]


def read_key(state_dir: Path) -> str | None:
    try:
        return (Path(state_dir) / KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def ensure_key(state_dir: Path) -> Path:
    """Create the key (mode 0600) if missing; return its path."""
    path = Path(state_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    return path
