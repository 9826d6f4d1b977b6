#!/usr/bin/env python3
"""Move Workbench to one shape for every channel (issue 13): a deterministic, idempotent codemod.

Run from the repository root (see scripts/restructure.md)::

    python scripts/restructure.py            # do it
    python scripts/restructure.py --dry-run  # print the moves and the files it would rewrite

What it does, in this order (every step is a no-op on a tree already moved):

1. plans the moves: the known modules to their new names (:data:`MODULES`), any
   other file in a channel folder with its folder (:data:`FOLDERS`), and the
   tests into ``tests/node``, ``tests/channels/<name>``, ``tests/adversarial``,
   ``tests/e2e`` (:data:`TESTS`; an unknown ``tests/test_*.py`` is placed by its
   name prefix, or left where it is and listed);
2. turns every relative import of a Python file that moves into an absolute one
   (so a file's imports do not depend on where it stands);
3. rewrites ``from package import module`` of a moved module (with an ``as``
   keeping the local name), then every dotted module name (imports, monkeypatch
   targets, ``module:function`` strings, ``python -m``, docs) and every file path
   (``workbench/he/client.py``, ``tests/test_he.py``) in the text files under
   workbench/, tests/, benchmarks/, notebooks/, scripts/, docs/, binder/ and the
   root files (README.md, pyproject.toml, ...);
4. moves the files (plain renames: ``git add -A`` records them as renames),
   merges ``he/__init__.py`` and ``smpc/__init__.py`` into the secagg package,
   writes the new packages' ``__init__.py``, removes the emptied folders;
5. in moved tests, shifts ``Path(__file__).parents[...]`` by the extra depth.

It never touches itself, scripts/restructure.md, tests/test_restructure.py or
docs/architecture.md (they name the old modules on purpose).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

# ---------------------------------------------------------------- the map

#: Known modules: old path -> new path (relative to the repository root).
MODULES: dict[str, str] = {
    # DP (federated DP lives with it)
    "workbench/dp/__init__.py": "workbench/channels/dp/__init__.py",
    "workbench/dp/node_routes.py": "workbench/channels/dp/routes.py",
    "workbench/dp/engine.py": "workbench/channels/dp/worker.py",
    "workbench/federated_dp.py": "workbench/channels/dp/federated.py",
    # the DP query language: typed by the client and the node alike, so it is no channel's
    "workbench/dp/language.py": "workbench/query/language.py",
    "workbench/dp/sql.py": "workbench/query/sql.py",
    "workbench/dp/text.py": "workbench/query/text.py",
    # synthesis
    "workbench/synth/client.py": "workbench/channels/synth/kernel.py",
    "workbench/synth/node_routes.py": "workbench/channels/synth/routes.py",
    "workbench/synth/fit.py": "workbench/channels/synth/worker.py",
    "workbench/synth/spec.py": "workbench/channels/synth/wire.py",
    # secure aggregation: HE and SMPC, two protocols over one session module
    "workbench/he/client.py": "workbench/channels/secagg/kernel.py",
    "workbench/he/node_routes.py": "workbench/channels/secagg/routes.py",
    "workbench/he/node_compute.py": "workbench/channels/secagg/worker.py",
    "workbench/he/spec.py": "workbench/channels/secagg/wire.py",
    "workbench/he/params.py": "workbench/channels/secagg/he_params.py",
    "workbench/he/evaluate.py": "workbench/channels/secagg/he_evaluate.py",
    "workbench/smpc/client.py": "workbench/channels/secagg/smpc_kernel.py",
    "workbench/smpc/node_routes.py": "workbench/channels/secagg/smpc_routes.py",
    "workbench/smpc/spec.py": "workbench/channels/secagg/smpc_wire.py",
    "workbench/smpc/field.py": "workbench/channels/secagg/smpc_field.py",
    "workbench/smpc/sealing.py": "workbench/channels/secagg/smpc_sealing.py",
    "workbench/he/session.py": "workbench/channels/secagg/session.py",
    # federated learning
    "workbench/fl/client.py": "workbench/channels/fl/kernel.py",
    "workbench/fl/node_routes.py": "workbench/channels/fl/routes.py",
    "workbench/fl/local.py": "workbench/channels/fl/worker.py",
    "workbench/fl/protocol.py": "workbench/channels/fl/wire.py",
    "workbench/fl/node_jobs.py": "workbench/channels/fl/jobs.py",
}

#: Any other file of a channel folder moves with its folder (old folder -> new folder).
FOLDERS: dict[str, str] = {
    "workbench/dp": "workbench/channels/dp",
    "workbench/synth": "workbench/channels/synth",
    "workbench/fl": "workbench/channels/fl",
    "workbench/secagg": "workbench/channels/secagg",
    "workbench/he": "workbench/channels/secagg",
    "workbench/smpc": "workbench/channels/secagg",
}

#: Folders whose ``__init__.py`` are merged into one (new package -> old packages, in order).
MERGED_PACKAGES: dict[str, list[str]] = {
    "workbench/channels/secagg": ["workbench/secagg", "workbench/he", "workbench/smpc"],
}

#: Packages the move creates, with their docstring.
NEW_PACKAGES: dict[str, str] = {
    "workbench/channels": '"""The release channels, one package each, all of one shape.\n\n'
                          "``kernel.py`` runs in the notebook, ``routes.py`` is the node's HTTP face, ``worker.py`` "
                          "runs in a worker\nprocess (tasks registered by name in :mod:`workbench.node.tasks`), "
                          "``wire.py`` holds the pydantic\nmodels. See docs/architecture.md.\n\"\"\"\n",
    "workbench/aggregator": '"""The secure-aggregation server (``workbench aggregator serve``): HE sessions and the '
                            'SMPC relay."""\n',
    "workbench/query": '"""The DP query language on public metadata: expression typing, SQL compiled to queries, '
                       'readable text and validation.\n\nThe client checks a question with it before any request; '
                       'the node checks it again before any charge.\nNothing here reads data.\n"""\n',
    "workbench/channels/secagg": '"""Secure aggregation: HE (TenSEAL) and SMPC (additive shares), two protocols over '
                                 'one session."""\n',
}

#: Known tests: old path -> new path.
TESTS: dict[str, str] = {
    "tests/test_auth.py": "tests/node/test_auth.py",
    "tests/test_audit_and_crash.py": "tests/node/test_audit_and_crash.py",
    "tests/test_cli_and_api_surface.py": "tests/node/test_cli_and_api_surface.py",
    "tests/test_fast_paths.py": "tests/node/test_fast_paths.py",
    "tests/test_governance.py": "tests/node/test_governance.py",
    "tests/test_metrics.py": "tests/node/test_metrics.py",
    "tests/test_oidc.py": "tests/node/test_oidc.py",
    "tests/test_dp_audit.py": "tests/channels/dp/test_dp_audit.py",
    "tests/test_opendp_pin.py": "tests/channels/dp/test_opendp_pin.py",
    "tests/test_policy.py": "tests/node/test_policy.py",
    "tests/test_synth.py": "tests/channels/synth/test_synth.py",
    "tests/test_synth_units.py": "tests/channels/synth/test_synth_units.py",
    "tests/test_he.py": "tests/channels/secagg/test_he.py",
    "tests/test_he_evaluate.py": "tests/channels/secagg/test_he_evaluate.py",
    "tests/test_smpc.py": "tests/channels/secagg/test_smpc.py",
    "tests/test_fl.py": "tests/channels/fl/test_fl.py",
    "tests/test_fl_deployment.py": "tests/channels/fl/test_fl_deployment.py",
    "tests/test_attacks.py": "tests/adversarial/test_attacks.py",
    "tests/test_core_input_checks.py": "tests/adversarial/test_core_input_checks.py",
    "tests/test_faults.py": "tests/adversarial/test_faults.py",
    "tests/test_hostile.py": "tests/adversarial/test_hostile.py",
    "tests/test_load.py": "tests/adversarial/test_load.py",
    "tests/test_overspend.py": "tests/adversarial/test_overspend.py",
    "tests/test_e2e_http.py": "tests/e2e/test_e2e_http.py",
    "tests/test_federation.py": "tests/e2e/test_federation.py",
    "tests/test_binder.py": "tests/e2e/test_binder.py",
    "tests/test_notebooks.py": "tests/e2e/test_notebooks.py",
    "tests/test_notebooks_channels.py": "tests/e2e/test_notebooks_channels.py",
    "tests/test_notebooks_schedule.py": "tests/e2e/test_notebooks_schedule.py",
    "tests/test_first_hour.py": "tests/e2e/test_first_hour.py",
    "tests/test_consent.py": "tests/node/test_consent.py",
    "tests/test_ecosystem.py": "tests/node/test_ecosystem.py",
    "tests/test_fapi.py": "tests/node/test_fapi.py",
    "tests/test_agreement.py": "tests/node/test_agreement.py",
    "tests/test_directory.py": "tests/node/test_directory.py",
    "tests/test_protocol_compat.py": "tests/e2e/test_protocol_compat.py",
    "tests/test_datafiles.py": "tests/node/test_datafiles.py",
    "tests/test_epsilon_floor_synth.py": "tests/channels/synth/test_epsilon_floor_synth.py",
    "tests/test_query_language.py": "tests/query/test_query_language.py",
    "tests/test_query_sql.py": "tests/query/test_query_sql.py",
    "tests/test_query_notebook.py": "tests/e2e/test_query_notebook.py",
}

#: Tests about the whole package: they stay in tests/.
TESTS_STAY = {"tests/test_house.py", "tests/test_docs_examples.py", "tests/test_restructure.py"}

#: An unknown ``tests/test_<prefix>...py`` goes to the folder of the first prefix it starts with.
TEST_PREFIXES: list[tuple[str, str]] = [
    ("test_dp", "tests/channels/dp"), ("test_federated_dp", "tests/channels/dp"),
    ("test_query", "tests/channels/dp"), ("test_pushdown", "tests/channels/dp"), ("test_synth", "tests/channels/synth"),
    ("test_he", "tests/channels/secagg"), ("test_smpc", "tests/channels/secagg"),
    ("test_secagg", "tests/channels/secagg"), ("test_aggregator", "tests/channels/secagg"),
    ("test_fl", "tests/channels/fl"), ("test_gate", "tests/node"), ("test_ledger", "tests/node"),
    ("test_policy", "tests/node"), ("test_data", "tests/node"), ("test_tasks", "tests/node"),
    ("test_worker", "tests/node"), ("test_catalog", "tests/node"), ("test_auth", "tests/node"),
    ("test_attack", "tests/adversarial"), ("test_fault", "tests/adversarial"), ("test_load", "tests/adversarial"),
    ("test_hostile", "tests/adversarial"), ("test_e2e", "tests/e2e"), ("test_notebook", "tests/e2e"),
]

#: Where the text rewrite looks (folders), and root files it rewrites too.
ROOTS = ["workbench", "tests", "benchmarks", "notebooks", "scripts", "docs", "binder", "jupyter-config"]
ROOT_FILES = ["README.md", "pyproject.toml", "CONTRIBUTING.md", "CHANGELOG.md", "Makefile", "setup.cfg",
              "environment.yml", "requirements.txt"]
#: Never rewritten: they name the old layout on purpose.
KEEP = {"scripts/restructure.py", "scripts/restructure.md", "tests/test_restructure.py", "docs/architecture.md"}
SKIP_DIRS = {"node_modules", "__pycache__", ".ipynb_checkpoints", "labextension", ".pytest_cache", "data",
             "test-artifacts", "lib"}
TEXT_SUFFIXES = {".py", ".md", ".rst", ".txt", ".toml", ".cfg", ".ini", ".ipynb", ".json", ".yml", ".yaml", ".sh",
                 ".mjs", ".js", ".ts", ".html", ""}


# ---------------------------------------------------------------- planning


@dataclass
class Plan:
    moves: dict[str, str] = field(default_factory=dict)  # old path -> new path (files)
    modules: dict[str, str] = field(default_factory=dict)  # old dotted module -> new dotted module
    unplaced_tests: list[str] = field(default_factory=list)
    merged_inits: dict[str, list[str]] = field(default_factory=dict)  # new __init__ -> old __init__ files


def module_of(path: str) -> str:
    """``workbench/he/client.py`` -> ``workbench.he.client``; a package's ``__init__.py`` -> the package."""
    parts = Path(path).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _files_under(root: Path, folder: str) -> list[str]:
    base = root / folder
    if not base.is_dir():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", ".ipynb_checkpoints"))
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")):
                out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return out


def plan(root: Path) -> Plan:
    """Every file move and every module rename, from what is on disk (empty on a moved tree)."""
    p = Plan()
    taken: set[str] = set()
    for old, new in MODULES.items():
        if (root / old).is_file():
            p.moves[old] = new
            taken.add(new)
    for old_folder, new_folder in FOLDERS.items():
        for old in _files_under(root, old_folder):
            if old in p.moves:
                continue
            rel = Path(old).relative_to(old_folder).as_posix()
            if rel == "__init__.py" and new_folder in MERGED_PACKAGES:
                p.merged_inits.setdefault(f"{new_folder}/__init__.py", []).append(old)
                continue
            new = f"{new_folder}/{rel}"
            if new in taken or (root / new).exists():  # two old folders share a name: prefix the old folder's
                new = f"{new_folder}/{Path(old_folder).name}_{rel}"
            p.moves[old] = new
            taken.add(new)
    _plan_tests(root, p)
    for old, new in p.moves.items():
        if old.endswith(".py"):
            p.modules[module_of(old)] = module_of(new)
    for old_folder, new_folder in FOLDERS.items():  # the packages themselves
        if (root / old_folder).is_dir():
            p.modules.setdefault(module_of(old_folder + "/__init__.py"), module_of(new_folder + "/__init__.py"))
    return p


def _plan_tests(root: Path, p: Plan) -> None:
    for old, new in TESTS.items():
        if (root / old).is_file():
            p.moves[old] = new
    tests = root / "tests"
    if not tests.is_dir():
        return
    for path in sorted(tests.glob("test_*.py")):
        old = path.relative_to(root).as_posix()
        if old in p.moves or old in KEEP or old in TESTS_STAY:
            continue
        folder = next((f for prefix, f in TEST_PREFIXES if path.name.startswith(prefix)), None)
        if folder is None:
            p.unplaced_tests.append(old)
        else:
            p.moves[old] = f"{folder}/{path.name}"


# ---------------------------------------------------------------- rewriting Python imports


def absolute_imports(source: str, module: str, is_package: bool, moved: dict[str, str] | None = None) -> str:
    """``source`` with its relative ``from .x import y`` made absolute (``module`` is the file's own module).

    With ``moved``, only the imports that reach a moved module (or a name of a moved package) change.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    package = module.split(".") if is_package else module.split(".")[:-1]
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = ".".join(base + ([node.module] if node.module else []))
            if moved is not None and not _reaches(target, [a.name for a in node.names], moved):
                continue
            edits.append((node.lineno, node.col_offset, node.level, node.module or "", target))
    if not edits:
        return source
    lines = source.splitlines(keepends=True)
    for lineno, col, level, mod, target in sorted(edits, reverse=True):
        line = lines[lineno - 1]
        pattern = re.compile(r"from\s+" + r"\." * level + re.escape(mod) + r"(?=\s)")
        m = pattern.match(line, col)
        if m:
            lines[lineno - 1] = line[:m.start()] + f"from {target}" + line[m.end():]
    return "".join(lines)


def relative_again(source: str, module: str, is_package: bool, new_modules: set[str]) -> str:
    """In a file that stays and writes relative imports, ``from workbench.<new> import x`` -> ``from ..<new>``.

    Only imports of a module the move created change, so a file keeps one import style.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    package = module.split(".") if is_package else module.split(".")[:-1]
    lines = source.splitlines(keepends=True)
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in new_modules:
            parts = node.module.split(".")
            common = 0
            while common < min(len(parts), len(package)) and parts[common] == package[common]:
                common += 1
            if common == 0:
                continue
            relative = "." * (len(package) - common + 1) + ".".join(parts[common:])
            edits.append((node.lineno, node.col_offset, node.module, relative))
    for lineno, col, absolute, relative in sorted(edits, reverse=True):
        line = lines[lineno - 1]
        m = re.compile(r"from\s+" + re.escape(absolute) + r"(?=\s)").match(line, col)
        if m:
            lines[lineno - 1] = line[:m.start()] + f"from {relative}" + line[m.end():]
    return "".join(lines)


def _reaches(target: str, names: list[str], moved: dict[str, str]) -> bool:
    """Whether ``from target import names`` touches a moved module or package."""
    parts = target.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return bool(prefixes & moved.keys()) or any(f"{target}.{n}" in moved for n in names)


def submodule_imports(source: str, modules: dict[str, str]) -> str:
    """``from pkg import mod`` of a moved module -> ``from newpkg import newmod as mod`` (names keep working)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    edits = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
            continue
        moved = [a for a in node.names if f"{node.module}.{a.name}" in modules]
        if not moved:
            continue
        statements = []
        rest = [a for a in node.names if a not in moved]
        if rest:
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in rest)
            statements.append(f"from {node.module} import {names}")
        for a in moved:
            new = modules[f"{node.module}.{a.name}"]
            new_pkg, new_name = new.rsplit(".", 1)
            local = a.asname or a.name
            statements.append(f"from {new_pkg} import {new_name}" + ("" if local == new_name else f" as {local}"))
        edits.append((node, statements))
    if not edits:
        return source
    lines = source.splitlines(keepends=True)
    for node, statements in sorted(edits, key=lambda e: (e[0].lineno, e[0].col_offset), reverse=True):
        first, last = lines[node.lineno - 1], lines[node.end_lineno - 1]
        indent, tail = first[: node.col_offset], last[node.end_col_offset:]
        comment = tail.rstrip("\n") if tail.strip().startswith("#") else ""
        text = (comment + "\n" + indent).join(statements)  # a trailing comment (noqa) goes on every line
        lines[node.lineno - 1: node.end_lineno] = [indent + text + tail]
    return "".join(lines)


# ---------------------------------------------------------------- rewriting names and paths in any text


def _dotted_pattern(names: list[str]) -> re.Pattern:
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=lambda n: (-len(n), n)))
    return re.compile(r"(?<![\w.])(" + alternatives + r")(?![\w])")


def _path_table(p: Plan) -> dict[str, str]:
    """Old path -> new path for files and folders, as they appear in docs and code."""
    table = dict(p.moves)
    for old_folder, new_folder in FOLDERS.items():
        table.setdefault(old_folder + "/", new_folder + "/")
    short = {}
    for old, new in table.items():  # docs often drop the package prefix: dp/engine.py
        if old.startswith("workbench/") and old.endswith(".py"):
            short[old[len("workbench/"):]] = new[len("workbench/"):]
    return {**short, **table}


class Rewriter:
    def __init__(self, p: Plan):
        self.modules = p.modules
        self.dotted = _dotted_pattern(list(p.modules)) if p.modules else None
        self.paths = _path_table(p)
        files = [n for n in self.paths if not n.endswith("/")]
        folders = [n for n in self.paths if n.endswith("/")]
        self.file_re = self._alternatives(files, r"(?![\w])")
        self.folder_re = self._alternatives(folders, "")

    @staticmethod
    def _alternatives(names: list[str], tail: str) -> re.Pattern | None:
        if not names:
            return None
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=lambda n: (-len(n), n)))
        return re.compile(r"(?<![\w/.-])(" + alternatives + ")" + tail)

    def text(self, text: str) -> str:
        if self.dotted is not None:
            text = self.dotted.sub(lambda m: self.modules[m.group(1)], text)
        for pattern in (self.file_re, self.folder_re):
            if pattern is not None:
                text = pattern.sub(lambda m: self.paths[m.group(1)], text)
        return text


def relative_mod_refs(text: str, module: str, is_package: bool, modules: dict[str, str]) -> str:
    """Docstring references ``:mod:`.params``` of a moved module made absolute (new name)."""
    package = module if is_package else module.rsplit(".", 1)[0]

    def fix(m: re.Match) -> str:
        old = f"{package}.{m.group(1)}"
        return f":mod:`{modules[old]}`" if old in modules else m.group(0)

    return re.sub(r":mod:`\.([\w.]+)`", fix, text)


def shift_file_parents(source: str, extra: int) -> str:
    """In a test moved ``extra`` folders deeper, ``Path(__file__)...parents[k]`` still names the same folder."""
    if extra <= 0:
        return source
    source = re.sub(r"(Path\(__file__\)(?:\.resolve\(\))?)\.parents\[(\d+)\]",
                    lambda m: f"{m.group(1)}.parents[{int(m.group(2)) + extra}]", source)
    return re.sub(r"(Path\(__file__\)(?:\.resolve\(\))?)((?:\.parent)+)(?![\w\[])",
                  lambda m: f"{m.group(1)}.parents[{m.group(2).count('.parent') - 1 + extra}]", source)


# ---------------------------------------------------------------- applying


def text_files(root: Path) -> list[str]:
    out = [f for f in ROOT_FILES if (root / f).is_file()]
    for folder in ROOTS:
        base = root / folder
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.suffix in TEXT_SUFFIXES and not path.is_symlink():
                    out.append(path.relative_to(root).as_posix())
    return sorted(set(out) - KEEP)


def rewrite(root: Path, p: Plan, dry_run: bool) -> list[str]:
    """Rewrite every text file in place (before the moves: paths are the old ones). Returns the changed files."""
    rewriter = Rewriter(p)
    new_modules = set(p.modules.values())
    new_modules |= {m.rsplit(".", 1)[0] for m in new_modules}  # and their packages
    changed = []
    for rel in text_files(root):
        path = root / rel
        try:
            original = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        text = original
        if rel.endswith(".py"):
            module, is_package = module_of(rel), rel.endswith("__init__.py")
            if rel in p.moves or any(rel.startswith(f + "/") for f in FOLDERS):
                text = absolute_imports(text, module, is_package)
                text = relative_mod_refs(text, module, is_package, p.modules)
            elif p.modules:  # a file that stays keeps its relative imports, but not those into a moved module
                text = absolute_imports(text, module, is_package, p.modules)
            if p.modules:
                text = submodule_imports(text, p.modules)
            if rel in p.moves and rel.startswith("tests/"):
                text = shift_file_parents(text, len(Path(p.moves[rel]).parts) - len(Path(rel).parts))
        text = rewriter.text(text)
        if (rel.endswith(".py") and rel.startswith("workbench/") and rel not in p.moves
                and not any(rel.startswith(f + "/") for f in FOLDERS) and re.search(r"^\s*from \.", original, re.M)):
            text = relative_again(text, module_of(rel), rel.endswith("__init__.py"), new_modules)
        if text != original:
            changed.append(rel)
            if not dry_run:
                path.write_text(text, encoding="utf-8")
    return changed


def _merge_inits(root: Path, p: Plan) -> None:
    for new, olds in sorted(p.merged_inits.items()):
        docs, code = [], []
        for old in olds:
            source = (root / old).read_text(encoding="utf-8")
            tree = ast.parse(source)
            doc = ast.get_docstring(tree, clean=False)
            if doc:
                docs.append(doc.strip())
            body = tree.body[1:] if doc else tree.body
            code += [ast.get_source_segment(source, node) for node in body
                     if not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
        header = NEW_PACKAGES.get(str(Path(new).parent), '""""""\n').rstrip().rstrip('"').rstrip()
        text = header + "\n\n" + "\n\n".join(docs) + '\n"""\n'
        if code:
            text += "\n" + "\n".join(c for c in code if c) + "\n"
        (root / new).parent.mkdir(parents=True, exist_ok=True)
        (root / new).write_text(text, encoding="utf-8")
        for old in olds:
            (root / old).unlink()


def move(root: Path, p: Plan) -> None:
    _merge_inits(root, p)
    for old, new in sorted(p.moves.items()):
        target = root / new
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(root / old), str(target))
    for folder in sorted({str(Path(n).parent) for n in p.moves.values()} | set(NEW_PACKAGES)):
        _ensure_package(root, folder)
    for old_folder in sorted(FOLDERS, reverse=True):
        _remove_if_empty(root / old_folder)


def _ensure_package(root: Path, folder: str) -> None:
    """Every folder the move fills with Python files gets an ``__init__.py`` (tests need it for unique names)."""
    path = root / folder
    if not path.is_dir() or (path / "__init__.py").exists():
        return
    if not any(path.glob("*.py")) and folder not in NEW_PACKAGES and not any(path.glob("*/__init__.py")):
        return
    doc = NEW_PACKAGES.get(folder)
    if doc is None:
        doc = f'"""Tests of {folder[len("tests/"):]}."""\n' if folder.startswith("tests/") else '""""""\n'
    (path / "__init__.py").write_text(doc, encoding="utf-8")
    parent = str(Path(folder).parent)
    if parent not in ("", ".", "workbench", "tests"):
        _ensure_package(root, parent)


def _remove_if_empty(folder: Path) -> None:
    if not folder.is_dir():
        return
    for cache in folder.rglob("__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    for sub in sorted((d for d in folder.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
        if not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root (default: here)")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "workbench").is_dir():
        print(f"restructure: {root} has no workbench/ folder", file=sys.stderr)
        return 2
    p = plan(root)
    changed = rewrite(root, p, args.dry_run)
    if not args.dry_run:
        move(root, p)
    for old, new in sorted(p.moves.items()):
        print(f"move    {old} -> {new}")
    for new, olds in sorted(p.merged_inits.items()):
        print(f"merge   {' + '.join(olds)} -> {new}")
    for rel in changed:
        print(f"rewrite {rel}")
    for rel in p.unplaced_tests:
        print(f"left    {rel} (no folder known for it: move it by hand, or add it to TESTS and run again)")
    if not p.moves and not changed:
        print("restructure: nothing to do (already in the new shape)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
