"""The data subject's say on a table source: the consent rule of :mod:`workbench.node.consent`, in SQL.

:func:`consenting_relation` is what a pushed-down query reads instead of the table: the table itself when
the dataset has no consent rule, else ``SELECT * FROM table WHERE <consent>`` with

- a consent column: ``COALESCE(column, FALSE)`` (the column must be boolean; false and null mean "no"), or
- an opt-out list: ``CAST(id AS TEXT) NOT IN (<the listed ids>)`` (a null id is dropped, as on files).

Privacy guarantee: the filter is applied before anything else (derived columns, the query's filter,
contribution bounding), and it depends only on each person's own rows and their presence in the list,
so a person without consent has no influence on any released answer: the same promise as the file path.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from workbench.channels.dp.pushdown.compile import table_expression
from workbench.node.consent import read_opt_outs


def consenting_relation(table: str, consent: dict | None) -> exp.Expression:
    """The table, or a select of its consenting rows; ``consent``: a :func:`workbench.node.consent.consent_spec`."""
    if consent is None:
        return table_expression(table)
    return sqlglot.select(exp.Star()).from_(table_expression(table)).where(consent_condition(consent))


def consent_condition(consent: dict) -> exp.Expression:
    """The SQL condition a row must meet to be read (never an error, whatever the row holds)."""
    if consent["column"] is not None:
        return exp.Coalesce(this=exp.column(consent["column"], quoted=True), expressions=[exp.false()])
    person = exp.cast(exp.column(consent["id_column"], quoted=True), "TEXT")
    ids = read_opt_outs(consent["opt_out_file"])
    if not ids:
        return exp.Not(this=exp.Is(this=person, expression=exp.Null()))
    listed = exp.In(this=person, expressions=[exp.Literal.string(i) for i in ids])
    return exp.Coalesce(this=exp.Not(this=exp.Paren(this=listed)), expressions=[exp.false()])
