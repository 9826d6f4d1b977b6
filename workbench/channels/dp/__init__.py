"""The DP query channel: specs (in :mod:`workbench.protocol`), the node-side
compiler and runner (:mod:`workbench.channels.dp.worker`, run in a worker process),
and the client-side handles (:mod:`workbench.client.dataset`)."""
