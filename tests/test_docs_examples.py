"""The Python examples in README.md and docs/*.md stay true.

Examples that need only the embedded node (README, the access request) run
statement by statement, in a fresh ``$WORKBENCH_HOME``; a statement whose
comment names an error (``# ... wb.PrivacyError``) must raise exactly that.
Examples that need several nodes, an aggregator or an identity provider are
run elsewhere for real (tests/e2e/test_federation.py, tests/channels/fl/test_fl.py,
tests/node/test_oidc.py); here every method and attribute they use must exist on
the public classes, so a rename cannot leave a doc example behind.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pandas as pd
import pytest

import workbench as wb

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file."""
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def run_block(code: str, namespace: dict) -> None:
    """Run ``code`` one top-level statement at a time; a ``wb.SomeError`` in a statement's comment is expected."""
    lines = code.splitlines()
    for statement in ast.parse(code).body:
        text = "\n".join(lines[statement.lineno - 1: statement.end_lineno])
        expected = re.search(r"#.*\bwb\.(\w+)", text)
        compiled = compile(ast.Module(body=[statement], type_ignores=[]), "<doc example>", "exec")
        if expected and isinstance(getattr(wb, expected.group(1), None), type):
            with pytest.raises(getattr(wb, expected.group(1))):
                exec(compiled, namespace)
        else:
            exec(compiled, namespace)


@pytest.fixture
def embedded_home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WORKBENCH_URL", raising=False)
    monkeypatch.delenv("WORKBENCH_TOKEN", raising=False)
    from workbench.demo import embedded

    monkeypatch.setattr(embedded, "_services", {})  # a fresh embedded node under this home
    return tmp_path


def test_the_readme_example_runs_on_the_embedded_node(embedded_home):
    namespace: dict = {}
    for code in blocks(ROOT / "README.md"):  # the quick start, then the query-language example on its `ds`
        run_block(code, namespace)
    assert namespace["df"].attrs["replayed"] is False
    assert {"estimate", "lower", "upper"} <= set(namespace["df"].columns)  # "estimate, lower, upper"


def test_the_access_request_example_runs(embedded_home):
    (code,) = blocks(ROOT / "docs" / "governance.md")
    namespace = {"node": wb.connect()}
    run_block(code, namespace)
    assert "readmission study" in set(namespace["node"].requests()["purpose"])


def _public_names() -> set[str]:
    """Every attribute of the classes a doc example handles (and of pandas frames, which results are)."""
    from workbench.channels.jobs.kernel import CodeJob
    from workbench.client.directory import ConsortiumDirectory
    from workbench.client.login import OIDCToken
    from workbench.channels.fl.kernel import FederatedModel, TrainingJob
    from workbench.channels.synth.kernel import SyntheticData
    from workbench.channels.synth.report import FidelityReport

    classes = [wb.Node, wb.RemoteDataset, wb.Query, wb.GroupBy, wb.Federation, wb.FederatedDataset, wb.Preview,
               TrainingJob, FederatedModel, SyntheticData, FidelityReport, OIDCToken, CodeJob, ConsortiumDirectory,
               wb.Expr, pd.DataFrame]
    names = {n for cls in classes for n in dir(cls)}
    # dataclass fields and instance attributes are not on the class: take them from annotations and __init__
    names |= {n for cls in classes for klass in cls.__mro__ for n in getattr(klass, "__annotations__", {})}
    for cls in classes[:-1]:
        tree = ast.parse(_dedent(cls))
        names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                  and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self"}
    return names | set(dir(wb)) | set(dir(wb.federation))   # wb.federation.from_directory(...)


def _dedent(cls: type) -> str:
    import textwrap

    return textwrap.dedent(inspect.getsource(cls))


#: Names a doc example reaches on objects that are not ours (an SDV synthesizer's ``sample``).
FOREIGN = {"sample"}


@pytest.mark.parametrize("path", [p for p in DOCS if blocks(p)], ids=lambda p: p.name)
def test_every_name_a_doc_example_uses_exists(path):
    known = _public_names() | FOREIGN
    missing = set()
    for code in blocks(path):
        tree = ast.parse(code.replace("...", "None"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "wb"
                                                        and node.attr in dir(wb)):
                if node.attr not in known:
                    missing.add(node.attr)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "wb":
                assert hasattr(wb, node.attr), f"{path.name}: wb.{node.attr}"
    assert not missing, f"{path.name} uses names no public class has: {sorted(missing)}"
