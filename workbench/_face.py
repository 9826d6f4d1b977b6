"""The analyst's side of the package root (``import workbench as wb``): the client, its expressions and
errors, and every channel's notebook side, which registers its handle methods
(:mod:`workbench.client.handles`) on import. :mod:`workbench` imports this module unless the process is a
node worker (see ``workbench.LEAN_IMPORT_ENV``)."""

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

# Each channel's notebook side registers its handle methods (workbench.client.handles) on import.
from .channels.dp import federated as _federated_dp  # noqa: E402,F401
from .channels.jobs import kernel as _jobs_kernel  # noqa: E402,F401
from .channels.fl import kernel as _fl_kernel  # noqa: E402,F401
from .channels.secagg import kernel as _he_kernel  # noqa: E402,F401
from .channels.secagg import he_evaluate as _he_evaluate  # noqa: E402,F401
from .channels.secagg import smpc_kernel as _smpc_kernel  # noqa: E402,F401
from .channels.synth import kernel as _synth_kernel  # noqa: E402,F401

_connection.embedded_node = _connect_embedded  # connect() with no address: the in-process demo node
