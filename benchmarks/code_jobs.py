"""What the code-job sandbox costs: the same job run directly and in the bubblewrap sandbox, side by side.

For a ``.py`` script and a papermill notebook that each read the demo patients table (20,000 rows) and write a
group-by CSV, in one run:

* direct: the job runner (:mod:`workbench.channels.jobs.runtime`'s steps) in a temporary folder, no sandbox;
* sandboxed: the node's real command line (bwrap, prlimit, setpriv), task on stdin, result stream read back;

and the disclosure checks the node then runs on the output and the log. Each timing is the median of
``--repeat`` runs (wall-clock seconds).

    .venv/bin/python benchmarks/code_jobs.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from workbench.channels.jobs import disclosure, sandbox
from workbench.channels.jobs.worker import execute
from workbench.demo.data import patients
from workbench.node.settings import CodeJobSettings

SCRIPT = """import os, workbench_job
df = workbench_job.load(data_path)
df.groupby(["sex", "diagnosis"]).size().rename("n").reset_index().to_csv(os.path.join(output_dir, "out.csv"),
                                                                        index=False)
"""


def notebook() -> str:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('data_path = ""\noutput_dir = "."', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(SCRIPT)]
    return nbformat.writes(nb)


def direct(kind: str, code: str, data: Path) -> float:
    """The same steps as the runner, in a temporary folder, without the sandbox."""
    from workbench.channels.jobs import kernel

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "outputs").mkdir()
        (root / "workbench_job.py").write_text(Path(kernel.runtime.__file__).read_text())
        parameters = {"data_path": str(data), "output_dir": str(root / "outputs")}
        run = kernel._mock_notebook if kind == "ipynb" else kernel._mock_script
        started = time.perf_counter()
        error, _ = run(code, parameters, root, 600)
        took = time.perf_counter() - started
        assert error is None and (root / "outputs" / "out.csv").exists(), error
    return took


def sandboxed(kind: str, code: str, data: Path) -> tuple[float, dict]:
    limits = sandbox.Limits.of(CodeJobSettings())
    task = {"kind": kind, "code": code, "parameters": {}, "outputs": ["out.csv"],
            "max_output_bytes": limits.output_bytes, "data_path": "/data/dataset.parquet"}
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        result = execute(sandbox.command(data, limits, Path(scratch)), task, limits)
        took = time.perf_counter() - started
    assert result.error is None and result.document is not None, result.error
    return took, result.document.model_dump()


def checks_time(document: dict, entry) -> float:
    started = time.perf_counter()
    ctx = disclosure.context(entry)
    for piece in [*document["outputs"], document["log"]]:
        disclosure.check(piece["name"], base64.b64decode(piece["b64"]), ctx)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from tests.conftest import make_config
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    with tempfile.TemporaryDirectory() as folder:
        service = NodeService(NodeConfig.load(make_config(Path(folder))), start_workers=False)
        entry = service.catalog.get("patients")
        data = Path(folder) / "patients.parquet"
        patients(20_000, 11).write_parquet(data)
        data.chmod(0o644)
        rows = []
        for kind, code in (("py", SCRIPT), ("ipynb", notebook())):
            plain, boxed, checks = [], [], []
            for _ in tqdm(range(args.repeat), desc=f"{kind} job", file=sys.stderr):
                plain.append(direct(kind, code, data))
                took, document = sandboxed(kind, code, data)
                boxed.append(took)
                checks.append(checks_time(document, entry))
            d, s, c = (statistics.median(x) for x in (plain, boxed, checks))
            rows.append((kind, d, s, s / d, c))
        service.close()
    print(f"{'job':6s} {'direct s':>9s} {'sandbox s':>10s} {'ratio':>6s} {'checks s':>9s}")
    for kind, d, s, ratio, c in rows:
        print(f"{kind:6s} {d:9.2f} {s:10.2f} {ratio:6.2f} {c:9.2f}")


if __name__ == "__main__":
    main()
