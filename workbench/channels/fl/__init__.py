"""Federated learning with Flower: built-in trainers, node-side DP rounds through the gate, two engines.

Start from :meth:`workbench.FederatedDataset.train` (client half in
:mod:`workbench.channels.fl.kernel`); the node half is :mod:`workbench.channels.fl.jobs`.
This package imports nothing at import time (the node config's ``[fl]`` table is
:class:`workbench.node.settings.FLSection`).
"""
