"""The synthetic-data channel: DP synthesizers (OpenDP ``dp.mbi``), owner-approved SDV, DP mocks.

Node half: :mod:`.node_routes` (endpoints), :mod:`.jobs` (background fits in
worker processes), :mod:`.fit` (worker side), :mod:`.mocks`, :mod:`.sdv_real`.
Client half: :mod:`.client` (``ds.synthesize(...)``, ``ds.mock()``),
:mod:`.report` (fidelity report), :mod:`.sdv_support` (SDV metadata from the
public schema). Shared: :mod:`.spec` (wire models), :mod:`.domain` (public
keys and bins).
"""

from .spec import MockInfo, SDVSpec, SynthSpec

__all__ = ["MockInfo", "SDVSpec", "SynthSpec"]
