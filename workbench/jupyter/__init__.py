"""Workbench in JupyterLab: the server extension and notebook widgets.

The Jupyter server extension (``handlers.py``) answers the ``workbench-lab``
sidebar under ``<base_url>/workbench/...``. It reads the same connection
configuration as the kernel library (``$WORKBENCH_CONFIG`` or
``~/.config/workbench/config.toml``, plus ``WORKBENCH_URL`` /
``WORKBENCH_TOKEN``) and calls the nodes from the Jupyter server process, so
node tokens never reach the browser.

Enabled by ``etc/jupyter/jupyter_server_config.d/workbench.json`` (installed
with the package) or by hand::

    jupyter server extension enable workbench.jupyter

The widgets (``widgets.py``) are for notebooks: :func:`preview_widget` and
:func:`plot_result`. Importing this package loads neither pandas, the client
library nor ipywidgets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "_jupyter_labextension_paths",
    "_jupyter_server_extension_points",
    "_load_jupyter_server_extension",
]

_LABEXTENSION_NAME = "workbench-lab"
_HERE = Path(__file__).resolve().parent


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the built front end lives (for ``jupyter labextension develop``).

    A wheel installs it under ``share/jupyter/labextensions/workbench-lab``
    instead; JupyterLab finds it there without this hook.
    """
    return [{"src": str(_HERE.parent / "labextension"), "dest": _LABEXTENSION_NAME}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "workbench.jupyter"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Register the ``/workbench/...`` handlers on the Jupyter server."""
    from .handlers import setup_handlers

    setup_handlers(server_app.web_app, log=server_app.log)
    server_app.log.info("Workbench server extension loaded: %s/workbench/", server_app.base_url.rstrip("/"))


# Older notebook-server name for the same hook.
load_jupyter_server_extension = _load_jupyter_server_extension
