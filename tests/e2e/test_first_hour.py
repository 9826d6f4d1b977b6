"""What a newcomer meets in the first hour (issue 15), checked the way they would meet it.

Client-side checks that raise ``wb.InvalidQuery`` (never a raw pydantic or
``ValueError``), refusals that say what to do, no log line for an expected
refusal, histograms in numeric order with their bin edges, ``.clamp()`` and
``.plot()`` on every kind of result, offline API docs, the demo's connection
defaults, resets, ``workbench demo`` as root and ``wb.demo_federation()``.
The browser half is ``tests/jupyter/test_first_hour_browser.py``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

import workbench as wb
from workbench.client.results import Released

ROOT = Path(__file__).resolve().parents[2]


def _connect(node) -> wb.Node:
    return wb.connect(node.url, token=node.analyst_token)


# ---------------------------------------------------------------- item 7: errors a newcomer can read and catch


BAD_QUESTIONS = [
    ("NaN epsilon", lambda ds: ds.count().release(epsilon=float("nan")), "bad_epsilon", "finite"),
    ("string epsilon", lambda ds: ds.count().release(epsilon="0.5"), "bad_epsilon", "must be a number"),
    ("bool epsilon", lambda ds: ds.count().preview(epsilon=True), "bad_epsilon", "must be a number"),
    ("epsilon above the wire limit", lambda ds: ds.count().preview(epsilon=500), "bad_epsilon", "<= 100"),
    ("delta too large", lambda ds: ds.count().preview(epsilon=1, delta=0.5), "bad_epsilon", "delta"),
    ("quantile 1.5", lambda ds: ds.quantile("age", 1.5), "bad_quantile", "between 0 and 1"),
    ("quantile 0", lambda ds: ds.group_by("sex").quantile("age", 0), "bad_quantile", "between 0 and 1"),
    ("a list of columns", lambda ds: ds.mean(["age", "cost"]), "invalid_query", "one column name"),
    ("a typo", lambda ds: ds.mean("cots"), "unknown_column", "Did you mean 'cost'?"),
    ("a typo in a group", lambda ds: ds.group_by("regoin").count(), "unknown_column", "Did you mean 'region'?"),
    ("private keys without delta", lambda ds: ds.group_by("patient_id").count().release(epsilon=0.5),
     "needs_delta", "delta=1e-6"),
    ("mean of a category", lambda ds: ds.mean("sex").preview(epsilon=1), "wrong_type", "numeric"),
]


@pytest.mark.parametrize("label, ask, code, words", BAD_QUESTIONS, ids=[b[0] for b in BAD_QUESTIONS])
def test_bad_questions_raise_invalid_query_with_a_stable_code(shared_node, label, ask, code, words):
    ds = _connect(shared_node).dataset("patients")
    before = ds.budget()["epsilon"]
    with pytest.raises(wb.WorkbenchError) as caught:  # what a notebook catches
        ask(ds)
    assert type(caught.value) is wb.InvalidQuery, f"{label}: {type(caught.value).__name__}: {caught.value}"
    assert caught.value.code == code
    assert words in str(caught.value)
    assert ds.budget()["epsilon"] == before, "a refused question costs nothing"


def test_group_by_takes_a_list_too(shared_node):
    ds = _connect(shared_node).dataset("patients")
    assert ds.group_by(["region", "sex"]).count().spec.by == ["region", "sex"]


def test_budget_exceeded_says_how_to_ask_for_more(running_node):
    ds = _connect(running_node).dataset("patients")
    ds.count().release(epsilon=9.9)
    with pytest.raises(wb.BudgetExceeded) as caught:
        ds.mean("age").release(epsilon=0.5)
    assert caught.value.code == "budget_exceeded"
    assert "Nothing was charged" in str(caught.value)
    assert "node.dataset('patients').request_access(purpose=..., epsilon=...)" in str(caught.value)
    assert ds.budget()["epsilon"] == pytest.approx(0.1)


# ---------------------------------------------------------------- item 6: an expected refusal is not a fault


def test_group_commit_logs_faults_but_not_refusals(tmp_path, caplog):
    from workbench.node.group_commit import GroupCommitter
    from workbench.node.store import Store

    store = Store(f"sqlite:///{tmp_path / 'state.sqlite'}")
    committer = GroupCommitter(store)

    def refused(_session):
        raise wb.BudgetExceeded("grant 1 has epsilon=0 left", code="budget_exceeded")

    def broken(_session):
        raise RuntimeError("disk on fire")

    with caplog.at_level(logging.DEBUG, logger="workbench.node.group_commit"):
        with pytest.raises(wb.BudgetExceeded):
            committer.run(refused, durable=True)
        assert not caplog.records, [r.getMessage() for r in caplog.records]
        with pytest.raises(RuntimeError):
            committer.run(broken)
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert "disk on fire" in caplog.records[0].getMessage()
    committer.close()


# ---------------------------------------------------------------- item 4: histograms and clamping


def test_histogram_bins_come_in_numeric_order_with_edges(shared_node):
    ds = _connect(shared_node).dataset("patients")
    hist = ds.histogram("cost", bins=10).release(epsilon=0.3)
    assert isinstance(hist, Released)
    assert list(hist["bin_lower"]) == [5000.0 * i for i in range(10)]
    assert list(hist["bin_upper"]) == [5000.0 * (i + 1) for i in range(10)]
    assert list(hist["bin"])[:3] == ["[0, 5000)", "[5000, 10000)", "[10000, 15000)"]
    assert list(hist["bin"])[-1] == "[45000, 50000]"
    ages = ds.histogram("age", bins=[0, 18, 65, 100]).release(epsilon=0.3)
    assert list(ages["bin"]) == ["[0, 18)", "[18, 65)", "[65, 100]"]


def test_clamp_is_post_processing_that_keeps_the_interval():
    table = Released({"bin": ["a", "b", "c"], "estimate": [-4.0, 3.0, 120.0], "lower": [-9.0, -2.0, 115.0],
                      "upper": [1.0, 8.0, 125.0]})
    table.attrs.update(kind="histogram", epsilon_charged=0.2)
    clamped = table.clamp()
    assert list(clamped["estimate"]) == [0.0, 3.0, 120.0]
    assert list(clamped["lower"]) == [0.0, 0.0, 115.0]
    assert list(clamped["upper"]) == [1.0, 8.0, 125.0]
    assert (clamped["lower"] <= clamped["estimate"]).all() and (clamped["estimate"] <= clamped["upper"]).all()
    assert clamped.attrs["epsilon_charged"] == 0.2 and clamped.attrs["clamped"] == [0.0, None]
    assert table["estimate"].iloc[0] == -4.0, "the release itself is left as the node sent it"
    assert list(table.clamp(0, 100)["upper"]) == [1.0, 8.0, 100.0]


# ---------------------------------------------------------------- item 5: every result type plots with its intervals


def _bars(ax) -> list[float]:
    return [p.get_height() for p in ax.patches]


def _errorbar_spans(ax) -> list[tuple[float, float]]:
    segments = [s for c in ax.collections for s in c.get_segments()]
    return [(round(s[0][1], 6), round(s[1][1], 6)) for s in segments]


@pytest.fixture
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_group_means_are_labelled_by_group_not_by_noisy_count(plt):
    means = Released({"region": ["east", "north"], "estimate": [4051.0, 3900.0], "lower": [3900.0, 3800.0],
                      "upper": [4200.0, 4000.0], "noisy_count": [9012.0, 13507.0]})
    means.attrs.update(kind="mean", query={"kind": "mean", "column": "cost", "by": ["region"]}, alpha=0.05)
    ax = means.plot(title="Mean cost per region")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["east", "north"]
    assert ax.get_xlabel() == "region" and ax.get_ylabel() == "mean of cost"
    assert _bars(ax) == [4051.0, 3900.0]
    assert _errorbar_spans(ax) == [(3900.0, 4200.0), (3800.0, 4000.0)]
    assert "95% interval" in [t.get_text() for t in ax.get_legend().get_texts()]
    # pandas' own plots stay reachable
    assert means.plot.bar(y="estimate").get_xlabel() == ""
    assert means.plot(kind="line", y="noisy_count").get_lines()


def test_numeric_histogram_plots_over_its_bin_edges_in_order(plt):
    hist = Released({"bin": ["[0, 50)", "[50, 100]"], "bin_lower": [0.0, 50.0], "bin_upper": [50.0, 100.0],
                     "estimate": [30.0, 12.0], "lower": [25.0, 7.0], "upper": [35.0, 17.0]})
    hist.attrs.update(kind="histogram", query={"kind": "histogram", "column": "age"}, alpha=0.05)
    ax = hist.plot()
    assert [p.get_x() for p in ax.patches] == [0.0, 50.0] and [p.get_width() for p in ax.patches] == [50.0, 50.0]
    assert ax.get_xlabel() == "age" and ax.get_ylabel() == "count"
    assert _errorbar_spans(ax) == [(25.0, 35.0), (7.0, 17.0)]


def test_regression_secure_sum_and_quantile_plots(plt):
    fit = Released({"coef": [100.0, 12.0], "std_err": [5.0, 1.0], "dp_std_err": [1.0, 0.5],
                    "lower": [90.0, 10.0], "upper": [110.0, 14.0]}, index=pd.Index(["intercept", "age"], name="term"))
    fit.attrs.update(kind="linear_regression", y="cost", alpha=0.05)
    ax = fit.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["intercept", "age"]
    assert ax.get_xlabel() == "term" and ax.get_ylabel() == "coefficient (y = cost)"
    assert _errorbar_spans(ax) == [(90.0, 110.0), (10.0, 14.0)]

    total = Released({"statistic": ["sum(cost)", "count"], "estimate": [5e6, 4e4], "lower": [4.9e6, 3.9e4],
                      "upper": [5.1e6, 4.1e4]})
    total.attrs.update(kind="secure_sum", alpha=0.05)
    ax = total.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sum(cost)", "count"]
    assert ax.get_ylabel() == "secure total"

    median = Released({"estimate": [51.0], "lower": [float("nan")], "upper": [float("nan")]})
    median.attrs.update(kind="quantile", query={"kind": "quantile", "column": "age", "quantile": 0.5})
    ax = median.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["median of age"]
    assert ax.get_legend() is None and not _errorbar_spans(ax)  # no interval: no "95% interval" legend


def test_every_release_path_returns_a_plottable_result(shared_node, plt):
    ds = _connect(shared_node).dataset("patients")
    grouped = ds.group_by("diagnosis").count().release(epsilon=0.3)
    assert isinstance(grouped, Released) and isinstance(grouped.clamp(), Released)
    ax = grouped.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == list(grouped["diagnosis"])
    assert len(_errorbar_spans(ax)) == len(grouped)


def test_crosstab_correlation_regression_and_describe_plot_their_intervals(shared_node, plt):
    """Single-node analyses that used to come back as plain frames (pandas' line plot, no interval) or wide
    (a cross-tab's plot drew its estimate, lower and upper columns as separate lines)."""
    ds = _connect(shared_node).dataset("patients")
    table = ds.crosstab("sex", "smoker").release(epsilon=0.3)
    ax = table.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["F / False", "F / True", "M / False", "M / True"]
    assert ax.get_xlabel() == "sex / smoker" and ax.get_ylabel() == "count"
    long = table.wb.long()
    assert _errorbar_spans(ax) == [(round(lo, 6), round(hi, 6)) for lo, hi in zip(long["lower"], long["upper"])]

    fit = ds.linear_regression(y="cost", x=["age"]).release(epsilon=0.5)
    assert isinstance(fit, Released)
    ax = fit.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["intercept", "age"]  # not "intercept / 240.4 / ..."
    assert ax.get_xlabel() == "term" and ax.get_ylabel() == "coefficient (y = cost)"
    assert _errorbar_spans(ax) == [(round(lo, 6), round(hi, 6)) for lo, hi in zip(fit["lower"], fit["upper"])]

    corr = ds.corr(["age", "bmi"]).release(epsilon=0.5)
    ax = corr.plot()
    assert isinstance(corr, Released) and ax.get_ylabel() == "correlation" and ax.get_xlabel() == "row / column"
    assert "age / bmi" in [t.get_text() for t in ax.get_xticklabels()]
    assert len(_errorbar_spans(ax)) == 4

    summary = ds.describe(epsilon=1.0)
    ax = summary.plot()
    assert [t.get_text() for t in ax.get_xticklabels()] == list(summary["statistic"])
    assert ax.get_ylabel() == "estimate" and len(_errorbar_spans(ax)) == len(summary)


# ---------------------------------------------------------------- item 9: the API docs work offline


def test_api_docs_are_served_without_a_cdn(app_client):
    page = app_client.get("/v1/docs")
    assert page.status_code == 200
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert sources and all(s.startswith("/v1/") for s in sources), sources
    assert "cdn" not in page.text.lower()
    script = app_client.get("/v1/docs-static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000
    assert app_client.get("/v1/docs-static/swagger-ui.css").status_code == 200
    assert app_client.get("/v1/openapi.json").json()["paths"]


# ---------------------------------------------------------------- items 2 and 3: which node, and resets


def test_connect_without_address_uses_the_demo_nodes_when_a_demo_runs(shared_node, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DEMO_NODES", f"{shared_node.url},http://127.0.0.1:9")
    monkeypatch.setenv("WORKBENCH_TOKEN", shared_node.analyst_token)
    node = wb.connect()
    assert node.url == shared_node.url and not node.embedded
    with pytest.raises(wb.InvalidQuery, match="workbench demo --reset"):
        wb.connect(reset=True)


def test_embedded_node_state_is_per_environment_and_resettable(tmp_path, monkeypatch):
    from workbench import config
    from workbench.demo import embedded

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("WORKBENCH_DEMO_NODES", raising=False)
    monkeypatch.setenv("WORKBENCH_PANEL_EMBEDDED", "1")  # as in a notebook kernel started by Jupyter
    embedded.reset_embedded()  # an embedded node an earlier test opened in this process is not this one
    root = config.embedded_root()
    assert root.parent == tmp_path / "home" / "embedded"
    assert root.name.startswith(Path(sys.prefix).resolve().name.strip(".") or "python")
    try:
        ds = wb.connect().dataset("patients")
        ds.count().release(epsilon=2.0)
        # The kernel serves its embedded node on loopback; the panel's server extension lists it.
        from workbench.jupyter.handlers import WorkbenchClients

        [entry] = config.panel_connections()
        assert entry["name"] == f"embedded-{os.getpid()}" and entry["url"].startswith("http://127.0.0.1:")
        assert (root / "panel" / f"{os.getpid()}-hospital_a.json").stat().st_mode & 0o777 == 0o600
        me = httpx.get(entry["url"] + "/v1/me", headers={"Authorization": f"Bearer {entry['token']}"}, timeout=10)
        assert me.json()["user"] == "analyst"
        assert entry["name"] in [c.name for c in WorkbenchClients().connections()]
        assert wb.connect().dataset("patients").budget()["epsilon"] == pytest.approx(8.0)
        fresh = wb.connect(reset=True).dataset("patients")
        assert fresh.budget()["epsilon"] == pytest.approx(10.0)
        assert len(fresh.node.history()) == 0
        assert len(config.panel_connections()) == 1, "the reset node replaced the old one in the panel"
    finally:
        embedded.reset_embedded()


# ---------------------------------------------------------------- item 1: workbench demo and JupyterLab


def test_demo_passes_options_to_jupyterlab(monkeypatch):
    from click.testing import CliRunner

    from workbench import cli
    from workbench.demo import launcher

    seen = {}
    monkeypatch.setattr(launcher, "run_demo", lambda **kw: seen.update(kw) or 0)
    result = CliRunner().invoke(cli.main, ["demo", "--no-lab", "--lab-port", "8899", "--",
                                           "--ServerApp.token=abc", "--port-retries=0"])
    assert result.exit_code == 0, result.output
    assert seen["lab_args"] == ("--ServerApp.token=abc", "--port-retries=0")
    assert seen["lab_port"] == 8899 and seen["reset"] is False


def test_jupyterlab_gets_allow_root_only_as_root(monkeypatch, tmp_path):
    from workbench.demo import launcher

    settings = launcher.lab_settings(tmp_path)
    overrides = (settings / "overrides.json").read_text()
    assert '"fetchNews": "false"' in overrides  # no news pop-up over the panel
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert "--allow-root" in launcher.lab_command(8888, tmp_path, settings)
    assert launcher.lab_command(8888, tmp_path, settings, ("--allow-root",)).count("--allow-root") == 1
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "--allow-root" not in launcher.lab_command(8888, tmp_path, settings)
    # The user's own option replaces the demo's (JupyterLab refuses an option given twice).
    cmd = launcher.lab_command(8888, tmp_path, settings, ("--ServerApp.root_dir=/srv/nb", "--port=9999"))
    assert [a for a in cmd if "root_dir" in a] == ["--ServerApp.root_dir=/srv/nb"]
    assert [a for a in cmd if a.startswith("--port")] == ["--port=9999"]


def _three_free_ports() -> int:
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + 4 >= 65535:
            continue
        socks = []
        try:
            for p in range(first, first + 4):
                sock = socket.socket()
                sock.bind(("127.0.0.1", p))
                socks.append(sock)
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no four consecutive free ports")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _demo(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               WORKBENCH_HOME=str(tmp_path / "wbhome"))
    return subprocess.run([sys.executable, "-m", "workbench.cli", "demo", "--no-lab", "--root", str(tmp_path / "demo"),
                           *args], capture_output=True, text=True, env=env, timeout=300)


def test_a_second_demo_changes_nothing_while_one_runs(running_node, tmp_path):
    """`workbench demo --reset` (or a second `workbench demo`) in another terminal while a demo serves: it used to
    delete the running nodes' state, overwrite their tokens and die with a traceback; now it says why and stops."""
    state = tmp_path / "demo" / "state" / "hospital_a"
    state.mkdir(parents=True)
    (state / "ledger.sqlite").write_text("the running demo's ledger")
    port = int(running_node.url.rsplit(":", 1)[1])
    done = _demo(tmp_path, "--reset", "--port", str(port))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert f"A Workbench node already answers at {running_node.url}" in done.stderr
    assert "Nothing was changed." in done.stderr and "Ctrl-C" in done.stderr
    assert (state / "ledger.sqlite").read_text() == "the running demo's ledger"
    me = httpx.get(running_node.url + "/v1/me", headers={"Authorization": f"Bearer {running_node.analyst_token}"},
                   timeout=10)
    assert me.status_code == 200 and me.json()["user"] == "analyst"


def test_demo_on_a_port_another_program_holds_says_which(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        done = _demo(tmp_path, "--port", str(port))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"Port {port} is in use by another program" in done.stderr and "--port N" in done.stderr
    assert not (tmp_path / "demo" / "state").exists()


def test_a_port_taken_after_the_check_fails_the_demo_as_soon_as_its_node_exits(tmp_path):
    """Another program (a concurrent run) takes a node's port between the demo's check and the node's bind:
    the demo says which server exited, without waiting for its health check to time out, and stops the rest."""
    from tests.conftest import free_port
    from workbench.demo.data import HOSPITALS
    from workbench.demo.launcher import start_demo

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = [taken, *(free_port() for _ in list(HOSPITALS)[1:])]
        urls = {h: f"http://127.0.0.1:{p}" for h, p in zip(HOSPITALS, ports)}
        with pytest.raises(RuntimeError, match=f"server for http://127.0.0.1:{taken} exited"):
            start_demo(tmp_path / "demo", urls, free_port(), save=False, quiet=True, mock=False)
    for port in ports[1:]:  # the nodes that did start were stopped again
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5)


@pytest.mark.slow
def test_demo_keeps_its_nodes_when_jupyterlab_fails(tmp_path):
    """JupyterLab cannot start (its port is taken): the demo says why and how to fix it; the nodes stay up.

    Run as root (this machine's tests usually are), it also shows JupyterLab gets --allow-root; the demo
    publishes a DP mock of every node's patients at start-up.
    """
    port = _three_free_ports()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    lab_port = blocker.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"),
               JUPYTER_DATA_DIR=str(tmp_path / "jdata"))
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "demo", "--port", str(port), "--lab-port",
                                 str(lab_port), "--root", str(tmp_path / "demo"), "--", "--port-retries=0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    urls = [f"http://127.0.0.1:{port + i}" for i in range(3)]
    try:
        deadline = time.monotonic() + 400
        while "JupyterLab stopped" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        text = log.read_text()
        assert "the demo nodes keep running" in text and "--lab-port" in text
        if os.geteuid() == 0:
            assert "Running as root: JupyterLab gets --allow-root." in text
        time.sleep(1.5)  # a little later, everything is still up
        assert proc.poll() is None and all(_healthy(u) for u in urls)
        token = (tmp_path / "demo" / "state" / "hospital_a" / "analyst.token").read_text().strip()
        mock = wb.connect(urls[0], token=token).dataset("patients").mock()
        assert len(mock.data) == 1000 and mock.report.dp
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        blocker.close()
    assert not any(_healthy(u) for u in urls), "SIGTERM stops every demo node"


# ---------------------------------------------------------------- item 11: a federation that needs nothing running


@pytest.mark.slow
def test_demo_federation_runs_anywhere_and_stops_at_exit(tmp_path):
    code = (
        "import workbench as wb\n"
        "fed = wb.demo_federation()\n"
        "print('URLS', ' '.join(n.url for n in fed.nodes), flush=True)\n"
        "ds = fed.dataset('patients')\n"
        "mean = ds.mean('age').release(epsilon=0.2)\n"
        "total = ds.secure_sum(['visits'], epsilon=0.2)\n"
        "print('MEAN', float(mean['estimate'].iloc[0]), 'SUM', float(total['estimate'].iloc[0]), flush=True)\n"
        "assert wb.demo_federation().nodes[0].url == fed.nodes[0].url  # one federation per kernel\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_DEMO_NODES"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    urls = re.search(r"URLS (.+)", done.stdout).group(1).split()
    assert len(urls) == 3
    mean, total = map(float, re.search(r"MEAN (\S+) SUM (\S+)", done.stdout).groups())
    assert 45 < mean < 60 and total > 0
    assert not any(_healthy(u) for u in urls), "the nodes stop with the process that started them"
    assert math.isfinite(mean)


@pytest.mark.slow
def test_federated_training_keeps_the_terminal_quiet(tmp_path):
    """A Flower run with secure aggregation: no flwr DEBUG chatter, no websockets deprecation warnings,
    in the terminal where the demo nodes print (here: the nodes share this subprocess's output)."""
    code = (
        "import socket\n"
        "from pathlib import Path\n"
        "import workbench as wb\n"
        "from workbench.demo.data import HOSPITALS\n"
        "from workbench.demo.launcher import start_demo\n"
        "def port():\n"
        "    with socket.socket() as s:\n"
        "        s.bind(('127.0.0.1', 0))\n"
        "        return s.getsockname()[1]\n"
        f"demo = start_demo(Path({str(tmp_path / 'demo')!r}), {{h: f'http://127.0.0.1:{{port()}}' for h in HOSPITALS}},"
        " port(), save=False, quiet=False, mock=False)\n"
        "try:\n"
        "    fed = wb.federation([wb.connect(u, token=demo.tokens[h]) for h, u in demo.urls.items()])\n"
        "    job = fed.dataset('patients').train(model='logistic_regression', y='readmitted', x=['age', 'bmi'],\n"
        "                                          rounds=1, epsilon=1.0, delta=1e-6, secure_aggregation=True)\n"
        "    print('ROUNDS', len(job.result().rounds()), flush=True)\n"
        "finally:\n"
        "    demo.stop()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONWARNINGS="default")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "ROUNDS 1" in output
    assert "flwr DEBUG" not in output, output[-3000:]
    assert "websockets" not in output, output[-3000:]
