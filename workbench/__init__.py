"""Workbench: remote handles to private datasets; only privacy-safe answers come back.

>>> import workbench as wb
>>> node = wb.connect()            # the embedded demo node  # doctest: +SKIP
>>> node.dataset("patients").count().release(epsilon=0.1)  # doctest: +SKIP
"""

from ._version import __version__
from .client import GroupBy, Node, Preview, Query, RemoteDataset, connect
from .client.expressions import Expr, col, count, lit, mean, median, quantile, std, var
from .client.expressions import sum  # noqa: A004 - the statistic wb.sum(column)
from .client.directory import from_directory
from .client.federation import FederatedDataset, Federation, federation
from .client import connection as _connection
from .client.login import login
from .demo.federation import demo_federation
from .demo.embedded import connect_embedded as _connect_embedded
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
    RateLimited,
    WorkbenchError,
)

federation.from_directory = from_directory  # wb.federation.from_directory(url, consortium_key)

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

# Each channel's notebook side registers its handle methods (workbench.client.handles) on import.
from .channels.dp import federated as _federated_dp  # noqa: E402,F401
from .channels.jobs import kernel as _jobs_kernel  # noqa: E402,F401
from .channels.fl import kernel as _fl_kernel  # noqa: E402,F401
from .channels.secagg import kernel as _he_kernel  # noqa: E402,F401
from .channels.secagg import he_evaluate as _he_evaluate  # noqa: E402,F401
from .channels.secagg import smpc_kernel as _smpc_kernel  # noqa: E402,F401
from .channels.synth import kernel as _synth_kernel  # noqa: E402,F401

_connection.embedded_node = _connect_embedded  # connect() with no address: the in-process demo node
