"""What a job's console shows: the project's own lines by default, Ray's logs with --verbose.

The one home of every log and verbosity setting. `jobs/cli.py` turns `--verbose` into
`APCNET_VERBOSE=1` (`VERBOSE_VARIABLE`) before the job starts; everything below reads it, in
the driver and, through the job's runtime_env (`variables_for_workers`), in every Ray process
of the job, so a Tune trial that drives its own training run is as quiet as the job.

Quiet (the default) means:
- Ray's INFO logs hidden in every process: the `ray` logger (`ray_init_options`), Ray Train's
  (`train_logging_config`: "Reporting training result ...", worker-group start-up) and
  MLflow's (database set-up); warnings and errors still show.
- Ray Data's progress bars off (`DataContext.enable_progress_bars`,
  `RAY_DATA_DISABLE_PROGRESS_BARS`): the console's bars are the project's own (`epoch_bar`,
  `progress_over`).
- Tune's periodic status tables off: a search prints one line per trial event instead.

Always: lines of Ray's processes that ask nothing of a user (`FORWARDED_LINES_TO_DROP`) are
dropped by the driver through Ray's documented `RAY_DEDUP_LOGS_SKIP_REGEX`, and token
authentication is said to be on (`RAY_AUTH_MODE=token`, Ray's default, without its notice).
Ray reads both when it is imported, so every job sets them first (`jobs/cli.py`,
`set_before_ray_import`).
Lines that Ray's native code writes straight to a process's standard error are not filtered:
the README lists those that ask nothing of a user.

Always, whatever the verbosity: Ray Train's `print` patch is off
(`RAY_TRAIN_ENABLE_PRINT_PATCH=0`). In Ray 2.60 it sends every `print` in a training worker
both to the root logger's console handler and, because Ray's worker process replaces
`sys.stdout` (`ray/_private/workers/default_worker.py`), to the original `print` as well: every
line a worker printed reached the console twice.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pipeline.config.schema import ExperimentConfig
    from pipeline.data.builtin import TrainingData
    from pipeline.train.settings import ConsoleMode, LoopSettings

T = TypeVar("T")
VERBOSE_VARIABLE = "APCNET_VERBOSE"
QUIET_LEVEL = "WARNING"
LABEL_WIDTH = 10

# Read by Ray Train in its controller and workers; forwarded by Train itself, and here too.
_PRINT_PATCH_VARIABLE = "RAY_TRAIN_ENABLE_PRINT_PATCH"
# Read by DataContext's defaults, for a context made in a Ray process rather than handed over.
_DATA_PROGRESS_VARIABLE = "RAY_DATA_DISABLE_PROGRESS_BARS"
# Ray's driver skips forwarded lines that match it; read once, when `ray` is imported.
_SKIP_LINES_VARIABLE = "RAY_DEDUP_LOGS_SKIP_REGEX"
# Token authentication, on by default for a local instance since Ray 2.59. Left unset, Ray
# prints a notice at every local start; said explicitly (read when `ray` is imported), it is
# on without one.
_AUTH_MODE_VARIABLE = "RAY_AUTH_MODE"
_MLFLOW_LOG_LEVEL_VARIABLE = "MLFLOW_LOGGING_LEVEL"
# Read by Ray Tune on its driver when a search starts (ray.tune.experimental.output).
_TUNE_NEW_OUTPUT_VARIABLE = "RAY_AIR_NEW_OUTPUT"
_WORKER_VARIABLES = (
    VERBOSE_VARIABLE,
    _PRINT_PATCH_VARIABLE,
    _DATA_PROGRESS_VARIABLE,
    _MLFLOW_LOG_LEVEL_VARIABLE,
)
# Driver-side loggers that print INFO lines a person does not need. `ray.train` also covers
# Train's "A run snapshot was found" notice, logged on every `Result.from_path`, which this
# project calls to read a run's checkpoints (pipeline.train.run_folder), never to resume.
_QUIET_LOGGERS = ("ray", "ray.train", "ray.tune", "ray.data", "mlflow")

# Lines of Ray's processes that the driver drops: each asks nothing of a user.
FORWARDED_LINES_TO_DROP = (
    # Ray Train (PreemptionCallback) starts a PreemptionWatcher actor per worker group with
    # max_restarts=-1 and hands it the training workers' actor handles. Ray core logs this
    # ERROR (core_worker.cc, once per process) for any restartable actor whose constructor
    # arguments hold a reference that is not a detached actor, and a worker's actor handle
    # is one (ray-project/ray#53727). Here nothing can go out of scope before a restart: the
    # controller owns those workers and kills the watcher with their group. The watcher
    # itself runs: it polls the GCS for draining nodes and tells the workers of a spot node
    # that is about to go, so preemption handling is unchanged; only the line is dropped.
    r"Actor with class name: 'PreemptionWatcher' and ID: '\w+' has constructor arguments "
    r"in the object store and max_restarts > 0",
    # The raylet's count of Python processes started at once on a node, against its CPUs:
    # Ray Train's and Ray Data's own actors (controller, workers, dataset manager, split
    # coordinators, preemption watcher) take no or fractional CPUs by design, so a machine
    # with a few cores passes the count on every run, and no setting of the run changes it.
    r"WARNING: \d+ PYTHON worker processes have been started on node: ",
    # Ray Train's placement-group cleaner removing the workers' reservation once their
    # controller has gone: under Tune the end of every trial (the trial's process, which owns
    # the controller, ends first). It reports a cleanup it did, not something to do.
    r"Detected that the Ray Train controller actor \(\w+\) is dead\. Cleaning up placement",
    # The GCS's error log, which Ray's log monitor forwards to the driver, at the end of a
    # run: it kills the actors of a worker group whose processes have already exited, and the
    # kill request finds their socket closed. The actors are gone either way.
    r"Failed to kill actor \w+, return status: Invalid: KillActor RPC failed for actor \w+: "
    r"RpcError: RPC error: Socket closed",
)
# Ray Data's notices that the driver drops unless --verbose. Ray Data logs them at INFO to a
# console handler of its own in every process that runs a dataset (the split coordinators that
# stream to training workers among them), whatever the `ray` logger's level.
ROUTINE_LINES_TO_DROP = (
    # The end of each execution: every epoch and validation pass of a training run.
    r"Dataset \S+ execution finished in [\d.]+ seconds",
    # Said once in each process when its bars are off; here they are off on purpose (the
    # console's own bars replace them), and --verbose turns them back on.
    r"Progress bars disabled\. To enable, set `ray\.data\.DataContext",
)


def verbose(environment: Mapping[str, str] | None = None) -> bool:
    """Whether Ray's own logs are wanted (`--verbose`, i.e. APCNET_VERBOSE=1 in
    `environment`, default this process's environment)."""
    environment = os.environ if environment is None else environment
    return environment.get(VERBOSE_VARIABLE, "0") not in ("", "0")


def variables_for_workers(environment: Mapping[str, str]) -> dict[str, str]:
    """The console settings every Ray process of the job needs (its runtime_env), for a
    driver with `environment`. A value already in `environment` wins, so a user can still
    set any of them."""
    settings = {_PRINT_PATCH_VARIABLE: "0"}
    if verbose(environment):
        settings[VERBOSE_VARIABLE] = "1"
    else:
        settings |= {_DATA_PROGRESS_VARIABLE: "1", _MLFLOW_LOG_LEVEL_VARIABLE: QUIET_LEVEL}
    own = {name: environment[name] for name in _WORKER_VARIABLES if name in environment}
    return settings | own


def ray_init_options() -> dict[str, Any]:
    """Keyword arguments for `ray.init` when this job starts or joins Ray: when quiet, the
    job's logging config (the `ray` logger at WARNING in the driver and in every task and
    actor; Ray then also prints forwarded lines without its `(Actor pid=...)` prefix)."""
    if verbose():
        return {}
    import ray

    return {"logging_config": ray.LoggingConfig(log_level=QUIET_LEVEL)}


def quiet_this_process() -> None:
    """Apply the console settings to this process (a job's driver, or a Tune trial that
    drives a training run): Python loggers, Ray Data's context, the driver's line filter."""
    # Ray Train also forwards this variable from the driver's environment to its controller
    # and workers, which covers a Ray instance started without this job's runtime_env.
    os.environ.setdefault(_PRINT_PATCH_VARIABLE, "0")
    if verbose():
        return
    import ray.data

    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(QUIET_LEVEL)
    # Tune's newer console prints its experiment box and paths even when told to be silent
    # (verbose=0); its older one is silent then, and the search prints its own lines.
    os.environ.setdefault(_TUNE_NEW_OUTPUT_VARIABLE, "0")
    # Datasets copy the current context when they are made, and Ray Train hands the driver's
    # to its workers and its dataset coordinators.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def settings_before_ray_import(verbose: bool, environment: Mapping[str, str]) -> dict[str, str]:
    """The Ray variables a job sets before Ray is imported, for a process with `environment`:
    `RAY_DEDUP_LOGS_SKIP_REGEX` skipping `FORWARDED_LINES_TO_DROP`, and unless `verbose` also
    `ROUTINE_LINES_TO_DROP` (beside any pattern the user set there), and `RAY_AUTH_MODE=token`
    (token authentication, Ray's default, without its notice) unless the user set a mode."""
    dropped = FORWARDED_LINES_TO_DROP + (() if verbose else ROUTINE_LINES_TO_DROP)
    ours = "|".join(f"(?:{pattern})" for pattern in dropped)
    users = environment.get(_SKIP_LINES_VARIABLE)
    skip = ours if users is None or ours in users else f"(?:{users})|{ours}"
    return {
        _SKIP_LINES_VARIABLE: skip,
        _AUTH_MODE_VARIABLE: environment.get(_AUTH_MODE_VARIABLE, "token"),
    }


def set_before_ray_import(verbose: bool) -> None:
    """Put `settings_before_ray_import` into this process's environment. Ray reads them when it
    is imported, so in a process that has imported it already (a test session) this does
    nothing: a process and the Ray instance it starts must agree on them."""
    if "ray" not in sys.modules:
        os.environ.update(settings_before_ray_import(verbose, os.environ))


def quiet_training_worker() -> None:
    """Called first in a Ray Train worker's loop: when quiet, its root logger at WARNING.

    Ray Train's worker logging config puts the root logger at INFO with a console handler,
    and Ray 2.60 logs each "Reporting training result ..." (a dump of every metric, from
    every rank) through a logger named after its file (`execution/context.py`), outside the
    `ray.train` logger that `train_logging_config` sets.
    """
    if not verbose():
        logging.getLogger().setLevel(QUIET_LEVEL)


def train_logging_config() -> Any:
    """Ray Train's `LoggingConfig` for the run: its INFO lines only with --verbose."""
    from ray.train import LoggingConfig

    return LoggingConfig(log_level="INFO" if verbose() else QUIET_LEVEL)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _TenthsOfAnEpoch:
    """Progress as plain lines, one when each tenth of the epoch is done (the last tenth is
    the epoch's own line): for a console that is a file or a pipe, which a redrawn bar would
    fill with every redraw."""

    def __init__(self, description: str, total: int) -> None:
        self._description = description
        self._total = max(total, 1)
        self._done = 0
        self._tenths_shown = 0
        self._started = time.monotonic()

    def update(self, n: int = 1) -> None:
        self._done += n
        tenths = min(10 * self._done // self._total, 9)
        if tenths > self._tenths_shown:
            self._tenths_shown = tenths
            rate = self._done / max(time.monotonic() - self._started, 1e-9)
            print(
                f"{self._description}  {10 * tenths}%  {self._done}/{self._total} it  "
                f"{rate:.3g} it/s",
                flush=True,
            )

    def close(self) -> None:
        pass


def epoch_bar(mode: ConsoleMode, epoch: int, total_epochs: int, iterations: int) -> Any:
    """Progress over one epoch's iterations, shown on the driver's console as `mode` says:
    "bar", a live bar (`ray.experimental.tqdm_ray`: the worker sends its state at most once a
    second, the driver redraws it); "lines", a plain line per tenth of the epoch; "off",
    nothing. `update(n)` after each step, `close()` at the end of the epoch."""
    description = f"epoch {epoch}/{total_epochs}"
    if mode == "off":
        return _NoBar()
    if mode == "lines":
        return _TenthsOfAnEpoch(description, iterations)
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(desc=description, total=iterations, unit="it")
    # Drawn at once, while the epoch's first batch is on its way (Ray Data starts the data
    # set's execution anew every epoch); its later states follow at most once a second.
    bar.refresh()
    return bar


def progress_over(
    batches: Iterable[T], total: int | None, description: str, unit: str, size: Callable[[T], int]
) -> Iterator[T]:
    """`batches` as they come, with a progress bar over their items (`size(batch)` each, of
    `total` when known) drawn by this process, on stderr.

    The bar opens with the first batch: Ray Data starts an actor pool when iteration begins,
    and Ray core's driver then logs, straight to stderr where no filter reaches, that the
    pool's actors take object-store arguments (`core_worker.cc`, once per process: Ray Data
    2.60 hands every pool actor its context and transform by reference). Opened later, the
    bar is not cut in two by that line.
    """
    from tqdm import tqdm

    bar = None
    try:
        for batch in batches:
            bar = bar or tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True)
            yield batch
            bar.update(size(batch))
    finally:
        if bar is not None:
            bar.close()


def labelled(label: str, text: str) -> str:
    """A header line: the label in a column of its own, then the text."""
    return f"{label:<{LABEL_WIDTH}}{text}"


def placement_line(nodes: Sequence[str]) -> str:
    """The header line saying where the workers run: `nodes[rank]` is rank's Ray node id,
    shown by its first 8 hex digits (as `ray list nodes` prints them)."""
    ranks_by_node: dict[str, list[int]] = {}
    for rank, node in enumerate(nodes):
        ranks_by_node.setdefault(node, []).append(rank)
    groups = [
        f"{node[:8]} ({'rank' if len(ranks) == 1 else 'ranks'} {', '.join(map(str, ranks))})"
        for node, ranks in ranks_by_node.items()
    ]
    count = len(ranks_by_node)
    where = f"{count} {'node' if count == 1 else 'nodes'}: {', '.join(groups)}"
    return labelled("placed", f"{len(nodes)} workers on {where}")


@dataclass(frozen=True)
class RunStart:
    """What a training run is about to do, for the job's header."""

    run_name: str
    run_folder: str
    resumed_after_epoch: int  # 0 for a new run
    data_path: str
    dataset: str
    split_rows: dict[str, int]  # the train and val splits trained and validated on
    num_classes: int
    model: str
    epochs: int
    iterations_per_epoch: int
    global_batch_size: int
    num_workers: int
    resources_per_worker: dict[str, float]
    use_gpu: bool
    tracking_uri: str | None  # None when tracking is off
    experiment: str | None


def run_start(
    config: ExperimentConfig, data: TrainingData, settings: LoopSettings, resumed_after: int
) -> RunStart:
    """The header of the run `settings` describes."""
    model = config.model
    scales = ",".join(map(str, model.pool_scales)) or "none (dilated FCN)"
    splits = (config.data.train_split, config.data.val_split)
    return RunStart(
        run_name=settings.run_name,
        run_folder=settings.run_folder,
        resumed_after_epoch=resumed_after,
        data_path=data.path,
        dataset=data.manifest.dataset,
        split_rows={split: data.manifest.splits[split].rows for split in splits},
        num_classes=len(data.manifest.class_names),
        model=f"APCNet {model.backbone}, pool scales {scales}",
        epochs=settings.total_epochs,
        iterations_per_epoch=settings.iterations_per_epoch,
        global_batch_size=config.optimization.batch_size,
        num_workers=config.scaling.num_workers,
        resources_per_worker=dict(config.scaling.resources_per_worker),
        use_gpu=config.scaling.use_gpu,
        tracking_uri=settings.tracking_uri if config.tracking.enabled else None,
        experiment=settings.experiment_name if config.tracking.enabled else None,
    )
