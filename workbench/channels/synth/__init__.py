"""The synthetic-data channel: DP synthesizers (OpenDP ``dp.mbi``), owner-approved SDV, DP mocks.

Node half: :mod:`workbench.channels.synth.routes` (endpoints), :mod:`workbench.channels.synth.jobs` (background fits in
worker processes), :mod:`workbench.channels.synth.worker` (worker side), :mod:`workbench.channels.synth.mocks`, :mod:`workbench.channels.synth.sdv_real`.
Client half: :mod:`workbench.channels.synth.kernel` (``ds.synthesize(...)``, ``ds.mock()``),
:mod:`workbench.channels.synth.report` (fidelity report), :mod:`workbench.channels.synth.sdv_support` (SDV metadata from the
public schema). Shared: :mod:`workbench.channels.synth.wire` (wire models), :mod:`workbench.channels.synth.domain` (public
keys and bins).
"""

from workbench.channels.synth.wire import MockInfo, SDVSpec, SynthSpec

__all__ = ["MockInfo", "SDVSpec", "SynthSpec"]
