"""One node's utilisation (CPU, memory, disk, network, GPUs), sampled and logged into a run.

`NodeMetricsReporter` samples its node every `interval_s` with psutil (and NVML where an
NVIDIA GPU and driver exist) and logs each sample into one MLflow run under
`system/<node>/<metric>`: MLflow's own names and prefix for system metrics (its UI shows them
in the run's "System metrics" tab), with the node's name between, so the nodes of a run never
overwrite each other. The step of a sample is the number of whole intervals since the run
started, the same clock on every node and across restarts of the worker group.

MLflow's own monitor (`mlflow.enable_system_metrics_logging`) is not used: it stops for good
at its first failed call, and it would have to start a run in the process it samples. This
reporter keeps sampling through a tracking-server outage: samples that could not be logged
wait (at most `MAX_PENDING_SAMPLES`, the oldest dropped first) and go with the next log that
succeeds. MLflow's environment variables for system metrics (MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING,
MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, ...) do not apply to it: the run's config decides
(`tracking.node_metrics`, `tracking.node_metrics_interval_s`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import psutil

SYSTEM_PREFIX = "system/"
# Samples kept while the tracking server does not answer: an hour at the default interval.
MAX_PENDING_SAMPLES = 360
MEGABYTE = 1e6
# How long one attempt to log may retry before the samples wait for the next interval.
LOG_BUDGET_S = 5.0


def node_name(node_id: str) -> str:
    """The name a Ray node's metrics carry: `node-` and the first 8 hex digits of its id
    (unique in practice; nodes on one host share an IP and a host name, so those cannot tell
    them apart)."""
    return f"node-{node_id[:8]}"


def metric_prefix(node_id: str) -> str:
    """`system/<node name>/`: the prefix of every metric of that node."""
    return f"{SYSTEM_PREFIX}{node_name(node_id)}/"


@dataclass(frozen=True)
class NodeMetricsTarget:
    """Where and how often a node reporter logs: the run, its tracking URI, the sampling
    interval and the run's start (Unix seconds), from which samples count their step."""

    run_id: str
    tracking_uri: str
    interval_s: float
    run_started_unix_s: float


class NodeSampler:
    """Samples this machine: CPU and memory use now, disk use of `disk_path`, network bytes
    since the sampler was made, and each NVIDIA GPU's utilisation and memory."""

    def __init__(self, disk_path: str = "/") -> None:
        self.disk_path = disk_path
        network = psutil.net_io_counters()
        self._received_at_start = network.bytes_recv
        self._sent_at_start = network.bytes_sent
        psutil.cpu_percent(interval=None)  # starts the CPU counter: the first sample then has one
        self._gpus = _nvidia_gpus()

    def sample(self) -> dict[str, float]:
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(self.disk_path)
        network = psutil.net_io_counters()
        values = {
            "cpu_utilization_percentage": psutil.cpu_percent(interval=None),
            "system_memory_usage_megabytes": memory.used / MEGABYTE,
            "system_memory_usage_percentage": memory.percent,
            "disk_usage_megabytes": disk.used / MEGABYTE,
            "disk_usage_percentage": disk.percent,
            "disk_available_megabytes": disk.free / MEGABYTE,
            "network_receive_megabytes": (network.bytes_recv - self._received_at_start) / MEGABYTE,
            "network_transmit_megabytes": (network.bytes_sent - self._sent_at_start) / MEGABYTE,
        }
        for index, handle in enumerate(self._gpus):
            values.update(_gpu_sample(index, handle))
        return values


def _nvidia_gpus() -> list[Any]:
    """NVML handles of this machine's NVIDIA GPUs; none without a GPU or its driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no NVML library, no driver or no device: a CPU node
        return []


def _gpu_sample(index: int, handle: Any) -> dict[str, float]:
    import pynvml

    utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return {
        f"gpu_{index}_utilization_percentage": float(utilization.gpu),
        f"gpu_{index}_memory_usage_megabytes": memory.used / MEGABYTE,
        f"gpu_{index}_memory_usage_percentage": 100.0 * memory.used / memory.total,
    }


class NodeMetricsReporter:
    """Samples this node every `target.interval_s` and logs the samples into `target.run_id`
    under `metric_prefix(node_id)`, from a thread of its own until `stop()`.

    Made a Ray actor on the node it samples (`pipeline.train.node_reporter`); usable on its
    own too. A failed log never stops it: the samples wait for the next one (see the module
    docstring)."""

    def __init__(self, target: NodeMetricsTarget, node_id: str) -> None:
        self.target = target
        self.node_id = node_id
        self.prefix = metric_prefix(node_id)
        self.sampler = NodeSampler()
        self.pending: deque[tuple[int, int, dict[str, float]]] = deque(maxlen=MAX_PENDING_SAMPLES)
        self.logged_samples = 0
        self.failed_logs = 0
        self._client: Any = None  # made at the first log, in the reporter's thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, take a last sample (so that even a run shorter than the interval
        has one) and log what is pending (one attempt)."""
        self._stop.set()
        self._thread.join()
        self._take_sample()
        self._flush()

    def _run(self) -> None:
        while not self._stop.wait(self._seconds_to_next_sample()):
            self._take_sample()
            self._flush()

    def _take_sample(self) -> None:
        now = time.time()
        step = int((now - self.target.run_started_unix_s) // self.target.interval_s)
        self.pending.append((step, int(now * 1000), self.sampler.sample()))

    def _seconds_to_next_sample(self) -> float:
        since_start = time.time() - self.target.run_started_unix_s
        return self.target.interval_s - since_start % self.target.interval_s

    def _flush(self) -> None:
        """Log the pending samples, oldest first, in batches MLflow accepts; stop at the first
        batch that fails (it and the later ones wait)."""
        from pipeline.tracking.retry import RetryPolicy, call_with_retry, tracking_client
        from pipeline.tracking.runs import MAX_METRICS_PER_BATCH

        self._client = self._client or tracking_client(self.target.tracking_uri)
        client = self._client
        while self.pending:
            batch = []
            for step, timestamp, values in self.pending:
                if batch and len(batch) + len(values) > MAX_METRICS_PER_BATCH:
                    break
                batch.append((step, timestamp, values))
            metrics = _metrics(self.prefix, batch)
            try:
                call_with_retry(
                    lambda metrics=metrics: client.log_batch(self.target.run_id, metrics=metrics),
                    self.target.tracking_uri,
                    RetryPolicy(budget_s=LOG_BUDGET_S),
                )
            except Exception:  # the server is away, or the run: the samples wait
                self.failed_logs += 1
                return
            for _ in batch:
                self.pending.popleft()
            self.logged_samples += len(batch)


def _metrics(prefix: str, samples: list[tuple[int, int, dict[str, float]]]) -> list[Any]:
    from mlflow.entities import Metric

    return [
        Metric(prefix + key, value, timestamp, step)
        for step, timestamp, values in samples
        for key, value in values.items()
    ]
