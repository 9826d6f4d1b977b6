"""What runs INSIDE the sandbox: the job runner, and the job's one helper API (``workbench_job``).

This file is bind-mounted read-only into the sandbox as
``/opt/workbench/workbench_job.py`` and imports only the standard library and
papermill (it cannot import :mod:`workbench`: the package is not mounted).

As a program (``python workbench_job.py < task.json``) it executes the job's
notebook with papermill (a ``.py`` file as a script), then writes ONE JSON
document to the stdout it was started with: the job's log and each declared
output, base64-encoded. The job's own stdout and stderr go to a log file, not
to that stream. The node treats the stream as untrusted (the job's code runs
in the same sandbox and could forge it): it reads at most a bounded number of
bytes, validates it, checks every output and holds all of it for an owner.

As a module (``import workbench_job``) it offers :func:`dp_release`, the
narrow DP channel: a DP query sent over the one unix socket the node mounted
for this job, answered by the node's release gate and charged to the
analyst's grant, within the budget the owner approved with the code.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import traceback

WORK = "/job"
OUTPUTS = "/job/outputs"
LOG = "/job/job.log"
DP_SOCKET_ENV = "WORKBENCH_DP_SOCKET"


def load(data_path: str):
    """The dataset (or, in ``run_on_mock``, its DP mock) as a pandas DataFrame, whatever its file format."""
    import pandas as pd

    return pd.read_csv(data_path) if data_path.endswith(".csv") else pd.read_parquet(data_path)


def dp_release(query: dict, epsilon: float, delta: float = 0.0):
    """Release a DP answer from inside a job: ``query`` is a DP query spec (e.g. ``{"kind": "count",
    "by": ["sex"]}``). Returns a pandas DataFrame (estimate, lower, upper per group).

    Privacy guarantee: the node answers with its DP channel, (epsilon, delta)-DP at the dataset's privacy unit,
    charged to the analyst's grant through the release gate; the job may spend at most the epsilon its owner
    approved. The answer is released to the analyst too (it is DP), without an owner's review.
    """
    path = os.environ.get(DP_SOCKET_ENV)
    if not path:
        raise RuntimeError("This job has no DP channel (it was submitted with dp_epsilon=0).")
    request = json.dumps({"query": query, "epsilon": epsilon, "delta": delta}).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(request)
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    body = json.loads(answer or b"{}")
    if "error" in body:
        raise RuntimeError(f"{body['error'].get('code')}: {body['error'].get('message')}")
    table = body["table"]
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - the venv has pandas
        return table
    frame = pd.DataFrame(table["data"], columns=table["columns"])
    frame.attrs.update({"epsilon": body.get("epsilon"), "release_id": body.get("release_id")})
    return frame


def _script_header(parameters: dict) -> str:
    """A ``.py`` job's parameters, as papermill would inject them into a notebook (JSON data, not code)."""
    literal = json.dumps(json.dumps(parameters))
    return f"import json as _wb_json\nglobals().update(_wb_json.loads({literal}))\ndel _wb_json\n"


def _run_notebook(code: str, parameters: dict) -> tuple[str | None, str]:
    import papermill

    source, executed = os.path.join(WORK, "job.ipynb"), os.path.join(WORK, "executed.ipynb")
    with open(source, "w") as fh:
        fh.write(code)
    error = None
    try:
        papermill.execute_notebook(source, executed, parameters=parameters, kernel_name="python3",
                                   progress_bar=False, cwd=WORK, log_output=False)
    except papermill.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"[:2000]
    except Exception as exc:  # noqa: BLE001 - reported to the owner and the analyst through the held log
        error = f"{type(exc).__name__}: {exc}"[:2000]
    return error, executed


def _run_script(code: str, parameters: dict) -> tuple[str | None, str]:
    source = os.path.join(WORK, "job.py")
    with open(source, "w") as fh:
        fh.write(_script_header(parameters) + code)
    done = subprocess.run([sys.executable, source], cwd=WORK, stdin=subprocess.DEVNULL)
    return (None if done.returncode == 0 else f"the script exited with status {done.returncode}"), LOG


def _read(path: str, limit: int) -> dict:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return {"problem": "missing"}
    if not os.path.isfile(path) or os.path.islink(path):
        return {"problem": "not a regular file"}
    if info.st_size > limit:
        return {"problem": f"larger than {limit} bytes"}
    with open(path, "rb") as fh:
        return {"b64": base64.b64encode(fh.read(limit + 1)[:limit]).decode()}


def _not_dumpable() -> None:
    """Make this runner non-dumpable: the job's processes (the same uid under a non-root node, and under a root
    one after the drop) then cannot open its ``/proc`` fds (the result stream) nor ptrace it, which would need
    CAP_SYS_PTRACE, and the sandbox has no capability. Its children are dumpable again after their exec."""
    import ctypes

    pr_set_dumpable = 4
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def main() -> None:
    _not_dumpable()
    os.makedirs(os.path.join(WORK, "tmp"), exist_ok=True)
    result_stream = os.fdopen(os.dup(1), "w")  # non-inheritable: the job's processes never get it
    log_fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    task = json.loads(sys.stdin.read())
    os.makedirs(OUTPUTS, exist_ok=True)
    parameters = dict(task["parameters"], data_path=task["data_path"], output_dir=OUTPUTS)
    try:
        run = _run_notebook if task["kind"] == "ipynb" else _run_script
        error, log_path = run(task["code"], parameters)
    except Exception:  # noqa: BLE001
        error, log_path = traceback.format_exc(limit=2)[-2000:], LOG
    limit = int(task["max_output_bytes"])
    log_name = "executed.ipynb" if task["kind"] == "ipynb" else "job.log"
    document = {"error": error, "log": dict(_read(log_path, limit), name=log_name),
                "outputs": [dict(_read(os.path.join(OUTPUTS, name), limit), name=name) for name in task["outputs"]]}
    result_stream.write(json.dumps(document))
    result_stream.flush()


if __name__ == "__main__":
    main()
