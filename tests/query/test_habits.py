"""A data scientist's first moves on a remote handle get clear errors with stable codes, never a bare
AttributeError (issue 14): row-level methods say rows stay on the node, pandas spellings point to the DP method,
typos suggest the name meant. They stay AttributeErrors, so ``hasattr`` works as on any object."""

from __future__ import annotations

import pytest

import workbench as wb
from workbench.client.dataset import RemoteDataset
from workbench.client.federation import FederatedDataset
from workbench.protocol import DatasetInfo

COLUMNS = [{"name": "age", "type": "int", "bounds": [0, 100]}, {"name": "sex", "type": "category",
                                                                "categories": ["F", "M"]}]
PRIVATE = DatasetInfo(name="patients", tier="private", max_rows=1000, columns=COLUMNS)
OPEN = DatasetInfo(name="iris", tier="open", max_rows=1000, columns=COLUMNS)


@pytest.fixture(params=["single", "federated"])
def handle(request):
    ds = RemoteDataset(None, PRIVATE)
    return ds if request.param == "single" else FederatedDataset(None, [ds, RemoteDataset(None, PRIVATE)])


@pytest.mark.parametrize("move", [lambda ds: ds.head(), lambda ds: ds.sample(5), lambda ds: ds.sort_values("age"),
                                  lambda ds: ds.iloc[0], lambda ds: len(ds), lambda ds: list(ds),
                                  lambda ds: ds.filter(wb.col("age") > 3).tail()])
def test_row_level_moves_say_rows_stay_on_the_node(handle, move):
    with pytest.raises(wb.PrivacyError) as refused:
        move(handle)
    assert refused.value.code == "privacy_violation" and "never leave the node" in refused.value.message
    assert "ds.mock()" in refused.value.message and isinstance(refused.value, AttributeError)


def test_pandas_spellings_point_to_the_dp_method(handle):
    for name, method in [("groupby", "group_by("), ("value_counts", "histogram("), ("assign", "with_columns(")]:
        with pytest.raises(wb.InvalidQuery) as refused:
            getattr(handle, name)
        assert refused.value.code == "not_supported" and method in refused.value.message, name


def test_typos_suggest_the_name_meant_and_hasattr_still_works(handle):
    with pytest.raises(wb.InvalidQuery) as column:
        handle.agee
    assert column.value.code == "unknown_column" and "'age'" in column.value.message
    with pytest.raises(wb.InvalidQuery) as method:
        handle.meen
    assert "'mean'" in method.value.message
    assert not hasattr(handle, "head") and not hasattr(handle, "no_such_thing") and hasattr(handle, "mean")
    assert bool(handle), "a handle is truthy without asking for its row count"


def test_an_open_dataset_points_to_its_rows():
    with pytest.raises(wb.PrivacyError) as refused:
        RemoteDataset(None, OPEN).head()
    assert "ds.to_pandas()" in refused.value.message
