"""The node's release policy, the same for every channel: loss bounds, the budget pre-check, refusals.

Every channel (DP queries, synthesis previews and jobs, HE and SMPC
contributions, FL jobs) asks this module before it computes or reserves:

* :func:`check_loss`: one release may cost at most the node's
  ``max_epsilon_per_release`` and at least :data:`MIN_EPSILON` (and a delta of
  0 or at least :data:`MIN_DELTA`). Vanishing losses are refused because they
  make noise scales overflow (``1/epsilon``) or send calibration searches into
  seconds of free worker time; a refusal costs nothing.
* :func:`precheck_budget`: a release that could not be paid (the grant's or
  the dataset's lifetime budget) is refused *before* anything runs, by the
  ledger's own test (:func:`workbench.node.ledger.check_fits`), and the refusal
  is written to the audit log. The ledger's reservation stays the authority;
  this check only spares the node work that would be refused anyway.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import InvalidQuery, WorkbenchError
from .auth import Principal
from .catalog import DatasetEntry
from .ledger import check_fits, choose_grant
from .store import DatasetBudget

if TYPE_CHECKING:
    from .service import NodeService

__all__ = ["MIN_DELTA", "MIN_EPSILON", "check_loss", "precheck_budget"]

#: The smallest epsilon a release may cost (below it noise scales overflow or calibration never ends).
MIN_EPSILON = 1e-6
#: The smallest non-zero delta a release may ask for.
MIN_DELTA = 1e-20


def check_loss(service: NodeService, epsilon: float | None, delta: float = 0.0, what: str = "one release") -> None:
    """Refuse (``bad_epsilon``) a privacy loss outside the node's floor and per-release cap."""
    if epsilon is None:
        return
    limit = service.config.node.max_epsilon_per_release
    if not math.isfinite(epsilon) or epsilon > limit:
        raise InvalidQuery(f"This node caps {what} at epsilon={limit:g}.", code="bad_epsilon")
    if epsilon < MIN_EPSILON or not math.isfinite(delta) or delta < 0 or 0 < delta < MIN_DELTA:
        raise InvalidQuery(f"epsilon must be at least {MIN_EPSILON:g} and delta 0 or at least {MIN_DELTA:g}.",
                           code="bad_epsilon")


def precheck_budget(service: NodeService, caller: Principal, entry: DatasetEntry, grant_id: int | None,
                    epsilon: float, delta: float, *, channel: str, kind: str, what: str = "This release") -> int:
    """The grant a release would spend, or an audited refusal if it or the dataset cannot pay for it now."""
    try:
        with service.store.transaction("read") as session:
            grant = choose_grant(session, caller.name, entry.name, grant_id)
            check_fits(grant, session.get(DatasetBudget, entry.name), entry.name, epsilon, delta, what)
            return grant.id
    except WorkbenchError as exc:
        service.gate.refuse(caller, entry.name, exc, channel=channel, kind=kind, epsilon=epsilon, delta=delta)
        raise
