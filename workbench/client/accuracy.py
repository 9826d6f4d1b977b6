"""Accuracy first: the least epsilon at which a question's stated 95% error is at most a target.

Uses free previews only. Laplace half-widths scale as 1/epsilon, so one
preview at epsilon = 1 lands near the answer; integer noise has half-widths
that move in steps, so a short bisection (about six previews) finds the
least epsilon to within 0.2%. The error aimed at is the widest half-width the
preview states (a count's or a sum's, in their own units; a mean's parts are
its noisy sum and count); statistics OpenDP gives no closed form for
(quantiles) are not aimed at.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..errors import InvalidQuery

if TYPE_CHECKING:
    from .dataset import Query
    from .results import Preview

STEPS = 8
TOLERANCE = 0.002


def _widest(preview: "Preview") -> float | None:
    errors = [a.accuracy for a in preview.body.accuracy if a.accuracy is not None]
    return max(errors) if errors else None


def least_epsilon(query: "Query", accuracy: Any, delta: float) -> "Preview":
    """The preview at the least epsilon (to 0.2%) whose widest stated half-width is <= ``accuracy``."""
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not math.isfinite(accuracy) \
            or accuracy <= 0:
        raise InvalidQuery(f"accuracy must be a positive number; got {accuracy!r}.", code="bad_accuracy")

    def at(epsilon: float) -> tuple["Preview", float]:
        preview = query._preview(*query._checked(epsilon, delta))
        widest = _widest(preview)
        if widest is None:
            raise InvalidQuery("This question states no closed-form error to aim at (quantiles): choose epsilon.",
                               code="bad_accuracy")
        return preview, widest

    _, widest = at(1.0)
    high, found = widest / accuracy, None  # 1/epsilon scaling: near the answer at once
    for _ in range(STEPS):
        preview, widest = at(high)
        if widest <= accuracy:
            found = preview
            break
        high *= (widest / accuracy) * 1.01
    if found is None:
        raise InvalidQuery(f"No epsilon found giving +-{accuracy:g}; the last tried ({high:.4g}) gives "
                           f"+-{widest:.4g}.", code="bad_accuracy")
    low = high * 0.9  # integer noise rounds: bisect the step down to the least epsilon that reaches it
    while high - low > TOLERANCE * high:
        middle = (low + high) / 2
        preview, widest = at(middle)
        if widest <= accuracy:
            high, found = middle, preview
        else:
            low = middle
    return found
