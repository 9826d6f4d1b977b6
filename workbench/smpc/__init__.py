"""Secure sums by additive secret sharing between the nodes (the SMPC alternative to :mod:`workbench.he`).

* :mod:`.field`: the prime field, signed encoding, splitting into shares (randomness from :mod:`secrets`).
* :mod:`.sealing`: shares sealed to the receiving node (ephemeral X25519 + HKDF + ChaCha20-Poly1305).
* :mod:`.spec`: wire models.
* :mod:`workbench.aggregator.relay`: the aggregator's mailbox routes (keys and sealed shares; it cannot open them).
* :mod:`.node_routes`: the node's ``POST /v1/datasets/{name}/smpc/contribute``.
* :mod:`.client`: the analyst's side (``secure_sum(..., protocol="smpc")``).
"""
