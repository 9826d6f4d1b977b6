"""Secure aggregation with homomorphic encryption (TenSEAL BFV).

* :mod:`.params`: the pinned BFV (sums) and CKKS (evaluation) parameters, checks on contexts and ciphertexts.
* :mod:`.spec`: wire models and the encoding plan (fixed point, sensitivity, noise, overflow check).
* :mod:`.node_compute`: the node's noisy contribution (worker side).
* :mod:`.node_routes`: the node's endpoints (trusted aggregators, preview, contribute).
* :mod:`workbench.aggregator`: ``workbench aggregator serve`` (its own package).
* :mod:`.session`: what HE and SMPC share on the analyst's side (aggregator, preview, asking every node).
* :mod:`.evaluate`: encrypted model evaluation (the analyst's weights encrypted, a noisy aggregate metric back).
* :mod:`.client`: the analyst's side (keys, session, decrypting the total): ``secure_sum``, ``linear_regression``
  (``protocol="smpc"`` hands the same sums to :mod:`workbench.smpc`).
"""
