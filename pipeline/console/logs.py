"""Which logs a job's console shows: the project's own lines by default, Ray's with --verbose.

The one home of every log and verbosity setting. `jobs/cli.py` turns `--verbose` into
`APCNET_VERBOSE=1` (`VERBOSE_VARIABLE`) before the job starts; everything below reads it, in
the driver and, through the job's runtime_env (`variables_for_workers`), in every Ray process
of the job, so a Tune trial that drives its own training run is as quiet as the job.

Quiet (the default) means:
- Ray's INFO logs hidden in every process: the `ray` logger (`ray_init_options`), Ray Train's
  (`train_logging_config`: "Reporting training result ...", worker-group start-up) and
  MLflow's (database set-up); warnings and errors still show.
- Ray Data's progress bars off (`DataContext.enable_progress_bars`,
  `RAY_DATA_DISABLE_PROGRESS_BARS`): the console's bars are the project's own
  (`pipeline.console.progress`).
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
from collections.abc import Mapping
from typing import Any

VERBOSE_VARIABLE = "APCNET_VERBOSE"
QUIET_LEVEL = "WARNING"
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
# What Ray's processes print when a node of the run goes (preempted or lost), dropped by the
# driver unless --verbose: the project prints one line per such event instead
# (`pipeline.train.cluster_watch`, and the workers' notice and resume lines), and Ray Train
# restarts the group on its own. Tracebacks forwarded from Ray's processes (the controller's
# failed shutdown of the lost workers' process group, the survivors' broken collectives) are
# dropped line by line; a failure the run does not survive still ends the job with its own
# one-line error.
EXPECTED_LOSS_LINES_TO_DROP = (
    r"^Traceback \(most recent call last\):",
    r'^  File "[^"]+", line \d+',
    r"^    ",  # a traceback's code lines and carets
    r"^(?:ray\.\S+Error|torch\.distributed\S*|RuntimeError|OSError): ",
    r"^Error in control loop iteration: ",
    r"^During handling of the above exception, another exception occurred:",
    r"^The above exception was the direct cause of the following exception:",
    r"Graceful shutdown of backend failed\. This is expected if one of the workers has crashed",
    r"Failed to remove \d+ bundle\(s\) for placement group",
    r"has been marked dead because the detector has missed too many heartbeats",
    r"Raylet is terminated\. Termination is unexpected\.",  # with the raylet's last lines
    r"^\t",  # the details under Ray's error messages (a dead actor's id, pid, ...)
    r"The actor died because its node has died",
    r"PreemptionWatcher: preemption detected",
    r"Connection reset by peer|Connection closed by peer",
    r"The actor is temporarily unavailable",
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
    `ROUTINE_LINES_TO_DROP` and `EXPECTED_LOSS_LINES_TO_DROP` (beside any pattern the user set
    there), and `RAY_AUTH_MODE=token`
    (token authentication, Ray's default, without its notice) unless the user set a mode."""
    quiet = ROUTINE_LINES_TO_DROP + EXPECTED_LOSS_LINES_TO_DROP
    dropped = FORWARDED_LINES_TO_DROP + (() if verbose else quiet)
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
