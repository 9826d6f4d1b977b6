"""Sharing agreements as code: what a dataset's owner allows, checked at grant time and at the gate.

A dataset's ``[datasets.NAME.agreement]`` table states the terms under which
it is shared with other organisations::

    [datasets.patients.agreement]
    id = "hospital-a/patients/2026-01"
    purposes = ["diabetes study", "public health"]   # empty: any purpose
    channels = ["dp", "synth", "he", "smpc", "fl"]  # of dp, synth, he, smpc, fl, code, open
    licence = "https://example.org/dsa/2026-01"     # default: the dataset's licence
    expires = 2027-12-31                            # nothing is granted or released after it
    max_grant = { epsilon = 2.0, delta = 1e-6 }     # the largest grant an owner may give
    [datasets.patients.agreement.grantee_claims]    # who may be granted: identity-provider claims
    country = ["NL", "BE"]
    organisation_type = ["hospital", "university"]

Every refusal is a 403 ``agreement_refused`` whose message and
``details.clause`` name the clause. Grants (CLI, owner API, approvals) and
access requests are checked against purposes, largest grant, expiry (a grant
never outlives the agreement: its expiry is capped) and the grantee's claims
(recorded at their last identity-provider login); each release is checked
against channels, expiry and the caller's current claims. Owners' own use of
their data is not sharing and is not bound by the agreement.
"""

from __future__ import annotations

import json
from datetime import date, datetime, time, timezone
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import DateTime, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..errors import NotAuthorized
from ..protocol import AgreementInfo, Budget
from .ledger import fits
from .store import Base, utcnow

Channel = Literal["dp", "synth", "he", "smpc", "fl", "code", "open"]
CHANNELS: tuple[str, ...] = ("dp", "synth", "he", "smpc", "fl", "code", "open")
#: The agreement's name of a channel the gate knows by another name (code jobs release as "jobs").
CHANNEL_OF: dict[str, str] = {"jobs": "code"}


class AgreementConfig(BaseModel):
    """The terms of a dataset's sharing agreement (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    purposes: list[str] = Field(default_factory=list)
    channels: list[Channel] = Field(default_factory=lambda: list(CHANNELS))
    licence: str = ""
    grantee_claims: dict[str, list[str]] = Field(default_factory=dict)
    expires: date | None = None
    max_grant: Budget | None = None

    def public(self, dataset_licence: str) -> AgreementInfo:
        """What the catalogue shows (the licence defaults to the dataset's)."""
        return AgreementInfo(id=self.id, purposes=self.purposes, channels=list(self.channels),
                             licence=self.licence or dataset_licence, grantee_claims=self.grantee_claims,
                             expires=None if self.expires is None else self.expires.isoformat(),
                             max_grant=self.max_grant)

    @property
    def ends_at(self) -> datetime | None:
        """The end of the ``expires`` day, UTC."""
        return None if self.expires is None else datetime.combine(self.expires, time.max, tzinfo=timezone.utc)


class UserClaims(Base):
    """The identity-provider claims a user had at their last login (what grant-time checks look at)."""

    __tablename__ = "user_claims"
    user_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    claims_json: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


def refused(clause: str, message: str, **details: Any) -> NotAuthorized:
    return NotAuthorized(f"The sharing agreement's clause '{clause}' does not allow this: {message}",
                         code="agreement_refused", details={"clause": clause, **details})


def check_grant(agreement: AgreementConfig | None, *, purpose: str, epsilon: float, delta: float,
                claims: Mapping[str, Any] | None, expires_at: datetime | None,
                now: datetime | None = None) -> datetime | None:
    """Refuse a grant outside the agreement; return its expiry, capped at the agreement's end."""
    if agreement is None:
        return expires_at
    now = now or datetime.now(timezone.utc)
    end = agreement.ends_at
    if end is not None and now > end:
        raise refused("expires", f"the agreement ended on {agreement.expires.isoformat()}.")
    if agreement.purposes and purpose.strip() not in agreement.purposes:
        raise refused("purposes", f"the purpose {purpose!r} is not one of {agreement.purposes}.")
    cap = agreement.max_grant
    if cap is not None and not fits(epsilon, delta, cap.epsilon, cap.delta):
        raise refused("max_grant", f"a grant of epsilon {epsilon:g}, delta {delta:g} exceeds the largest allowed "
                                   f"(epsilon {cap.epsilon:g}, delta {cap.delta:g}).")
    check_claims(agreement, claims)
    if end is not None and (expires_at is None or expires_at > end):
        return end
    return expires_at


def check_claims(agreement: AgreementConfig | None, claims: Mapping[str, Any] | None) -> None:
    """Refuse a grantee whose identity-provider claims do not meet every ``grantee_claims`` entry."""
    if agreement is None:
        return
    for name, allowed in agreement.grantee_claims.items():
        have = _values((claims or {}).get(name))
        if not have & set(allowed):
            who = "has no identity-provider claims" if claims is None else f"has {name}={sorted(have) or 'nothing'}"
            raise refused("grantee_claims", f"grantees need {name} in {allowed}; this user {who}.", claim=name)


def check_release(agreement: AgreementConfig | None, *, channel: str, role: str,
                  claims: Mapping[str, Any] | None, now: datetime | None = None) -> None:
    """Refuse a release (or replay) by a grantee through a channel or at a time the agreement does not allow."""
    if agreement is None or role == "owner":
        return
    end = agreement.ends_at
    if end is not None and (now or datetime.now(timezone.utc)) > end:
        raise refused("expires", f"the agreement ended on {agreement.expires.isoformat()}.")
    channel = CHANNEL_OF.get(channel, channel)
    if channel in CHANNELS and channel not in agreement.channels:  # ("review" delivers a release checked before)
        raise refused("channels", f"the channel {channel!r} is not one of {agreement.channels}.", channel=channel)
    check_claims(agreement, claims)


def agreements(config: Any) -> dict[str, AgreementConfig | None]:
    """Each dataset's agreement (None: shared under its grants alone), from a node config."""
    return {name: ds.agreement for name, ds in config.datasets.items()}


def _values(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, list):
        return {v for v in value if isinstance(v, str)}
    return set()


def recorded_claims(session, user: str) -> dict[str, Any] | None:
    """The claims recorded at ``user``'s last identity-provider login (None: a local user, or never logged in)."""
    row = session.get(UserClaims, user)
    return None if row is None else json.loads(row.claims_json)


def record_claims(session, user: str, claims: Mapping[str, Any]) -> None:
    """Keep a user's latest claims (written only when they changed)."""
    text = json.dumps(dict(claims), sort_keys=True)
    row = session.get(UserClaims, user)
    if row is None:
        session.add(UserClaims(user_name=user, claims_json=text))
    elif row.claims_json != text:
        row.claims_json = text
