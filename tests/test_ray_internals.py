"""What this project relies on in Ray below its public API, checked against the installed Ray.

Each test names the function to recheck when an upgrade of Ray makes it fail.
"""

import re

import numpy as np
import pytest
import ray
from import_probe import modules_imported_by
from ray.data import DataContext

from pipeline.data.shard_source import completed_passes
from pipeline.train import startup

RECHECK_PASSES = (
    "recheck pipeline.data.shard_source.completed_passes (written against Ray 2.60.0) for this Ray "
    "version: per-epoch augmentation depends on it"
)


def test_a_new_data_context_counts_no_completed_pass():
    assert completed_passes(DataContext()) == 0, RECHECK_PASSES


def test_completed_passes_reads_the_counter_ray_data_raises_after_each_execution():
    context = DataContext()
    assert hasattr(context, "_execution_idx"), (
        f"DataContext has no _execution_idx any more; {RECHECK_PASSES}"
    )
    context._execution_idx = 3
    assert completed_passes(context) == 3, RECHECK_PASSES


@pytest.mark.slow
def test_each_pass_over_a_dataset_sees_the_next_pass_index_inside_its_tasks(ray_session):
    # Defined here so that it travels to the Ray workers by value (they cannot import tests/).
    def _pass_seen_by_the_task(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen = completed_passes(DataContext.get_current())
        return {"seen": np.full(len(batch["id"]), seen, dtype=np.int64)}

    dataset = ray.data.range(4, override_num_blocks=2).map_batches(
        _pass_seen_by_the_task, batch_format="numpy"
    )
    seen = [sorted({row["seen"] for row in dataset.take_all()}) for _ in range(3)]
    assert seen == [[0], [1], [2]], f"passes saw {seen}; {RECHECK_PASSES}"


RECHECK_LINE_FILTER = (
    "recheck pipeline.train.console._drop_forwarded_lines (written against Ray 2.60.0) for "
    "this Ray version: the quiet console drops Ray's PreemptionWatcher false alarm through it"
)


def test_the_driver_drops_forwarded_lines_matching_a_deduplicators_skip_pattern():
    from ray._private import ray_logging

    for deduplicator in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        assert hasattr(deduplicator, "skip_re"), RECHECK_LINE_FILTER
    deduplicator = ray_logging.LogDeduplicator(5, None, None)
    deduplicator.skip_re = re.compile("a false alarm")
    batch = {"ip": "127.0.0.1", "pid": 7, "lines": ["a real line", "[E] a false alarm here"]}
    printed = [line for out in deduplicator.deduplicate(batch) for line in out["lines"]]
    assert printed == ["a real line"], RECHECK_LINE_FILTER


def test_train_registers_with_the_autoscaling_coordinator_the_driver_started(ray_session):
    from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
        TrainAutoscalingCoordinatorClient,
    )

    started = startup.start_autoscaling_coordinator()
    ray.get(started.__ray_ready__.remote(), timeout=60)
    found_by_train = TrainAutoscalingCoordinatorClient("train-test")._autoscaling_coordinator
    assert found_by_train._actor_id == started._actor_id, (
        "Ray Train's controller no longer uses the autoscaling coordinator that "
        "pipeline.train.startup.start_autoscaling_coordinator starts (written against Ray "
        "2.60.0): recheck it for this Ray version, or drop it"
    )


RECHECK_TIMING = (
    "recheck pipeline.data.executor_timing (written against Ray 2.60.0) for this Ray version: "
    "without it Ray Data's CPUs idle between short decode tasks"
)


def test_importing_the_ingest_module_sets_ray_datas_executor_timing():
    import pipeline.data.ingest  # noqa: F401  (the import applies the setting)
    from pipeline.data.executor_timing import LIMITS_REFRESH_S, TASK_WAIT_S, executor_timing

    assert executor_timing() == (LIMITS_REFRESH_S, TASK_WAIT_S) == (0.1, 0.02)


def test_ray_datas_executor_still_reads_the_two_timings_this_project_sets():
    import inspect

    from ray.data._internal.execution import streaming_executor_state
    from ray.data._internal.execution.resource_manager import ResourceManager

    limits_source = inspect.getsource(ResourceManager.get_global_limits)
    assert "GLOBAL_LIMITS_UPDATE_INTERVAL_S" in limits_source, RECHECK_TIMING
    assert "_get_total_resources()" in limits_source, RECHECK_TIMING
    wait_source = inspect.getsource(streaming_executor_state.process_completed_tasks)
    assert "timeout=WAIT_FOR_TASK_COMPLETION_TIMEOUT_S" in wait_source, RECHECK_TIMING


@pytest.mark.parametrize(
    "name", ["GLOBAL_LIMITS_UPDATE_INTERVAL_S", "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S"]
)
def test_the_timing_refuses_a_ray_without_one_of_its_settings(monkeypatch, name):
    from ray.data._internal.execution import streaming_executor_state
    from ray.data._internal.execution.resource_manager import ResourceManager

    from pipeline.data.executor_timing import apply_executor_timing

    owner = {
        "GLOBAL_LIMITS_UPDATE_INTERVAL_S": ResourceManager,
        "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S": streaming_executor_state,
    }[name]
    monkeypatch.delattr(owner, name)
    with pytest.raises(RuntimeError, match=name):
        apply_executor_timing()


def test_a_process_that_unpickles_an_ingest_callable_gets_the_timing_before_it_runs_anything():
    # What Ray Train's split coordinators do before they build an executor: unpickle the
    # dataset, whose batch callables are classes of pipeline.data.ingest (pickled by reference).
    import pickle
    import subprocess
    import sys

    from pipeline.data.ingest import _AugmentBatch
    from pipeline.data.transforms import AugmentationConfig

    callable_bytes = pickle.dumps(
        _AugmentBatch(AugmentationConfig(), 0, 0, None, batch_size=2, shuffle_window=True)
    )
    script = (
        "import pickle, sys\n"
        "from pipeline.data.executor_timing import executor_timing\n"
        "before = executor_timing()\n"
        "pickle.loads(sys.stdin.buffer.read())\n"
        "print(*before, *executor_timing())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=callable_bytes, capture_output=True, check=True
    )
    assert result.stdout.decode().split() == ["1.0", "0.1", "0.1", "0.02"], RECHECK_TIMING


RECHECK_PROCESS_GROUP = (
    "recheck pipeline.train.process_group (written against Ray 2.60.0's ray.train.torch.config) "
    "for this Ray version: the training loop forms torch's process group itself"
)


@pytest.mark.slow
def test_the_workers_form_their_group_in_the_loop_and_the_controller_never_imports_torch(
    ray_session, tmp_path
):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from pipeline.train.process_group import TorchProcessGroupConfig, join_process_group

    group = TorchProcessGroupConfig(use_gpu=False, timeout_s=60)

    # Defined here so that it travels to the Ray workers by value (they cannot import tests/).
    # It names no module of this file's globals: cloudpickle would send along, and the
    # workers import before the loop, every submodule of it imported here (ray.train.torch).
    def loop() -> dict:
        import sys

        torch_before_the_loop = "torch" in sys.modules  # before anything here imports it
        import os
        from pathlib import Path

        import ray.train
        import torch
        import torch.distributed as dist
        from ray.util.state import list_actors

        join_process_group(group, torch.device("cpu"))
        ranks = torch.tensor([float(ray.train.get_context().get_world_rank() + 1)])
        dist.all_reduce(ranks)
        [controller] = list_actors(
            filters=[("class_name", "=", "TrainController"), ("state", "=", "ALIVE")]
        )
        controller_maps = Path(f"/proc/{controller.pid}/maps").read_text()
        return {
            "torch_before_the_loop": torch_before_the_loop,
            "sum_of_ranks": ranks.item(),
            "environment": [os.environ[name] for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")],
            "controller_has_torch": "libtorch" in controller_maps,
        }

    result = DataParallelTrainer(
        loop,
        backend_config=group,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="process-group", storage_path=str(tmp_path)),
    ).fit()
    assert result.return_value == {  # rank 0's
        "torch_before_the_loop": False,
        "sum_of_ranks": 3.0,
        "environment": ["0", "2", "0"],
        "controller_has_torch": False,
    }, RECHECK_PROCESS_GROUP


def test_what_the_driver_hands_the_workers_unpickles_without_torch():
    # Ray Train's controller unpickles the training function's config and the backend config
    # before it asks for the workers; importing torch there delays the whole start-up.
    program = "import pipeline.train.entry, pipeline.train.process_group, pipeline.train.settings"
    assert modules_imported_by(program, ["torch", "apcnet"]) == []
