"""A running job's one way to ask for DP answers: a unix socket the node serves for that job only.

The socket lives in the job's scratch folder (mode 0700, the node's) and is
bind-mounted into the sandbox at ``/run/workbench/dp.sock``; the sandbox has
no network, so this socket is the only thing it can reach. Each connection
carries one JSON line ``{"query": <DP query spec>, "epsilon": e, "delta": d}``
and gets one JSON line back. The node validates it exactly as the DP
endpoint does and releases it through the gate as the job's analyst, on the
job's grant.

Privacy guarantee: each answer is an (epsilon, delta)-DP release of the DP
channel (see :mod:`workbench.channels.dp.routes`), charged to the analyst's grant
through the release gate; the job's total epsilon cannot exceed the
``dp_epsilon`` the owner approved together with the code (pre-authorised);
replays of an identical question are free, as everywhere.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import update

from ..dp import routes as dp
from ...errors import BudgetExceeded, InvalidQuery, WorkbenchError
from ...node.auth import Principal
from ...node.catalog import DatasetEntry
from ...node.ledger import fits
from ...protocol import DPRequest
from .store import CodeJobRecord

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 65_536
MAX_REQUESTS = 200


class DPChannel:
    def __init__(self, service, job: CodeJobRecord, entry: DatasetEntry, scratch: Path):
        self.service, self.entry = service, entry
        self.job_id, self.grant_id, self.allowed = job.id, job.grant_id, job.dp_epsilon
        self.principal = Principal(name=job.user_name, role="analyst")
        self.spent, self.uses = job.dp_spent, json.loads(job.dp_releases_json)
        self.path = scratch / "dp.sock"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self.path.chmod(0o666)  # the sandbox uid connects; the scratch folder (0700) keeps everyone else out
        self._server.listen(4)
        self._server.settimeout(0.5)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"workbench-job-{job.id}-dp")
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(10)
        self._server.close()

    def _serve(self) -> None:
        served = 0
        while not self._closed.is_set() and served < MAX_REQUESTS:
            try:
                connection, _ = self._server.accept()
            except (socket.timeout, OSError):
                continue
            served += 1
            with connection:
                connection.settimeout(30)
                try:
                    reply = self.answer(_read_line(connection))
                except WorkbenchError as exc:
                    reply = {"error": {"code": exc.code, "message": exc.message}}
                try:
                    connection.sendall(json.dumps(reply, default=str).encode() + b"\n")
                except OSError:
                    pass

    def answer(self, raw: bytes) -> dict:
        """One DP question from the job, released through the gate within the job's approved epsilon."""
        try:
            body = DPRequest.model_validate_json(raw)
        except ValidationError:
            raise InvalidQuery("The DP request does not match the API (query, epsilon, delta).",
                               code="invalid_body") from None
        body = body.model_copy(update={"grant_id": self.grant_id, "request_id": None})
        if not fits(body.epsilon, 0.0, self.allowed - self.spent, 0.0):
            raise BudgetExceeded(f"This job may spend epsilon={self.allowed:g} in all (approved with its code); "
                                 f"{self.spent:g} is spent.", code="budget_exceeded")
        _entry, outcome = dp.released(self.service, self.principal, self.entry.name, body)
        self.spent += outcome.charged.epsilon
        self.uses.append({"release_id": outcome.release_id, "kind": body.query.kind,
                          "epsilon": outcome.charged.epsilon, "delta": outcome.charged.delta})
        with self.service.store.transaction() as session:
            session.execute(update(CodeJobRecord).where(CodeJobRecord.id == self.job_id)
                            .values(dp_spent=self.spent, dp_releases_json=json.dumps(self.uses)))
        return {"table": outcome.result["table"], "epsilon": outcome.charged.epsilon,
                "release_id": outcome.release_id, "replayed": outcome.replayed}


def _read_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise InvalidQuery("A DP request from a job is limited to 64 KB.", code="payload_too_large")
    return data
