"""Errors and retries on the wire: one decoder for the client, the node and the aggregator.

Every Workbench server answers an error as JSON ``{"code", "message", "details"?}``
(see :func:`workbench.node.app.install_error_handlers`). :func:`raise_for_error`
turns such an answer back into the matching :class:`~workbench.errors.WorkbenchError`
subclass (by code), whoever made the call; :func:`send` makes one HTTP call with
the same retry rule everywhere (connection failures only, never a request the
server may have acted on after it answered). This module imports neither
FastAPI nor the database.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from .errors import ConnectionFailed, WorkbenchError, error_class_for

__all__ = ["RETRYABLE", "raise_for_error", "send"]

#: Failures before the server could act on a request: safe to try again.
RETRYABLE = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectTimeout)


def raise_for_error(response: httpx.Response, who: str, *, prefix: str = "", max_message: int | None = None,
                    details: bool = True, unreadable: type[WorkbenchError] = WorkbenchError,
                    unreadable_code: str = "internal_error") -> None:
    """Raise the error a Workbench server answered (nothing for a success).

    ``who`` names the server in the sentence for an answer that is not ours (``"node"``, ``"aggregator"``);
    ``prefix`` goes before a relayed message; ``max_message`` caps its length (a relay to an analyst).
    """
    if response.status_code < 400:
        return
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["message"])
    except Exception:  # noqa: BLE001 - not one of ours
        raise unreadable(f"The {who} answered HTTP {response.status_code}.", code=unreadable_code) from None
    if max_message is not None:
        message = message[:max_message]
    raise error_class_for(code)(prefix + message, code=code, details=body.get("details") if details else None)


#: The longest wait a client honours from a node's ``Retry-After`` (a 429: nothing was done or charged).
MAX_RETRY_AFTER_S = 30.0
#: How many 429s in a row a client waits out before it gives the refusal to the caller.
RATE_LIMITED_RETRIES = 8


def retry_after(response: httpx.Response) -> float:
    """The node's ``Retry-After`` in seconds (1 if missing or unreadable), capped at ``MAX_RETRY_AFTER_S``."""
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0


def send(http: httpx.Client, method: str, url: str, *, retries: int = 0, who: str = "node",
         where: str = "", **kwargs: Any) -> httpx.Response:
    """One HTTP call; a connection failure is tried again ``retries`` times, then :class:`ConnectionFailed`.

    A 429 (:class:`~workbench.errors.RateLimited`: the caller's fair share is in use; nothing was done or
    charged) is tried again up to ``RATE_LIMITED_RETRIES`` times after the ``Retry-After`` the node asked for."""
    attempt = limited = 0
    while True:
        try:
            response = http.request(method, url, **kwargs)
        except RETRYABLE as exc:
            attempt += 1
            if attempt > retries:
                raise ConnectionFailed(f"Cannot reach the {who} at {where}: {exc or type(exc).__name__}") from None
            time.sleep(0.2 * attempt)
            continue
        except httpx.TimeoutException:
            raise ConnectionFailed(f"The {who} at {where} did not answer in time.") from None
        except httpx.HTTPError as exc:
            raise ConnectionFailed(f"Cannot reach the {who} at {where}: {type(exc).__name__}.") from None
        if response.status_code != 429 or limited >= RATE_LIMITED_RETRIES:
            return response
        limited += 1
        time.sleep(retry_after(response))
