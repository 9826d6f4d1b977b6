"""The analyst's side: node connections, remote dataset handles and results."""

from .connection import Node, connect
from .dataset import GroupBy, Query, RemoteDataset
from .results import Preview

__all__ = ["GroupBy", "Node", "Preview", "Query", "RemoteDataset", "connect"]
