"""The exception tree, drawn once.

Every error a node returns is JSON ``{"code": ..., "message": ...}`` with a
stable ``code``; the client re-raises it as the same class::

    WorkbenchError                      (root; catch this to catch all)
    ├── ConnectionFailed   node_unreachable
    ├── ProtocolMismatch   protocol_unsupported
    ├── NotAuthenticated   not_authenticated, directory_untrusted
    ├── NotAuthorized      not_authorized, no_grant, grant_expired,
    │                      untrusted_aggregator, fl_fab_not_allowed,
    │                      self_approval, purpose_not_allowed, not_approved,
    │                      oidc_no_role, oidc_user_conflict, sdv_not_approved,
    │                      agreement_refused, jobs_disabled
    │   └── PrivacyError   privacy_violation, fl_secagg_required,
    │                      fl_secagg_unsafe
    ├── BudgetExceeded     budget_exceeded, dataset_budget_exceeded,
    │                      fl_rounds_exhausted
    ├── InvalidQuery       invalid_query, unknown_column, bad_bounds,
    │                      bad_epsilon, needs_delta, wrong_type, invalid_body,
    │                      invalid_config, request_id_conflict,
    │                      grant_ambiguous, method_not_allowed, schema_mismatch,
    │                      bad_context, bad_ciphertext, would_overflow,
    │                      session_closed, fl_unknown_model,
    │                      fl_message_refused, fl_secagg_needs_nodes,
    │                      fl_job_stale, not_pending, stale_review,
    │                      too_many_rows, unsupported_operator, unsupported_sql,
    │                      bad_sql, bad_quantile, bad_accuracy, query_too_large, too_many_outputs,
    │                      invalid_notebook, bounds_mismatch
    ├── NotFound           unknown_dataset, not_found, fl_unknown_job, no_mock
    ├── PayloadTooLarge    payload_too_large
    ├── RateLimited        rate_limited (HTTP 429, ``retry_after_s`` in details)
    ├── NotSupported       not_supported, sandbox_unavailable
    └── ComputationFailed  computation_failed, computation_timeout,
        │                  dataset_unavailable (a transient cause: HTTP 503),
        │                  internal_error, synthesis_cancelled, session_incomplete
        └── DatasetUnavailable  dataset_unavailable (served as configured it
                           cannot be: HTTP 409)
"""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "ComputationFailed",
    "ConnectionFailed",
    "DatasetUnavailable",
    "InvalidQuery",
    "NotAuthenticated",
    "NotAuthorized",
    "NotFound",
    "NotSupported",
    "PayloadTooLarge",
    "PrivacyError",
    "ProtocolMismatch",
    "RateLimited",
    "WorkbenchError",
    "error_class_for",
]


class WorkbenchError(Exception):
    """Root of every Workbench error. ``code`` is stable; ``message`` is for people."""

    status: int = 500
    default_code: str = "internal_error"

    def __init__(self, message: str, code: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details or {}

    def to_json(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class ConnectionFailed(WorkbenchError):
    status = 503
    default_code = "node_unreachable"


class ProtocolMismatch(WorkbenchError):
    status = 400
    default_code = "protocol_unsupported"


class NotAuthenticated(WorkbenchError):
    status = 401
    default_code = "not_authenticated"


class NotAuthorized(WorkbenchError):
    status = 403
    default_code = "not_authorized"


class PrivacyError(NotAuthorized):
    status = 403
    default_code = "privacy_violation"


class BudgetExceeded(WorkbenchError):
    status = 409
    default_code = "budget_exceeded"


class InvalidQuery(WorkbenchError):
    status = 422
    default_code = "invalid_query"


class NotFound(WorkbenchError):
    status = 404
    default_code = "not_found"


class PayloadTooLarge(WorkbenchError):
    status = 413
    default_code = "payload_too_large"


class RateLimited(WorkbenchError):
    """The caller has more heavy work in flight than their share; nothing was charged. Retry after
    ``retry_after_s`` seconds (also sent as the HTTP ``Retry-After`` header)."""

    status = 429
    default_code = "rate_limited"

    @property
    def retry_after_s(self) -> float:
        return float(self.details.get("retry_after_s", 1.0))


class NotSupported(WorkbenchError):
    status = 501
    default_code = "not_supported"


class ComputationFailed(WorkbenchError):
    status = 503
    default_code = "computation_failed"


class DatasetUnavailable(ComputationFailed):
    """The owner's dataset cannot be served as configured (a file that does not match its declared types, a
    missing file or column): HTTP 409, the node's state and not a server fault; nothing was charged."""

    status = 409
    default_code = "dataset_unavailable"


_BY_CODE: dict[str, type[WorkbenchError]] = {
    "node_unreachable": ConnectionFailed,
    "protocol_unsupported": ProtocolMismatch,
    "not_authenticated": NotAuthenticated,
    "not_authorized": NotAuthorized,
    "no_grant": NotAuthorized,
    "grant_expired": NotAuthorized,
    "self_approval": NotAuthorized,
    "purpose_not_allowed": NotAuthorized,
    "not_approved": NotAuthorized,
    "untrusted_aggregator": NotAuthorized,
    "privacy_violation": PrivacyError,
    "budget_exceeded": BudgetExceeded,
    "dataset_budget_exceeded": BudgetExceeded,
    "invalid_query": InvalidQuery,
    "unknown_column": InvalidQuery,
    "bad_bounds": InvalidQuery,
    "bad_epsilon": InvalidQuery,
    "needs_delta": InvalidQuery,
    "wrong_type": InvalidQuery,
    "invalid_body": InvalidQuery,
    "invalid_config": InvalidQuery,
    "request_id_conflict": InvalidQuery,
    "grant_ambiguous": InvalidQuery,
    "schema_mismatch": InvalidQuery,
    "not_pending": InvalidQuery,
    "stale_review": InvalidQuery,
    "method_not_allowed": InvalidQuery,
    "bad_context": InvalidQuery,
    "bad_ciphertext": InvalidQuery,
    "would_overflow": InvalidQuery,
    "session_closed": InvalidQuery,
    "unknown_dataset": NotFound,
    "not_found": NotFound,
    "no_mock": NotFound,
    "sdv_not_approved": NotAuthorized,
    "too_many_rows": InvalidQuery,
    # the DP query language (workbench.query.language, workbench.query.sql)
    "unsupported_operator": InvalidQuery,
    "unsupported_sql": InvalidQuery,
    "bad_sql": InvalidQuery,
    "bad_quantile": InvalidQuery,
    "query_too_large": InvalidQuery,
    "bad_accuracy": InvalidQuery,
    "bounds_mismatch": InvalidQuery,  # federated moments: nodes standardise with different public bounds
    "synthesis_cancelled": ComputationFailed,
    "payload_too_large": PayloadTooLarge,
    "rate_limited": RateLimited,
    "not_supported": NotSupported,
    "computation_failed": ComputationFailed,
    "dataset_unavailable": DatasetUnavailable,
    "computation_timeout": ComputationFailed,
    "internal_error": ComputationFailed,
    "session_incomplete": ComputationFailed,
    # federated learning (workbench.channels.fl)
    "fl_fab_not_allowed": NotAuthorized,
    "fl_secagg_required": PrivacyError,
    "fl_secagg_unsafe": PrivacyError,
    "fl_rounds_exhausted": BudgetExceeded,
    "fl_unknown_model": InvalidQuery,
    "fl_message_refused": InvalidQuery,
    "fl_secagg_needs_nodes": InvalidQuery,
    "fl_job_stale": InvalidQuery,
    "fl_unknown_job": NotFound,
    # external identity (workbench.node.oidc)
    "oidc_no_role": NotAuthorized,
    "oidc_user_conflict": NotAuthorized,
    # the federated ecosystem (workbench.node.agreement, workbench.directory)
    "agreement_refused": NotAuthorized,
    "directory_untrusted": NotAuthenticated,
    # code jobs (workbench.channels.jobs)
    "jobs_disabled": NotAuthorized,
    "too_many_outputs": InvalidQuery,
    "invalid_notebook": InvalidQuery,
    "sandbox_unavailable": NotSupported,
}


def error_class_for(code: str) -> type[WorkbenchError]:
    """The exception class the client raises for a wire error ``code``."""
    return _BY_CODE.get(code, WorkbenchError)
