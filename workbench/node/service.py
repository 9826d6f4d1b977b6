"""One node's moving parts, wired together: state, catalogue, identity, gate, workers."""

from __future__ import annotations

import logging
import threading
from typing import Callable, TypeVar

from .auth import TokenAuthority
from .auth_failures import AuthFailureLog
from .fairness import UserLimiter
from .permissions import secure_state, sqlite_path
from .catalog import Catalog
from .gate import ReleaseGate
from .settings import NodeConfig
from .store import Store
from .worker import WorkerPool

log = logging.getLogger(__name__)

T = TypeVar("T")


class NodeService:
    def __init__(self, config: NodeConfig, start_workers: bool = True):
        self.config = config
        self.permission_warnings = secure_state(config.node.state_dir, sqlite_path(config.database_url))
        self.store = Store(config.database_url)
        self.catalog = Catalog(config)
        self.store.sync_dataset_budgets(
            {name: (ds.budget.epsilon, ds.budget.delta) for name, ds in config.datasets.items() if ds.tier == "private"})
        self.authority = TokenAuthority(config.node.name, config.node.state_dir, self.store, config.node.token_ttl_days,
                                        oidc=config.oidc,
                                        require_sender_constrained=config.node.require_sender_constrained)
        node = config.node
        self.fair = UserLimiter(compute=node.per_user_compute, session=node.per_user_sessions,
                                synthesis=node.per_user_synth_jobs)
        self.gate = ReleaseGate(self.store, self.fair)
        self.pool = WorkerPool(node.workers, node.query_timeout_s)
        #: Free calibrations (previews) run here, at a lower CPU priority, never in a paid release's worker.
        self.preview_pool = WorkerPool(node.preview_workers, node.query_timeout_s, per_user=1, nice=10)
        self.auth_failures = AuthFailureLog(self.store, node.auth_failure_window_s)
        self._seen_tokens: set[str] = set()
        self._seen_lock = threading.Lock()
        self._channel_state: dict[str, object] = {}
        self._channel_lock = threading.Lock()
        kept = self.gate.recover()
        if kept:
            log.warning("%d reservations from an interrupted run were kept as charged", kept)
        if start_workers:
            self.auth_failures.start()
            threading.Thread(target=self.pool.warm, daemon=True, name="workbench-warm").start()

    @property
    def name(self) -> str:
        return self.config.node.name

    def state_of(self, channel: str, create: Callable[[NodeService], T] | None = None) -> T | None:
        """A channel's own state on this node (its job registry, caches), made by ``create`` on first use.

        The one way a channel keeps state: nothing hangs off the service under another name, and without
        ``create`` nothing is made (``None``: e.g. a metrics scrape never starts a registry).
        """
        with self._channel_lock:
            state = self._channel_state.get(channel)
            if state is None and create is not None:
                state = self._channel_state[channel] = create(self)
            return state

    def first_use(self, token_id: str) -> bool:
        """True the first time this process sees a token id (a 'login' in the audit log)."""
        with self._seen_lock:
            if token_id in self._seen_tokens:
                return False
            self._seen_tokens.add(token_id)
            return True

    def close(self) -> None:
        self.auth_failures.close()
        self.gate.close()
        self.pool.close()
        self.preview_pool.close()
        self.store.dispose()
