"""Unit tests of the notebook widgets (no node, no display needed).

``preview_widget`` is also exercised against a real node in
``test_handlers.py`` when the client library is there; here a tiny query
stand-in checks the widget's own behaviour (slider -> preview -> table).
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

pd = pytest.importorskip("pandas")


def test_widgets_import_without_display_or_heavy_modules():
    code = (
        "import sys, workbench; before = set(sys.modules);"
        "import workbench.jupyter, workbench.jupyter.widgets;"
        "new = {m.split('.')[0] for m in set(sys.modules) - before};"
        "bad = new & {'ipywidgets', 'matplotlib', 'pandas', 'IPython'};"
        "assert not bad, bad; print('ok')"
    )
    env = {"PATH": "/usr/bin:/bin", "MPLBACKEND": "", "DISPLAY": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_plot_result_grouped():
    import matplotlib

    matplotlib.use("Agg")
    from workbench.jupyter.widgets import plot_result

    df = pd.DataFrame(
        {"region": ["north", "south", "east"], "estimate": [10.0, 20.0, 5.0], "lower": [8.0, 17.0, 1.0], "upper": [12.0, 23.0, 9.0]}
    )
    ax = plot_result(df, title="counts")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["north", "south", "east"]
    assert ax.get_xlabel() == "region"
    assert ax.get_title() == "counts"
    bars = [p.get_height() for p in ax.patches]
    assert bars == [10.0, 20.0, 5.0]
    # One error-bar collection, spanning lower..upper.
    segments = ax.collections[0].get_segments()
    assert [(s[0][1], s[1][1]) for s in segments] == [(8.0, 12.0), (17.0, 23.0), (1.0, 9.0)]


def test_plot_result_single_value_on_given_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workbench.jupyter.widgets import plot_result

    fig, ax = plt.subplots()
    out = plot_result(pd.DataFrame({"estimate": [42.0], "lower": [40.0], "upper": [44.0]}), ax=ax)
    assert out is ax
    assert [t.get_text() for t in ax.get_xticklabels()] == ["estimate"]
    plt.close(fig)


def test_plot_result_needs_estimate():
    from workbench.jupyter.widgets import plot_result

    with pytest.raises(ValueError, match="estimate"):
        plot_result(pd.DataFrame({"count": [1]}))


def test_accuracy_table_from_preview_model():
    protocol = pytest.importorskip("workbench.protocol")
    from workbench.jupyter.widgets import accuracy_table

    preview = protocol.DPPreview(
        dataset="d",
        dataset_version="1",
        query=protocol.DPQuery(kind="count"),
        epsilon=1.0,
        delta=0.0,
        grant_id=1,
        alpha=0.05,
        accuracy=[protocol.Accuracy(statistic="count", accuracy=2.99, alpha=0.05)],
    )
    table = accuracy_table(preview)
    assert list(table.columns) == ["statistic", "± error", "confidence"]
    assert table.iloc[0].tolist() == ["count", 2.99, "95%"]


class _Query:
    """Records the epsilons it is previewed at (a unit-test stand-in)."""

    def __init__(self, fail_above: float = float("inf")):
        self.calls: list[float] = []
        self.fail_above = fail_above

    def preview(self, epsilon):
        self.calls.append(epsilon)
        if epsilon > self.fail_above:
            from workbench.errors import BudgetExceeded

            raise BudgetExceeded("epsilon 5 exceeds the 1 left on grant 1")
        return pd.DataFrame({"statistic": ["count"], "± error": [3.0 / epsilon]})


def test_preview_widget_slider_drives_preview():
    pytest.importorskip("ipywidgets")
    importlib.import_module("workbench.errors")
    from workbench.jupyter.widgets import preview_widget

    query = _Query(fail_above=2.0)
    box = preview_widget(query, epsilon=0.5)
    slider, table, note = box.children
    assert type(slider).__name__ == "FloatLogSlider"
    assert query.calls == [pytest.approx(0.5)]
    assert "<td>6</td>" in table.value  # 3 / 0.5
    slider.value = 1.0
    assert query.calls[-1] == pytest.approx(1.0)
    assert "<td>3</td>" in table.value
    assert "no budget spent" in note.value
    slider.value = 5.0
    assert query.calls[-1] == pytest.approx(5.0)
    assert "budget_exceeded" in note.value and "exceeds" in note.value
    assert table.value == ""


def test_preview_widget_against_a_real_node(shared_node):
    """The slider previews a real query on a real node and spends nothing."""
    pytest.importorskip("ipywidgets")
    import workbench as wb
    from workbench.jupyter.widgets import preview_widget

    node = wb.connect(shared_node.url, token=shared_node.analyst_token)
    try:
        spent_before = node.grants().epsilon_spent.sum()
        query = node.dataset("patients").count()
        box = preview_widget(query, epsilon=1.0)
        slider, table, note = box.children
        tables = [table.value]
        slider.value = 0.1
        tables.append(table.value)
        assert "count" in tables[0] and "95%" in tables[0]
        assert tables[0] != tables[1]  # less epsilon, larger expected error
        assert "ε left after this release" in note.value
        assert node.grants().epsilon_spent.sum() == spent_before
        assert query.widget().children[0].value == pytest.approx(1.0)
    finally:
        node.close()


def test_confidence_is_shown_unrounded():
    """A mean's sum and count are each bounded at 97.5% (its interval holds at 95%): the widget said "98%"."""
    protocol = pytest.importorskip("workbench.protocol")
    from workbench.client.display import preview_html
    from workbench.jupyter.widgets import accuracy_table

    preview = protocol.DPPreview(
        dataset="d", dataset_version="1", query=protocol.DPQuery(kind="mean", column="cost"), epsilon=1.0,
        delta=0.0, grant_id=1, alpha=0.05,
        accuracy=[protocol.Accuracy(statistic="sum", accuracy=9.0, alpha=0.025),
                  protocol.Accuracy(statistic="count", accuracy=3.0, alpha=0.025)])
    assert accuracy_table(preview)["confidence"].tolist() == ["97.5%", "97.5%"]

    class _Shown:
        body = preview

    assert "97.5%" in preview_html(_Shown()) and "98%" not in preview_html(_Shown())
