"""The worker task registry: a worker runs registered task names only, never a module path it is sent."""

from __future__ import annotations

import pytest

from workbench.node import tasks
from workbench.node.worker import WorkerPool


@pytest.mark.parametrize("name", ["workbench.channels.dp.worker:run", "os:system", "dp.query ", "", "synth.fit:run"])
def test_the_pool_refuses_anything_but_a_registered_name(name):
    pool = WorkerPool(1, 30)
    try:
        with pytest.raises(ValueError):
            pool.run(name, {})
        assert pool._started == 0  # refused before any worker process was started
    finally:
        pool.close()


def test_a_registered_task_runs_in_a_worker_and_its_refusal_keeps_its_code():
    """``secagg.check_context`` on garbage: the worker answers with the channel's own error code."""
    from workbench.errors import WorkbenchError

    pool = WorkerPool(1, 120)
    try:
        with pytest.raises(WorkbenchError) as info:
            pool.run("secagg.check_context", {"context": "bm90IGEgY29udGV4dA==", "scheme": "bfv"})
        assert info.value.code != "computation_failed"  # a clear refusal, not a crash
    finally:
        pool.close()
    assert tasks.target_of("secagg.check_context") == "workbench.channels.secagg.he_params:check_context"
