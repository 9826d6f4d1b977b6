"""Hostile code, tried the way an attacker would (real bubblewrap, real node app, tight limits).

Each attack is approved by an owner (the worst case: the owner missed it) and
then must be stopped by the sandbox or flagged by the disclosure checks; the
node keeps answering; and nothing reaches the analyst without an owner's
release.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from workbench.channels.jobs.sandbox import SANDBOX_UID
from workbench.errors import NotAuthorized, NotSupported

from .conftest import TIGHT, _close, _node, needs_bwrap
from .honest_analysis import notebook_text, write_notebook

pytestmark = needs_bwrap

PROBE = """
import json, os, socket
def attempt(name, action):
    try:
        action()
        results[name] = "ALLOWED"
    except Exception as exc:
        results[name] = type(exc).__name__
results = {}
"""


def run_job(nodes, tmp_path, code: str, outputs: list[str], parameters: dict | None = None, name: str = "job.py"):
    """Submit as the analyst, approve as an owner, wait for the run; return the job and the owner's view."""
    path = tmp_path / name
    path.write_text(code)
    job = nodes["analyst"].dataset("patients").code_job(path, parameters=parameters or {}, outputs=outputs)
    job.submit(purpose="attack test")
    nodes["owner"].request("POST", f"/jobs/{job.job_id}/approve", json={"reason": "missed it"})
    job.wait(timeout_s=240, poll_s=0.5)
    return job, nodes["owner"].request("GET", f"/jobs/{job.job_id}")


def results_of(view: dict) -> dict:
    return {r["name"]: r for r in view["results"]}


def assert_nothing_left(nodes, job) -> None:
    """The analyst gets nothing before an owner's release, and the node still answers."""
    assert job.outputs() == {}
    for name in job.info.outputs:
        with pytest.raises((NotAuthorized, Exception)) as caught:
            nodes["analyst"].request("POST", f"/jobs/{job.job_id}/outputs/{name}/collect")
        assert getattr(caught.value, "code", None) in ("not_approved", "not_found")
    assert nodes["analyst"].dataset("patients").count().release(epsilon=0.01) is not None


def job_uid() -> int:
    """The uid a job runs as: the sandbox uid under a root node, the node's own uid otherwise."""
    return SANDBOX_UID if os.geteuid() == 0 else os.getuid()


def no_sandbox_processes_left() -> bool:
    """No process of the job's uid is alive in another PID namespace (every sandbox has its own)."""
    own = os.readlink("/proc/self/ns/pid")
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and proc.stat().st_uid == job_uid() and os.readlink(proc / "ns/pid") != own:
                return False
        except OSError:  # gone meanwhile
            continue
    return True


@pytest.mark.parametrize("kind", ["py", "ipynb"])  # a notebook's kernel runs inside the same sandbox
def test_network_state_folder_signing_key_and_other_datasets_are_out_of_reach(tight_node, tmp_path, kind):
    service = tight_node["service"]
    state = service.config.node.state_dir
    secrets = {"signing_key": str(state / "signing_key.pem"), "database": str(state / "node.sqlite"),
               "owner_token": str(state / "owner.token"), "other_dataset": str(service.catalog.get("iris").path),
               "real_dataset_path": str(service.catalog.get("patients").path)}
    code = PROBE + """
attempt("tcp to 1.1.1.1", lambda: socket.create_connection(("1.1.1.1", 80), timeout=3))
attempt("tcp to the host's loopback", lambda: socket.create_connection(("127.0.0.1", 22), timeout=3))
attempt("dns", lambda: socket.getaddrinfo("example.org", 80))
for name, path in secrets.items():
    attempt("read " + name, lambda: open(path, "rb").read(1))
attempt("list the state folder", lambda: os.listdir(os.path.dirname(secrets["signing_key"])))
attempt("write the dataset", lambda: open(data_path, "ab").write(b"x"))
attempt("write outside /job", lambda: open("/usr/evil", "w").write("x"))
results["uid"] = os.getuid()
results["environment"] = sorted(os.environ)
results["processes"] = sorted(p for p in os.listdir("/proc") if p.isdigit())
with open(os.path.join(output_dir, "probe.json"), "w") as fh:
    json.dump(results, fh)
"""
    if kind == "ipynb":
        code = notebook_text(code, parameters="secrets = {}\ndata_path = ''\noutput_dir = ''")
    job, view = run_job(tight_node, tmp_path, code, ["probe.json"], {"secrets": secrets}, name=f"probe.{kind}")
    assert view["status"] == "held", view["error"]
    probe = json.loads(results_of(view)["probe.json"]["preview"])
    allowed = [k for k, v in probe.items() if v == "ALLOWED"]
    assert allowed == [], probe
    assert probe["uid"] == job_uid()
    assert "WORKBENCH_TOKEN" not in probe["environment"] and len(probe["processes"]) < 10
    assert_nothing_left(tight_node, job)


@pytest.mark.slow  # each waits for a limit (CPU or wall time)
@pytest.mark.parametrize("attack, code, limit", [
    ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
     "wall"),
    ("run forever (CPU)", "while True:\n    pass\n", "cpu"),
    ("run forever (sleeping)", "import time\ntime.sleep(10**6)\n", "wall"),
])
def test_runaway_code_is_stopped_and_the_node_stays_up(tight_node, tmp_path, attack, code, limit):
    started = time.monotonic()
    job, view = run_job(tight_node, tmp_path, code, ["never.csv"])
    took = time.monotonic() - started
    assert view["status"] == "failed", attack
    assert took < TIGHT["wall_seconds"] + 60
    assert view["error"].startswith("stopped") or "exited" in view["error"] or "raised" in view["error"], view
    deadline = time.monotonic() + 30
    while not no_sandbox_processes_left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert no_sandbox_processes_left(), f"{attack}: sandbox processes survived the job"
    assert_nothing_left(tight_node, job)


def test_a_50_gb_allocation_fails_inside_the_sandbox(tight_node, tmp_path):
    job, view = run_job(tight_node, tmp_path, "buffer = bytearray(50 * 2**30)\n", ["never.csv"])
    assert view["status"] == "failed"
    log = results_of(view)["job.log"]
    assert "MemoryError" in log["preview"]  # in the held log: the owner sees why
    assert job.info.error == "the script exited with status 1"  # the analyst sees no message
    assert_nothing_left(tight_node, job)


MANY_ALLOCATIONS = """import os, time
children = []
for _ in range(5):  # each child stays under the per-process address-space limit; together they do not
    pid = os.fork()
    if pid == 0:
        block = bytearray(300 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1  # touch every page: resident, not just reserved
        time.sleep(600)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
open(os.path.join(output_dir, "done.txt"), "w").write("all allocated")
"""


def test_memory_spread_over_many_processes_is_stopped_at_the_limit(tmp_path):
    """50 GB asked for as many allocations below the per-process limit: the node adds up the sandbox's
    resident memory and stops it at ``memory_mb`` in all (here 512 MB against 5 x 300 MB)."""
    nodes = _node(tmp_path / "node", dict(TIGHT, memory_mb=512), mock=False)
    try:
        started = time.monotonic()
        job, view = run_job(nodes, tmp_path, MANY_ALLOCATIONS, ["done.txt"])
        assert view["status"] == "failed"
        assert "memory limit (512 MB)" in view["error"], view["error"]
        assert time.monotonic() - started < TIGHT["wall_seconds"]  # the memory watch stopped it, not the clock
        assert "done.txt" not in results_of(view)
        deadline = time.monotonic() + 30
        while not no_sandbox_processes_left() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert no_sandbox_processes_left()
        assert_nothing_left(nodes, job)
    finally:
        _close(nodes)


def test_writing_10_gb_hits_the_work_folder_limit(tight_node, tmp_path):
    code = """import os
chunk = b"x" * (1 << 20)
with open(os.path.join(output_dir, "big.txt"), "wb") as fh:
    for _ in range(10 * 1024):
        fh.write(chunk)
"""
    job, view = run_job(tight_node, tmp_path, code, ["big.txt"])
    assert view["status"] == "failed"
    big = results_of(view).get("big.txt")
    assert big is None or big["size"] <= TIGHT["max_output_mb"] * 2**20
    assert_nothing_left(tight_node, job)


def test_raw_rows_written_to_an_output_are_flagged_and_held(tight_node, tmp_path):
    code = """import os, workbench_job
df = workbench_job.load(data_path)
df.to_csv(os.path.join(output_dir, "rows.csv"), index=False)
df.drop(columns=["patient_id"]).sample(200, random_state=1).to_csv(os.path.join(output_dir, "sample.csv"),
                                                                   index=False)
"""
    job, view = run_job(tight_node, tmp_path, code, ["rows.csv", "sample.csv"])
    assert view["status"] == "held"
    rows = {c["check"]: c for c in results_of(view)["rows.csv"]["checks"]}
    assert not rows["row-level size"]["ok"] and not rows["identifiers"]["ok"] and not rows["copied rows"]["ok"]
    sample = {c["check"]: c for c in results_of(view)["sample.csv"]["checks"]}
    assert not sample["copied rows"]["ok"], sample  # a sample without identifiers is still input rows
    assert_nothing_left(tight_node, job)
    tight_node["owner"].request("POST", f"/jobs/{job.job_id}/withhold", json={"reason": "row-level data"})
    assert job.status() == "withheld" and job.outputs() == {}


def test_rows_printed_into_the_log_are_flagged(tight_node, tmp_path):
    printing = """import workbench_job
df = workbench_job.load(data_path)
print(df.head(30).to_string())
print(df[["age", "bmi", "visits", "cost"]].tail(40).to_string())
"""
    path = write_notebook(tmp_path / "leaky.ipynb", printing)
    job = tight_node["analyst"].dataset("patients").code_job(path, outputs=["nothing.csv"])
    job.submit(purpose="attack test")
    tight_node["owner"].request("POST", f"/jobs/{job.job_id}/approve", json={})
    job.wait(timeout_s=240, poll_s=0.5)
    view = tight_node["owner"].request("GET", f"/jobs/{job.job_id}")
    log = {c["check"]: c for c in results_of(view)["executed.ipynb"]["checks"]}
    assert not log["identifiers"]["ok"] and not log["printed rows"]["ok"], log
    assert results_of(view)["executed.ipynb"]["status"] == "pending"
    assert_nothing_left(tight_node, job)


def test_without_bwrap_the_node_refuses_and_never_runs_unsandboxed(tight_node, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, prlimit or setpriv on this PATH
    path = tmp_path / "harmless.py"
    path.write_text("print('hello')\n")
    job = tight_node["analyst"].dataset("patients").code_job(path, outputs=["out.csv"])
    with pytest.raises(NotSupported) as refused:
        job.submit(purpose="no sandbox")
    assert refused.value.code == "sandbox_unavailable" and "bubblewrap" in refused.value.message


def test_an_approved_job_whose_sandbox_vanished_fails_instead_of_running(tight_node, tmp_path, monkeypatch):
    path = tmp_path / "marker.py"
    marker = tmp_path / "ran-unsandboxed"
    path.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    job = tight_node["analyst"].dataset("patients").code_job(path, outputs=["out.csv"])
    job.submit(purpose="sandbox removed after approval")
    monkeypatch.setenv("PATH", str(tmp_path))
    tight_node["owner"].request("POST", f"/jobs/{job.job_id}/approve", json={})
    assert job.wait(timeout_s=120, poll_s=0.5) == "failed"
    assert "bubblewrap" in job.info.error and not marker.exists()


def test_the_analyst_sees_no_check_details_before_a_release(tight_node, tmp_path):
    code = """import os, workbench_job
workbench_job.load(data_path).head(12).to_csv(os.path.join(output_dir, "rows.csv"), index=False)
"""
    job, view = run_job(tight_node, tmp_path, code, ["rows.csv"])
    owner_checks = {c["check"]: c for c in results_of(view)["rows.csv"]["checks"]}
    assert not owner_checks["identifiers"]["ok"]  # the owner sees an identifier value in the detail
    mine = {r.name: r for r in job.refresh().results}
    assert mine["rows.csv"].checks == [] and mine["rows.csv"].preview is None and not mine["rows.csv"].flagged
    assert_nothing_left(tight_node, job)



FORGER = """import json, os, signal
# the runner (this script's parent, same uid) holds the stream the node reads: try to write a forged result into it
parent = f"/proc/{os.getppid()}/fd"
stream = next(os.path.join(parent, fd) for fd in os.listdir(parent)
              if os.readlink(os.path.join(parent, fd)).startswith("pipe:") and fd not in ("0", "1", "2"))
forged = {"error": "ValueError: patient P-000123 is 47", "log": {"name": "job.log"}, "outputs": []}
with open(stream, "w") as fh:
    fh.write(json.dumps(forged))
os.kill(os.getppid(), signal.SIGKILL)  # so the runner would write nothing after it
"""


def test_the_job_cannot_write_into_the_runners_result_stream(tight_node, tmp_path):
    """The stream the node reads is a pipe the node created, held by a non-dumpable runner: the job (the
    sandbox uid under a root node, the node's own uid otherwise) cannot reopen it through /proc, so it cannot forge the
    runner's report (the node validates that report anyway: see below)."""
    job, view = run_job(tight_node, tmp_path, FORGER, ["out.csv"])
    assert view["status"] == "failed" and job.info.error == "the script exited with status 1"
    assert "PermissionError" in results_of(view)["job.log"]["preview"]
    assert "P-000123" not in json.dumps(job.refresh().model_dump(mode="json", exclude={"code"}))  # (its code has it)
    assert_nothing_left(tight_node, job)


def test_a_forged_report_keeps_only_declared_outputs_once_and_no_message():
    """Were the runner's report forged, the node would keep each declared output once and the log, and the
    analyst would read an error class, never the forged message."""
    from workbench.channels.jobs.worker import SandboxDocument, _generic, declared_pieces

    forged = SandboxDocument.model_validate({
        "error": "ValueError: patient P-000123 is 47", "log": {"name": "job.log", "b64": "eA=="},
        "outputs": [{"name": "out.csv", "b64": "YQ=="}, {"name": "out.csv", "b64": "Yg=="},
                    {"name": "undeclared.csv", "b64": "YQ=="}, {"name": "../../escape.csv", "b64": "YQ=="}]})
    kept = declared_pieces(forged, ["out.csv"])
    assert [(p.name, p.b64, is_log) for p, is_log in kept] == [("out.csv", "YQ==", False), ("job.log", "eA==", True)]
    assert declared_pieces(forged.model_copy(update={"log": forged.log.model_copy(update={"name": "x.ipynb"})}),
                           []) == []
    assert _generic(forged.error) == "the code raised ValueError"
    assert _generic("SecretError: P-000123") == "the code raised an error"


def test_an_output_over_its_size_cap_is_neither_read_back_nor_held(tight_node, tmp_path):
    code = 'import os\nopen(os.path.join(output_dir, "big.csv"), "w").write("a\\n" + "1\\n" * (3 * 2**20))\n'  # 6 MB
    job, view = run_job(tight_node, tmp_path, code, ["big.csv"])
    big = results_of(view)["big.csv"]
    assert big["problem"] == f"larger than {int(TIGHT['max_output_mb'] * 2**20)} bytes", big
    assert big["review_id"] is None and big["sha256"] is None and big["preview"] is None
    assert [r["name"] for r in view["results"] if r["review_id"]] == ["job.log"]  # only the log waits for an owner
    assert_nothing_left(tight_node, job)
