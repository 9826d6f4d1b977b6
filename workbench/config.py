"""Where the kernel library (and the JupyterLab server extension) find nodes and tokens.

Tokens never go on command lines. Lookup order for a node's token:
``token=`` argument, then ``WORKBENCH_TOKEN``, then the config file's entry
whose ``url`` matches (``token`` or ``token_file``). The config file is
``$WORKBENCH_CONFIG`` or ``$XDG_CONFIG_HOME/workbench/config.toml``
(default ``~/.config/workbench/config.toml``)::

    [nodes.hospital-a]
    url = "http://127.0.0.1:8765"
    token_file = "~/.config/workbench/hospital-a.token"
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEMO_NODES_ENV", "Connection", "config_path", "data_home", "demo_node_urls", "load_connections",
           "save_connection", "token_for"]

#: Set by ``workbench demo`` (and Binder's ``start``) for JupyterLab and its kernels: the demo nodes' URLs,
#: comma-separated. ``wb.connect()`` then means the first demo node and ``wb.demo_federation()`` all of them,
#: so the notebooks use the nodes the panel shows.
DEMO_NODES_ENV = "WORKBENCH_DEMO_NODES"


@dataclass(frozen=True)
class Connection:
    name: str
    url: str
    token: str | None = None


def config_path() -> Path:
    explicit = os.environ.get("WORKBENCH_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "workbench" / "config.toml"


def data_home() -> Path:
    """Where the embedded node keeps its state (``$WORKBENCH_HOME`` or ``~/.local/share/workbench``)."""
    explicit = os.environ.get("WORKBENCH_HOME")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "workbench"


def demo_node_urls() -> list[str]:
    """The running ``workbench demo`` nodes named by ``$WORKBENCH_DEMO_NODES`` (empty outside a demo)."""
    return [_normal(u.strip()) for u in os.environ.get(DEMO_NODES_ENV, "").split(",") if u.strip()]


def _normal(url: str) -> str:
    return url.rstrip("/")


def load_connections() -> list[Connection]:
    """Every node named in the config file, plus ``WORKBENCH_URL``/``WORKBENCH_TOKEN`` if set."""
    out: list[Connection] = []
    path = config_path()
    if path.exists():
        raw = tomllib.loads(path.read_text())
        for name, entry in (raw.get("nodes") or {}).items():
            token = entry.get("token")
            if token is None and entry.get("token_file"):
                token_path = Path(entry["token_file"]).expanduser()
                if not token_path.is_absolute():
                    token_path = path.parent / token_path
                token = token_path.read_text().strip() if token_path.exists() else None
            out.append(Connection(name=name, url=_normal(entry["url"]), token=token))
    env_url = os.environ.get("WORKBENCH_URL")
    if env_url and all(c.url != _normal(env_url) for c in out):
        out.append(Connection(name="default", url=_normal(env_url), token=os.environ.get("WORKBENCH_TOKEN")))
    return out


def token_for(url: str, token: str | None = None) -> str | None:
    if token:
        return token
    if os.environ.get("WORKBENCH_TOKEN"):
        return os.environ["WORKBENCH_TOKEN"]
    for conn in load_connections():
        if conn.url == _normal(url) and conn.token:
            return conn.token
    return None


def save_connection(name: str, url: str, token: str) -> Path:
    """Store a node and its token (in a 0600 file beside the config) for later ``connect(url)`` calls."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    token_file = path.parent / f"{name}.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    raw = tomllib.loads(path.read_text()) if path.exists() else {}
    nodes = raw.setdefault("nodes", {})
    nodes[name] = {"url": _normal(url), "token_file": str(token_file)}
    lines = []
    for node_name, entry in nodes.items():
        lines.append(f'[nodes."{node_name}"]')
        lines.extend(f'{k} = "{v}"' for k, v in entry.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def embedded_root() -> Path:
    """This environment's embedded node folder: ``$WORKBENCH_HOME/embedded/<env name>-<hash of sys.prefix>``."""
    prefix = str(Path(sys.prefix).resolve())
    name = Path(prefix).name.strip(".") or "python"
    return data_home() / "embedded" / f"{name}-{hashlib.sha256(prefix.encode()).hexdigest()[:8]}"


def panel_connections() -> list[dict]:
    """The embedded nodes that live kernels serve to the panel (``name``, ``url``, ``token``)."""
    folder = embedded_root() / "panel"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            os.kill(int(entry["pid"]), 0)  # a kernel that died without cleaning up is not listed
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(entry)
    return out
