"""The one retry policy for MLflow calls, and the one place an MLflow client is created.

A call that fails for a reason a moment's wait may clear (the server is unreachable, busy or
restarting; a SQLite store is locked by another writer) is retried with exponential backoff
until `RetryPolicy.budget_s` (30 s) have passed since its first attempt; then it raises
`TrackingUnavailableError`, which names the tracking URI and says what to check. Any other
error is raised at once.

MLflow's HTTP client has retries of its own (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, default 7,
backoff factor 2, and a 120 s `MLFLOW_HTTP_REQUEST_TIMEOUT`): on top of this policy one call to
an unreachable server would wait for minutes. So `tracking_client` turns MLflow's own HTTP
retries off and shortens its timeout, unless the user has set those variables.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import mlflow
import requests
from mlflow.exceptions import MlflowException

from pipeline.errors import UserError

T = TypeVar("T")

# MLflow error codes of answers worth waiting out (HTTP 503, 504, 429).
TRANSIENT_ERROR_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}
)
# requests' errors for "no answer": refused or dropped connections, timeouts, and an HTTP
# status in MLflow's retry list (408, 429, 5xx) once its own retries are spent.
TRANSIENT_REQUEST_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.RetryError,
)
# MLflow's own HTTP retry settings while a tracking server is used: no retries there, this
# policy is the only one; and a request timeout short enough that a server that accepts
# connections but never answers still fails within about one budget.
HTTP_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class TrackingUnavailableError(UserError):
    """The MLflow tracking store did not answer within the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    """Waits of first_delay_s, doubling up to max_delay_s, while less than budget_s have passed
    since the first attempt; the last wait is cut to the budget."""

    budget_s: float = 30.0
    first_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay_s
        while True:
            yield delay
            delay = min(2 * delay, self.max_delay_s)


DEFAULT_POLICY = RetryPolicy()


def tracking_client(tracking_uri: str) -> mlflow.MlflowClient:
    """An `MlflowClient` for `tracking_uri`; every client of the project is made here.

    For an HTTP(S) server it sets `HTTP_CLIENT_DEFAULTS` in this process's environment where
    the user has not set them (MLflow reads them at every request), so that MLflow's own
    retries do not multiply this module's and an unreachable server fails in about 30 s, not
    minutes. A user who sets them keeps their values, and with them a longer total wait.
    """
    if tracking_uri.startswith(("http://", "https://")):
        for name, value in HTTP_CLIENT_DEFAULTS.items():
            os.environ.setdefault(name, value)
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def call_with_retry(
    call: Callable[[], T], tracking_uri: str, policy: RetryPolicy = DEFAULT_POLICY
) -> T:
    """`call()`, retried on transient errors (`is_transient`) as `policy` says.

    Raises TrackingUnavailableError (chained to the last error) once the budget is spent;
    other errors propagate unchanged on the first attempt.
    """
    started = time.monotonic()
    delays = policy.delays()
    attempts = 0
    while True:
        attempts += 1
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                raise
            elapsed = time.monotonic() - started
            if elapsed >= policy.budget_s:
                raise TrackingUnavailableError(
                    _unavailable_message(tracking_uri, attempts, elapsed, error)
                ) from error
            time.sleep(min(next(delays), policy.budget_s - elapsed))


def is_transient(error: BaseException) -> bool:
    """True for errors a wait may clear: no answer from the server, an answer that says
    "busy" or "try later", or a SQLite store locked by another writer."""
    if isinstance(error, MlflowException) and (
        error.error_code in TRANSIENT_ERROR_CODES or "database is locked" in str(error)
    ):
        return True
    # MLflow wraps requests' errors in a plain MlflowException: look along the chain.
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, TRANSIENT_REQUEST_ERRORS):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _unavailable_message(uri: str, attempts: int, elapsed: float, error: Exception) -> str:
    last = " ".join(str(error).split())
    if len(last) > 300:
        last = last[:297] + "..."
    if "database is locked" in last:
        advice = (
            "other processes keep the SQLite store locked; for many concurrent writers run "
            "`mlflow server` and point tracking.tracking_uri / MLFLOW_TRACKING_URI at it"
        )
    elif uri.startswith(("http://", "https://")):
        advice = (
            f"check that the tracking server is running and reachable from this machine "
            f"(`curl {uri.rstrip('/')}/health`), or point tracking.tracking_uri / "
            "MLFLOW_TRACKING_URI at another store"
        )
    else:
        advice = "check that the store exists and is reachable from this machine"
    return (
        f"MLflow tracking at {uri} did not answer after {attempts} attempts over "
        f"{elapsed:.0f} s: {advice} (last error: {last})"
    )
