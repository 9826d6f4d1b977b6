"""Secure aggregation: HE (TenSEAL) and SMPC (additive shares), two protocols over one session.

Secure aggregation with homomorphic encryption (TenSEAL BFV).

* :mod:`workbench.channels.secagg.he_params`: the pinned BFV (sums) and CKKS (evaluation) parameters, checks on contexts and ciphertexts.
* :mod:`workbench.channels.secagg.wire`: wire models and the encoding plan (fixed point, sensitivity, noise, overflow check).
* :mod:`workbench.channels.secagg.worker`: the node's noisy contribution (worker side).
* :mod:`workbench.channels.secagg.routes`: the node's endpoints (trusted aggregators, preview, contribute).
* :mod:`workbench.aggregator`: ``workbench aggregator serve`` (its own package).
* :mod:`workbench.channels.secagg.session`: what HE and SMPC share on the analyst's side (aggregator, preview, asking every node).
* :mod:`workbench.channels.secagg.he_evaluate`: encrypted model evaluation (the analyst's weights encrypted, a noisy aggregate metric back).
* :mod:`workbench.channels.secagg.kernel`: the analyst's side (keys, session, decrypting the total): ``secure_sum``, ``linear_regression``
  (``protocol="smpc"`` hands the same sums to :mod:`workbench.channels.secagg`).

Secure sums by additive secret sharing between the nodes (the SMPC alternative to :mod:`workbench.channels.secagg`).

* :mod:`workbench.channels.secagg.smpc_field`: the prime field, signed encoding, splitting into shares (randomness from :mod:`secrets`).
* :mod:`workbench.channels.secagg.smpc_sealing`: shares sealed to the receiving node (ephemeral X25519 + HKDF + ChaCha20-Poly1305).
* :mod:`workbench.channels.secagg.smpc_wire`: wire models.
* :mod:`workbench.aggregator.relay`: the aggregator's mailbox routes (keys and sealed shares; it cannot open them).
* :mod:`workbench.channels.secagg.smpc_routes`: the node's ``POST /v1/datasets/{name}/smpc/contribute``.
* :mod:`workbench.channels.secagg.smpc_kernel`: the analyst's side (``secure_sum(..., protocol="smpc")``).
"""
