"""Faster, rounding-safe noise calibration for OpenDP's ``dp.mbi`` synthesizers (worker processes only).

OpenDP finds each noise scale by binary search (~60 privacy-map evaluations,
each rebuilding a Polars measurement): 30 s of a 35 s MST fit in our trial.
Under pure DP the privacy map is linear in 1/scale (quadratic under zCDP), so
two evaluations give the scale; OpenDP then evaluates the map at that scale
and we keep it only if it is within the target (otherwise OpenDP's own
search runs). The target is 1e-9 (relative) below the budget, which also
avoids a float rounding bug in OpenDP 0.16 where eight selection steps of
``prior(x / 8)`` summed to more than ``x`` and MST failed with "insufficient
budget".

Privacy is unchanged: every measurement is still built and its privacy map
evaluated by OpenDP, and OpenDP's compositors refuse any query over budget.
The patch is installed only inside the worker process that fits a model.

Pinned to OpenDP 0.16.0: the names patched (``binary_search_param``,
``binary_search_chain`` and ``prior`` in ``opendp.extras.mbi._table``, ``_mst``,
``_fixed``, ``_aim``) are private to OpenDP; tests/channels/dp/test_opendp_pin.py fails if an
upgrade moves them (OpenDP's public ``mbi`` API has no calibration hook).
"""

from __future__ import annotations

import math

import numpy as np

_INSTALLED = False
SLACK = 1e-9


def _fast_param(original):
    def search(make_chain, d_in, d_out, bounds=(None, None), T=None):
        if T in (float, None) and isinstance(d_out, float) and d_out > 0:
            try:
                target = float(d_out) * (1 - SLACK)
                d1 = float(make_chain(1.0).map(d_in))
                d2 = float(make_chain(2.0).map(d_in))
                if d1 > 0 and d2 > 0:
                    power = round(math.log2(d1 / d2))
                    if power in (1, 2):
                        scale = (d1 / target) ** (1.0 / power)
                        for _ in range(50):
                            if float(make_chain(scale).map(d_in)) <= target:
                                return scale
                            scale *= 1 + 1e-9
            except Exception:  # noqa: BLE001 - anything unexpected: OpenDP's own search decides
                pass
        return original(make_chain, d_in, d_out, bounds, T)

    return search


def _safe_prior(x):
    """The next float below ``x``, minus a relative 1e-9: sums of split budgets stay under the total."""
    return float(np.nextafter(float(x) * (1 - SLACK), -np.inf))


def install() -> None:
    """Patch the calibration helpers the ``dp.mbi`` modules imported (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    import opendp.extras.mbi._aim as aim
    import opendp.extras.mbi._fixed as fixed
    import opendp.extras.mbi._mst as mst
    import opendp.extras.mbi._table as table
    import opendp.mod as mod

    search = _fast_param(mod.binary_search_param)

    def chain(make_chain, d_in, d_out, bounds=(None, None), T=None):
        return make_chain(search(make_chain, d_in, d_out, bounds, T))

    table.binary_search_param = search
    for module in (mst, fixed, aim):
        module.binary_search_chain = chain
    for module in (mst, aim, table):
        module.prior = _safe_prior
    _INSTALLED = True
