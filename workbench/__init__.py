"""Workbench: remote handles to private datasets; only privacy-safe answers come back.

>>> import workbench as wb
>>> node = wb.connect()            # the embedded demo node  # doctest: +SKIP
>>> node.dataset("patients").count().release(epsilon=0.1)  # doctest: +SKIP
"""

from __future__ import annotations

import os as _os

from ._version import __version__

#: Set in the node's worker processes (:mod:`workbench.node.worker`): they run one registered task each and
#: need none of the analyst's side (the client, pandas, httpx, every channel's kernel: ~1 s of CPU of a fresh
#: process's start). There the public names below are imported on first use instead (``__getattr__``).
LEAN_IMPORT_ENV = "WORKBENCH_LEAN_IMPORT"


def _load_face() -> None:
    """Import the analyst's side into the package namespace and register every channel's handle methods."""
    from . import _face

    globals().update({name: getattr(_face, name) for name in __all__})


def __getattr__(name: str):
    if name in __all__:
        _load_face()
        return globals()[name]
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = [
    "BudgetExceeded",
    "ComputationFailed",
    "ConnectionFailed",
    "Expr",
    "FederatedDataset",
    "Federation",
    "GroupBy",
    "InvalidQuery",
    "Node",
    "NotAuthenticated",
    "NotAuthorized",
    "NotFound",
    "NotSupported",
    "PayloadTooLarge",
    "Preview",
    "PrivacyError",
    "ProtocolMismatch",
    "Query",
    "RateLimited",
    "RemoteDataset",
    "WorkbenchError",
    "__version__",
    "col",
    "connect",
    "count",
    "demo_federation",
    "federation",
    "lit",
    "login",
    "mean",
    "median",
    "quantile",
    "std",
    "sum",
    "var",
]

if not _os.environ.get(LEAN_IMPORT_ENV):
    _load_face()
