"""How a channel gives the client's handles their methods, so the facade imports no channel.

A channel's kernel module writes its handle methods in a small class and
registers them (``register(RemoteDataset, SynthesisMethods)``); the package root
(:mod:`workbench`) imports every channel's kernel module, so the methods are
there as soon as ``workbench`` is imported. The facade itself knows only what
every channel shares: connections, requests, paths and results.
"""

from __future__ import annotations

__all__ = ["register"]


def register(handle: type, methods: type) -> type:
    """Copy the public methods (and their docstrings) of ``methods`` onto the handle class ``handle``."""
    for name, value in vars(methods).items():
        if name.startswith("_"):
            continue
        if hasattr(handle, name) and getattr(handle, name) is not value:
            raise TypeError(f"{handle.__name__}.{name} is already defined; a channel may not replace it")
        setattr(handle, name, value)
    return methods
