"""Workbench: remote handles to private datasets; only privacy-safe answers come back.

>>> import workbench as wb
>>> node = wb.connect()            # the embedded demo node  # doctest: +SKIP
>>> node.dataset("patients").count().release(epsilon=0.1)  # doctest: +SKIP
"""

from ._version import __version__
from .client import GroupBy, Node, Preview, Query, RemoteDataset, connect
from .client.federation import FederatedDataset, Federation, federation
from .client.login import login
from .demo.federation import demo_federation
from .errors import (
    BudgetExceeded,
    ComputationFailed,
    ConnectionFailed,
    InvalidQuery,
    NotAuthenticated,
    NotAuthorized,
    NotFound,
    NotSupported,
    PayloadTooLarge,
    PrivacyError,
    ProtocolMismatch,
    WorkbenchError,
)

__all__ = [
    "BudgetExceeded",
    "ComputationFailed",
    "ConnectionFailed",
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
    "RemoteDataset",
    "WorkbenchError",
    "__version__",
    "connect",
    "demo_federation",
    "federation",
    "login",
]
