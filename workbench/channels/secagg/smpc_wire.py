"""Wire models of the SMPC protocol (node <-> relay, node -> analyst)."""

from __future__ import annotations

from pydantic import Field

from workbench.protocol import ContributionReceipt, Strict

#: A share vector is at most this many field elements (the largest secure-aggregation op has ~105 slots).
MAX_LENGTH = 4096
#: base64 of nonce + 8 bytes per element + tag.
MAX_SEALED = ((12 + 8 * MAX_LENGTH + 16) * 4) // 3 + 8


class PublicKey(Strict):
    public_key: str = Field(min_length=40, max_length=64)


class SealedShares(Strict):
    """One node's shares for the other parties, each sealed to its recipient (by recipient name)."""

    shares: dict[str, str] = Field(max_length=64)


class SmpcContributeResponse(ContributionReceipt):
    """What a node tells the analyst: accounting, and its partial sum of shares (uniformly random on its own)."""

    party: str
    partial: list[int]
    shares_sent: int
    share_bytes: int
