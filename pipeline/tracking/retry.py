"""The one retry rule for MLflow calls, and the one place an MLflow client is created.

A call that fails for a reason a wait may clear (an unreachable, busy or restarting server; a
locked SQLite store) is waited out for at most `RetryPolicy.budget_s` (30 s; training runs pass
`tracking.outage_wait_s`), then raises `TrackingUnavailableError`, which names the tracking URI
and says what to check. Any other error is raised at once.

A server is retried by MLflow's own HTTP client (refused or dropped connections, timeouts, 408,
429, 5xx; urllib3's backoff). With R retries, backoff factor f, jitter j and timeout t (each
attempt's wait for a connection or an answer), one request waits at most
(R + 1) * t + sum(f * 2**k + j for k in 1..R-1) (`http_request_bound_s`): `HTTP_SETTINGS`
(R = 2, f = 2, t = 8, MLflow's j = 1; a user's own values are kept) give 3 * 8 + 5 = 29 s,
and ignore Retry-After (a server could ask for hours). The timeout bounds each wait on the
socket, not a whole transfer, so a large artifact that keeps moving is not cut short. Those
settings are process-wide, so a call is repeated here, after a pause, while one more attempt
as long as the longest so far still fits in its budget: for a budget longer than one request, and for a SQLite store locked
past SQLite's own wait, which MLflow's HTTP retries never see. A budget shorter than one
request gets that request.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import mlflow
import requests
from mlflow.environment_variables import (
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    MLFLOW_HTTP_REQUEST_BACKOFF_JITTER,
    MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    MLFLOW_HTTP_REQUEST_TIMEOUT,
    MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER,
)
from mlflow.exceptions import MlflowException

from pipeline.errors import UserError

T = TypeVar("T")

# MLflow's HTTP settings while a tracking server is used, unless the user set them.
HTTP_SETTINGS = {
    MLFLOW_HTTP_REQUEST_MAX_RETRIES.name: "2",
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.name: "2",
    MLFLOW_HTTP_REQUEST_TIMEOUT.name: "8",
    MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER.name: "false",
}
# What MLflow's retries end in (wrapped in a plain MlflowException): no connection, a timeout,
# or a status in its retry list to the last.
NO_ANSWER_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError)


class TrackingUnavailableError(UserError):
    """The MLflow tracking store did not answer within the retry budget."""


@dataclass(frozen=True)
class RetryPolicy:
    """Wait out a transient error for at most budget_s, pausing pause_s between attempts."""

    budget_s: float = 30.0
    pause_s: float = 1.0


DEFAULT_POLICY = RetryPolicy()


def tracking_client(tracking_uri: str) -> mlflow.MlflowClient:
    """An `MlflowClient` for `tracking_uri`; every client of the project is made here.

    For a server it sets `HTTP_SETTINGS` in this process's environment where the user has not
    (MLflow reads them at every request); a user's own values are kept, with their wait.
    """
    if _is_server(tracking_uri):
        for name, value in HTTP_SETTINGS.items():
            os.environ.setdefault(name, value)
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def http_request_bound_s() -> float:
    """The longest one MLflow HTTP request waits for a server that does not answer, with the
    settings in force in this process (see the module docstring)."""
    retries = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()
    factor = MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    jitter = MLFLOW_HTTP_REQUEST_BACKOFF_JITTER.get()
    sleeps = sum(factor * 2**k + jitter for k in range(1, retries))
    return (retries + 1) * MLFLOW_HTTP_REQUEST_TIMEOUT.get() + sleeps


def call_with_retry(
    call: Callable[[], T], tracking_uri: str, policy: RetryPolicy = DEFAULT_POLICY
) -> T:
    """`call()`, repeated on transient errors (`is_transient`) as the module docstring says,
    then TrackingUnavailableError (chained to the last error); other errors propagate at once."""
    started = time.monotonic()
    while True:
        attempt_started = time.monotonic()
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                raise
            now = time.monotonic()
            # The next attempt may take as long as this one, or as MLflow's retries of a request.
            longest = now - attempt_started
            if _is_server(tracking_uri):
                longest = max(longest, http_request_bound_s())
            if now - started + policy.pause_s + longest > policy.budget_s:
                raise TrackingUnavailableError(
                    _unavailable_message(tracking_uri, now - started, error)
                ) from error
            time.sleep(policy.pause_s)


def is_transient(error: BaseException) -> bool:
    """True for errors a wait may clear: a server that did not answer MLflow's retries, or a
    SQL store that is locked or busy (MLflow's code for its OperationalError)."""
    if isinstance(error, MlflowException) and error.error_code == "TEMPORARILY_UNAVAILABLE":
        return True
    cause = error.__cause__ or error.__context__
    return isinstance(error, NO_ANSWER_ERRORS) or (cause is not None and is_transient(cause))


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def _unavailable_message(uri: str, elapsed: float, error: Exception) -> str:
    last = textwrap.shorten(str(error), 300, placeholder="...")
    if "database is locked" in last:
        advice = (
            "other processes keep the SQLite store locked; for many concurrent writers run "
            "`mlflow server` and point tracking.tracking_uri / MLFLOW_TRACKING_URI at it"
        )
    elif _is_server(uri):
        advice = (
            f"check that the tracking server is running and reachable from this machine "
            f"(`curl {uri.rstrip('/')}/health`), or point tracking.tracking_uri / "
            "MLFLOW_TRACKING_URI at another store"
        )
    else:
        advice = "check that the store exists and is reachable from this machine"
    return (
        f"MLflow tracking at {uri} did not answer for {elapsed:.0f} s: {advice} "
        f"(last error: {last})"
    )
