"""Finding runs: the MLflow filters for a run's name and a run's children, and one search
that reads every page, each request under the retry policy."""

from __future__ import annotations

import mlflow
from mlflow.entities import Run

from pipeline.tracking.retry import call_with_retry
from pipeline.tracking.tags import PARENT_RUN_TAG, RUN_NAME_TAG


def search_runs(
    client: mlflow.MlflowClient,
    tracking_uri: str,
    experiment_id: str,
    query: str,
    *,
    max_results: int | None = None,
) -> list[Run]:
    """The runs of one experiment that match the MLflow filter `query`, oldest first.

    Every page of results, or only the first `max_results`. Each request follows the retry
    policy (`pipeline.tracking.retry`); `tracking_uri` names the store in its error.
    """
    runs: list[Run] = []
    page_token = None
    while True:
        page_size = None if max_results is None else max_results - len(runs)
        page = call_with_retry(
            lambda token=page_token, size=page_size: client.search_runs(
                [experiment_id],
                query,
                order_by=["attributes.start_time ASC"],
                page_token=token,
                **({} if size is None else {"max_results": size}),
            ),
            tracking_uri,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token or (max_results is not None and len(runs) >= max_results):
            return runs


def run_name_query(run_name: str) -> str:
    """The MLflow filter for runs named `run_name` (`apcnet.run_name` tag)."""
    return f"tags.`{RUN_NAME_TAG}` = '{run_name}'"


def children_query(parent_run_id: str) -> str:
    """The MLflow filter for runs nested under `parent_run_id`."""
    return f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"
