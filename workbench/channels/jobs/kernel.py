"""The notebook side of code jobs: ``ds.code_job(...)``.

>>> job = ds.code_job("analysis.ipynb", parameters={"min_age": 65},
...                   outputs=["summary.csv", "km_curve.png"])   # doctest: +SKIP
>>> job.run_on_mock()          # locally, on the public DP mock: free  # doctest: +SKIP
>>> job.submit(purpose="readmission study")                    # doctest: +SKIP
>>> job.status()               # pending -> approved -> running -> held -> released  # doctest: +SKIP
>>> job.outputs()              # what an owner released, each with its check report  # doctest: +SKIP

The code travels as text: a notebook's JSON (outputs stripped) or a ``.py``
file. In the job, ``data_path`` (the dataset file, CSV or Parquet) and
``output_dir`` (where to write the declared outputs) are set like papermill
parameters; ``import workbench_job`` offers ``load(data_path)`` and
``dp_release(...)``.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import ValidationError

from ...errors import ComputationFailed, InvalidQuery
from . import runtime
from .wire import Check, CodeJobInfo, CollectedOutput, JobSubmission

if TYPE_CHECKING:  # pragma: no cover
    from ...client.dataset import RemoteDataset

WAIT_FOR = ("held", "released", "withheld", "failed", "rejected")


def code_text(path: str | Path) -> tuple[str, str]:
    """``(kind, text)`` of a notebook (outputs and execution counts stripped) or a ``.py`` file."""
    path = Path(path)
    if path.suffix == ".py":
        return "py", path.read_text()
    if path.suffix != ".ipynb":
        raise InvalidQuery(f"A code job is a .ipynb notebook or a .py script, not {path.name}.",
                           code="invalid_notebook")
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
            cell.metadata.pop("papermill", None)
    notebook.metadata.pop("papermill", None)
    return "ipynb", nbformat.writes(notebook)


@dataclass
class JobFile:
    """One output file: from a mock run, or released by an owner (with its disclosure check report)."""

    name: str
    content: bytes
    media_type: str = ""
    checks: list[Check] = field(default_factory=list)
    release_id: int | None = None

    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def frame(self) -> pd.DataFrame:
        """A CSV or JSON table as a DataFrame."""
        if self.name.endswith(".json"):
            return pd.read_json(io.StringIO(self.text()))
        return pd.read_csv(io.BytesIO(self.content))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_bytes(self.content)
        return path

    def checks_frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.model_dump() for c in self.checks], columns=["check", "ok", "detail"])

    def _repr_png_(self) -> bytes | None:
        return self.content if self.name.endswith(".png") else None

    def __repr__(self) -> str:
        return f"<JobFile {self.name} ({len(self.content)} bytes)>"


@dataclass
class MockRun:
    """What a run on the DP mock produced (nothing left your machine; nothing was spent)."""

    outputs: dict[str, JobFile]
    error: str | None
    log: Path

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        state = "ok" if self.ok else f"failed: {self.error}"
        return f"<MockRun {state}; outputs: {', '.join(self.outputs) or 'none'}>"


class CodeJob:
    """Code to run beside a dataset, once its owner approves it. Build with :meth:`RemoteDataset.code_job`."""

    def __init__(self, dataset: "RemoteDataset", submission: JobSubmission):
        self.dataset, self.submission = dataset, submission
        self.info: CodeJobInfo | None = None

    @classmethod
    def attach(cls, dataset: "RemoteDataset", job_id: int) -> "CodeJob":
        """A handle to a job submitted earlier (e.g. from another notebook)."""
        info = CodeJobInfo.model_validate(dataset.node.request("GET", f"/jobs/{int(job_id)}"))
        job = cls(dataset, JobSubmission(code=info.code or "", code_name=info.code_name, kind=info.kind,
                                         parameters=info.parameters, outputs=info.outputs, dp_epsilon=info.dp_epsilon))
        job.info = info
        return job

    @property
    def job_id(self) -> int:
        if self.info is None:
            raise InvalidQuery("This job is not submitted yet: call job.submit(...).", code="invalid_query")
        return self.info.job_id

    # ---------------------------------------------------------------- free, local

    def run_on_mock(self, timeout_s: float = 600.0) -> MockRun:
        """Run the same code here, on the dataset's public DP mock (``ds.mock()``): free, no sandbox needed."""
        mock = self.dataset.mock().data
        folder = Path(tempfile.mkdtemp(prefix="workbench-mock-job-"))
        (folder / "outputs").mkdir()
        data_path = folder / "mock.parquet"
        mock.to_parquet(data_path, index=False)
        shutil.copyfile(runtime.__file__, folder / "workbench_job.py")
        parameters = dict(self.submission.parameters, data_path=str(data_path), output_dir=str(folder / "outputs"))
        error, log = (_mock_notebook if self.submission.kind == "ipynb" else _mock_script)(
            self.submission.code, parameters, folder, timeout_s)
        outputs = {}
        for name in self.submission.outputs:
            path = folder / "outputs" / name
            if path.is_file():
                outputs[name] = JobFile(name, path.read_bytes())
        return MockRun(outputs, error, log)

    # ---------------------------------------------------------------- on the node

    def submit(self, purpose: str = "", note: str = "", grant_id: int | None = None) -> "CodeJob":
        """Send the code (as text) for an owner's approval. Its hash covers code, parameters, outputs and the
        dataset version; if an owner approved the same hash before, it runs at once."""
        body = self.submission.model_copy(update={"purpose": purpose, "note": note,
                                                  "grant_id": grant_id or self.dataset.grant_id})
        raw = self.dataset.node.request("POST", self.dataset.endpoint("/jobs"),
                                        json=body.model_dump(mode="json", exclude_none=True))
        self.info = CodeJobInfo.model_validate(raw)
        return self

    def refresh(self) -> CodeJobInfo:
        self.info = CodeJobInfo.model_validate(self.dataset.node.request("GET", f"/jobs/{self.job_id}"))
        return self.info

    def status(self) -> str:
        """pending, approved, running, held (outputs wait for an owner), released, withheld, rejected, failed."""
        return self.refresh().status

    def wait(self, until: tuple[str, ...] = WAIT_FOR, timeout_s: float = 900.0, poll_s: float = 1.0) -> str:
        """Poll until the job reaches one of ``until`` (by default: it ran, or was rejected)."""
        deadline = time.monotonic() + timeout_s
        while (status := self.status()) not in until:
            if time.monotonic() > deadline:
                raise ComputationFailed(f"Code job {self.job_id} is still {status} after {timeout_s:g} s.",
                                        code="computation_timeout")
            time.sleep(poll_s)
        return status

    def checks(self) -> pd.DataFrame:
        """Your job's outputs with their state (the check details are for the owner)."""
        info = self.refresh()
        return pd.DataFrame([{"output": o.name, "status": o.status, "size": o.size, "problem": o.problem}
                             for o in info.results])

    def outputs(self) -> dict[str, JobFile]:
        """Every output an owner released, collected through the node's release gate (audited, zero DP cost)."""
        info = self.refresh()
        files = {}
        for result in info.results:
            if result.status == "approved":
                raw = self.dataset.node.request("POST", f"/jobs/{self.job_id}/outputs/{result.name}/collect")
                body = CollectedOutput.model_validate(raw)
                files[result.name] = JobFile(result.name, base64.b64decode(body.content_b64), body.media_type,
                                             body.checks, body.release_id)
        return files

    def rerun(self) -> "CodeJob":
        """The approved code again, on the dataset's current version: no new approval; outputs held again."""
        job = CodeJob(self.dataset, self.submission)
        job.info = CodeJobInfo.model_validate(self.dataset.node.request("POST", f"/jobs/{self.job_id}/rerun"))
        return job

    def __repr__(self) -> str:
        state = "not submitted" if self.info is None else f"job {self.info.job_id}: {self.info.status}"
        return f"<CodeJob {self.submission.code_name} on {self.dataset.name!r} ({state})>"


def code_job(dataset: "RemoteDataset", code: str | Path, parameters: dict[str, Any] | None = None,
             outputs: list[str] | tuple[str, ...] = (), *, dp_epsilon: float = 0.0) -> CodeJob:
    """A code job on ``dataset``: ``code`` is the path of a ``.ipynb`` notebook or a ``.py`` script.

    Privacy guarantee: nothing the code computes reaches you unless an owner of the dataset released it after
    reading the code, its parameters and the automatic disclosure checks of each output; or, with
    ``dp_epsilon > 0``, as DP answers of the node (``workbench_job.dp_release``) charged to your grant.
    """
    kind, text = code_text(code)
    try:
        submission = JobSubmission(code=text, code_name=Path(code).name, kind=kind, parameters=parameters or {},
                                   outputs=list(outputs), dp_epsilon=dp_epsilon)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidQuery(f"This code job cannot be sent: {problems}. Parameters are JSON values (numbers, "
                           "text, lists, flat objects); outputs are file names ending in .csv, .json, .txt, .md, "
                           ".png, .jpg or .svg.", code="invalid_query") from None
    return CodeJob(dataset, submission)


def _mock_notebook(code: str, parameters: dict, folder: Path, timeout_s: float) -> tuple[str | None, Path]:
    import papermill

    source, executed = folder / "job.ipynb", folder / "executed.ipynb"
    source.write_text(code)
    try:
        papermill.execute_notebook(str(source), str(executed), parameters=parameters, kernel_name="python3",
                                   progress_bar=False, cwd=str(folder), execution_timeout=timeout_s)
    except papermill.PapermillExecutionError as exc:
        return f"{exc.ename}: {exc.evalue}", executed
    except Exception as exc:  # noqa: BLE001 - a cell past the timeout, a dead kernel: the run failed, here only
        return f"{type(exc).__name__}: {exc}"[:2000], executed
    return None, executed


def _mock_script(code: str, parameters: dict, folder: Path, timeout_s: float) -> tuple[str | None, Path]:
    source, log = folder / "job.py", folder / "job.log"
    source.write_text(runtime._script_header(parameters) + code)
    with open(log, "wb") as out:
        try:
            done = subprocess.run([sys.executable, str(source)], cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return f"stopped: the script ran longer than {timeout_s:g} s", log
    return (None if done.returncode == 0 else f"the script exited with status {done.returncode}"), log


class _CodeJobMethods:
    """What this channel adds to a dataset handle (registered below): ``ds.code_job(...)``."""

    code_job = code_job


def _register() -> None:
    from ...client.dataset import RemoteDataset
    from ...client.handles import register

    register(RemoteDataset, _CodeJobMethods)


_register()
