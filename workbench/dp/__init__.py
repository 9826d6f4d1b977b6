"""The DP query channel: specs (in :mod:`workbench.protocol`), the node-side
compiler and runner (:mod:`workbench.dp.engine`, run in a worker process),
and the client-side handles (:mod:`workbench.client.dataset`)."""
