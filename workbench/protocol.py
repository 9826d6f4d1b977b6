"""Wire models shared by the client and the node.

Everything the client sends is validated against these pydantic models
(``extra="forbid"``: unknown fields are refused). This module imports neither
FastAPI nor the database so both sides can use it.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

PROTOCOL_VERSION = "2"
#: Oldest first. 2 added: DPoP-bound tokens, ``DatasetInfo.agreement`` (docs/ecosystem.md, "Protocol versions").
SUPPORTED_PROTOCOLS = ("1", "2")
PROTOCOL_HEADER = "X-Workbench-Protocol"
#: The versions a client speaks (``"1, 2"``); the node answers in PROTOCOL_HEADER with the highest common one.
PROTOCOLS_HEADER = "X-Workbench-Protocols"


def highest_common(offered: str, supported: tuple[str, ...] = SUPPORTED_PROTOCOLS) -> str | None:
    """The highest version in both a comma-separated offer and ``supported``, or None."""
    wanted = {v.strip() for v in offered.split(",") if v.strip()}
    common = [v for v in supported if v in wanted]
    return max(common, key=int) if common else None


def for_protocol(info: "DatasetInfo", version: str) -> dict:
    """A dataset's description as a caller speaking ``version`` reads it: fields newer than that are left out
    (they are optional and safe to drop; protocol 1 clients refuse unknown fields)."""
    body = info.model_dump(mode="json")
    if version == "1":
        body.pop("agreement", None)
    return body


#: Fields of a DP question that protocol 1 does not know (the query language of protocol 2).
_QUERY_FIELDS_V2 = ("where", "derive", "aggs", "weights", "columns", "sql")


def dp_answer_for_protocol(body: dict, version: str) -> dict:
    """A DP preview or release (as JSON) as a caller speaking ``version`` reads it: protocol 1 clients refuse
    unknown fields, so the query language's fields, the readable ``text`` and each statistic's ``share`` are
    left out (a protocol 1 question never uses them)."""
    if version != "1":
        return body
    body = dict(body)
    body.pop("text", None)
    body["query"] = {k: v for k, v in body["query"].items() if k not in _QUERY_FIELDS_V2}
    if "accuracy" in body:
        body["accuracy"] = [{k: v for k, v in a.items() if k != "share"} for a in body["accuracy"]]
    return body


def require_supported_protocol(asked: str) -> None:
    """Refuse a protocol version this node does not speak (the header's or a body's ``protocol``), one way."""
    if asked not in SUPPORTED_PROTOCOLS:
        from .errors import ProtocolMismatch

        raise ProtocolMismatch(f"This node speaks Workbench protocol {', '.join(SUPPORTED_PROTOCOLS)}, not "
                               f"{asked[:16]!r}; upgrade the side that is older.", code="protocol_unsupported")

#: Column and dataset names: identifiers only, so no path, SQL or expression syntax ever reaches Polars.
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
DatasetName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")]
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-]{8,64}$")]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Finite = Annotated[float, AfterValidator(_finite)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- errors


class ErrorBody(Strict):
    code: str
    message: str
    details: dict[str, Any] | None = None


# ---------------------------------------------------------------- catalogue


class ColumnInfo(Strict):
    name: Identifier
    type: Literal["int", "float", "category", "bool", "string", "id"]
    description: str = ""
    bounds: tuple[Finite, Finite] | None = None
    categories: list[str | int | bool] | None = None


class PrivacyUnit(Strict):
    """Who is protected: one row, or one person identified by ``id_column``
    who contributes at most ``max_contributions`` rows (checked by the node)."""

    id_column: Identifier | None = None
    max_contributions: int = Field(1, ge=1, le=10_000)


class Budget(Strict):
    epsilon: float
    delta: float = 0.0


class AgreementInfo(Strict):
    """A dataset's sharing agreement as the catalogue shows it (protocol 2; see workbench.node.agreement)."""

    id: str = ""
    purposes: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)
    licence: str = ""
    grantee_claims: dict[str, list[str]] = Field(default_factory=dict)
    expires: str | None = None
    max_grant: Budget | None = None


class DatasetInfo(Strict):
    name: DatasetName
    tier: Literal["open", "private"]
    description: str = ""
    licence: str = ""
    version: str = ""
    max_rows: int
    privacy_unit: PrivacyUnit = PrivacyUnit()
    budget: Budget | None = None
    columns: list[ColumnInfo]
    #: A public DP mock of this dataset is published (``ds.mock()``, free); see workbench.channels.synth.
    has_mock: bool = False
    #: The sharing agreement (protocol 2 and later; absent for protocol 1 callers and datasets without one).
    agreement: AgreementInfo | None = None

    def column(self, name: str) -> ColumnInfo | None:
        return next((c for c in self.columns if c.name == name), None)


class NodeInfo(Strict):
    name: str
    version: str
    protocol: str
    protocols: list[str]
    user: str | None = None
    role: str | None = None


# ---------------------------------------------------------------- grants and history


class GrantInfo(Strict):
    grant_id: int
    user: str
    dataset: str
    purpose: str
    epsilon: float
    delta: float
    epsilon_spent: float
    delta_spent: float
    epsilon_left: float
    delta_left: float
    expires_at: datetime | None = None
    revoked: bool = False


class BudgetInfo(Strict):
    dataset: str
    grant_id: int | None
    purpose: str | None
    epsilon_left: float
    delta_left: float
    epsilon_spent: float
    delta_spent: float
    dataset_epsilon_left: float
    dataset_delta_left: float


class HistoryEntry(Strict):
    release_id: int
    time: datetime
    dataset: str
    channel: str
    kind: str
    epsilon: float
    delta: float
    grant_id: int | None
    replayed: bool
    #: The question in readable form (DP queries), for the history panel.
    text: str = ""


# ---------------------------------------------------------------- DP channel

# ---------------------------------------------------------------- DP query language (expression trees)

#: Caps on one question's expression trees (nodes over all trees, nesting depth), checked before compiling.
MAX_EXPR_NODES = 400
MAX_EXPR_DEPTH = 24
LiteralValue = Annotated[str, StringConstraints(max_length=200)] | bool | int | Finite | None


class ColumnRef(Strict):
    op: Literal["col"]
    name: Identifier


class Lit(Strict):
    op: Literal["lit"]
    value: LiteralValue


class Binary(Strict):
    """Comparison (eq ne lt le gt ge) or arithmetic (add sub mul div) of two expressions."""

    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "add", "sub", "mul", "div"]
    left: "Expr"
    right: "Expr"


class Logical(Strict):
    op: Literal["and", "or"]
    args: list["Expr"] = Field(min_length=1, max_length=64)


class Unary(Strict):
    """``not``, ``is_null``, ``abs`` of one expression."""

    op: Literal["not", "is_null", "abs"]
    arg: "Expr"


class IsIn(Strict):
    op: Literal["is_in"]
    arg: "Expr"
    values: list[LiteralValue] = Field(min_length=1, max_length=1000)


class Between(Strict):
    """``low <= arg <= high`` (also ``clip(arg, low, high)``: bounds a derived number)."""

    op: Literal["between", "clip"]
    arg: "Expr"
    low: Finite
    high: Finite


class Cut(Strict):
    """Bins at public edges; the labels (``(-inf, e1]``, ...) are public group keys."""

    op: Literal["cut"]
    arg: "Expr"
    edges: list[Finite] = Field(min_length=1, max_length=100)


class FillNull(Strict):
    op: Literal["fill_null"]
    arg: "Expr"
    value: LiteralValue


class Cast(Strict):
    op: Literal["cast"]
    arg: "Expr"
    to: Literal["int", "float", "bool"]


Expr = Annotated[ColumnRef | Lit | Binary | Logical | Unary | IsIn | Between | Cut | FillNull | Cast,
                 Field(discriminator="op")]
for _model in (Binary, Logical, Unary, IsIn, Between, Cut, FillNull, Cast):
    _model.model_rebuild()


class Derived(Strict):
    """A named derived column (``ds.with_columns(name=expr)``)."""

    name: Identifier
    expr: Expr


class Statistic(Strict):
    """One statistic of a several-statistics release (``ds.agg(name=wb.mean("cost"), ...)``)."""

    name: Identifier
    stat: Literal["count", "sum", "mean", "var", "std", "quantile"]
    column: Identifier | None = None
    p: float | None = Field(None, gt=0.0, lt=1.0)




class DPQuery(Strict):
    """A DP aggregate, described as data. The node compiles it to OpenDP itself.

    ``kind``: count, sum, mean, quantile (``quantile`` in (0, 1); median is 0.5)
    or histogram (``bins``: a number of equal-width bins over the column's public
    bounds, or explicit public edges). ``by``: group-by columns; groups with a
    public category set are released for every key; otherwise the key set is
    private and the release needs a delta (groups below a threshold are dropped).

    The query language (docs/queries.md) adds, for every kind: ``where`` (a
    boolean expression tree: rows kept), ``derive`` (named derived columns, in
    order); and the kinds ``agg`` (several ``aggs`` statistics in one release,
    the price split evenly or by ``weights``), ``moments`` (noisy sums of the
    bounded ``columns`` and of their pairwise products: the sufficient
    statistics of correlations and linear regression) and ``sql`` (``sql``
    parsed on the node into one of these shapes).
    """

    kind: Literal["count", "sum", "mean", "quantile", "histogram", "agg", "moments", "sql"]
    column: Identifier | None = None
    by: list[Identifier] = Field(default_factory=list, max_length=4)
    quantile: float | None = Field(None, gt=0.0, lt=1.0)
    bins: int | list[Finite] | None = None
    where: Expr | None = None
    derive: list[Derived] = Field(default_factory=list, max_length=32)
    aggs: list[Statistic] | None = Field(None, min_length=1, max_length=32)
    weights: list[Annotated[Finite, Field(gt=0.0)]] | None = Field(None, min_length=1, max_length=32)
    columns: list[Identifier] | None = Field(None, min_length=1, max_length=12)
    sql: str | None = Field(None, min_length=1, max_length=8000)


class DPRequest(Strict):
    protocol: str = PROTOCOL_VERSION
    query: DPQuery
    epsilon: Finite = Field(gt=0.0, le=100.0)
    delta: Finite = Field(0.0, ge=0.0, lt=0.01)
    grant_id: int | None = Field(None, ge=1)
    request_id: RequestId | None = None


class Accuracy(Strict):
    statistic: str
    accuracy: float | None
    alpha: float
    #: The share of the release's epsilon this statistic spends (several-statistics releases).
    share: float | None = None


class DPPreview(Strict):
    dataset: str
    dataset_version: str
    query: DPQuery
    epsilon: float
    delta: float
    grant_id: int | None
    alpha: float
    accuracy: list[Accuracy]
    note: str = ""
    budget_left_before: Budget | None = None
    budget_left_after: Budget | None = None
    would_replay: bool = False
    #: The question in readable form, e.g. ``mean(cost) where age >= 65 by sex``.
    text: str = ""


class Table(Strict):
    columns: list[str]
    data: list[list[Any]]


class Receipt(Strict):
    """The accounting every channel's release carries: which ledger row, on which data version, what it cost.

    ``epsilon`` is what was asked, ``epsilon_charged`` what the ledger moved (0 for a replay)."""

    release_id: int
    dataset: str
    dataset_version: str
    epsilon: float
    epsilon_charged: float
    grant_id: int | None
    replayed: bool


class ContributionReceipt(Receipt):
    """What a node tells the analyst after contributing to a secure aggregation (HE or SMPC): accounting only."""

    session_id: str


class ReleaseReceipt(Receipt):
    """A release with a delta and a time: DP answers and synthetic data."""

    delta: float
    delta_charged: float
    released_at: datetime


class DPRelease(ReleaseReceipt):
    query: DPQuery
    alpha: float
    table: Table
    budget_left: Budget | None = None
    #: The question in readable form, e.g. ``mean(cost) where age >= 65 by sex``.
    text: str = ""


class RowsResponse(Strict):
    dataset: str
    licence: str
    dataset_version: str
    table: Table


# ---------------------------------------------------------------- governance


class AccessRequestBody(Strict):
    purpose: str = Field(min_length=3, max_length=500)
    epsilon: Finite = Field(gt=0.0, le=1000.0)
    delta: Finite = Field(0.0, ge=0.0, lt=0.01)
    note: str = Field("", max_length=2000)
    expires_days: Finite | None = Field(None, gt=0, le=3650)


class AccessRequestInfo(Strict):
    request_id: int
    user: str
    dataset: str
    purpose: str
    epsilon: float
    delta: float
    note: str
    expires_days: float | None
    status: Literal["pending", "approved", "denied", "withdrawn"]
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str = ""
    grant_id: int | None = None
    created_at: datetime


class ApproveBody(Strict):
    """An owner may approve with a smaller budget or an expiry."""

    epsilon: Finite | None = Field(None, gt=0.0, le=1000.0)
    delta: Finite | None = Field(None, ge=0.0, lt=0.01)
    expires_days: Finite | None = Field(None, gt=0, le=3650)
    reason: str = Field("", max_length=2000)


class DenyBody(Strict):
    reason: str = Field(min_length=3, max_length=2000)


class ReviewInfo(Strict):
    review_id: int
    user: str
    dataset: str
    dataset_version: str
    channel: str
    kind: str
    spec: dict[str, Any]
    summary: dict[str, Any] | None = None  # shown to owners (what would leave, privacy metrics)
    status: Literal["pending", "approved", "rejected"]
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str = ""
    created_at: datetime


class Check(Strict):
    check: str
    ok: bool
    detail: str


class Explanation(Strict):
    """Why a release by ``user`` on ``dataset`` at this price would be allowed or refused, check by check."""

    user: str
    dataset: str
    epsilon: float
    delta: float
    allowed: bool
    code: str | None
    checks: list[Check]
