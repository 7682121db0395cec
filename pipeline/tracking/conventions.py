"""MLflow's own conventions, so its UI shows this project's runs the way it shows any model's.

- Experiments are tagged `mlflow.experimentKind = custom_model_development`: MLflow 3's UI
  then opens them on the runs table, not on its generative-AI overview.
- Training and evaluation runs log their data set as MLflow dataset inputs (one per split
  they read: the data set's name and split, the manifest's sha256 as digest, the split's row
  count in the profile), which fills the runs table's Dataset column.

Plain values in, MLflow entities out: this module knows nothing of the shard format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from pipeline.tracking.retry import call_with_retry

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# MLflow stores a dataset digest in at most 36 characters (mlflow.utils.validation).
DIGEST_LENGTH = 32

# The `context` badge of a dataset input, per role of the split in the run.
TRAINING_CONTEXT = "training"
VALIDATION_CONTEXT = "validation"
EVALUATION_CONTEXT = "evaluation"


def create_experiment(client, tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """Create the experiment `name`, tagged as model training; its id."""
    tags = {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    return call_with_retry(
        lambda: client.create_experiment(name, artifact_location, tags), tracking_uri
    )


def tag_experiment_kind(client, tracking_uri: str, experiment) -> None:
    """Tag an existing experiment (created before this convention, or by hand) as model
    training, unless it already says what kind it is."""
    if EXPERIMENT_KIND_TAG in (experiment.tags or {}):
        return
    call_with_retry(
        lambda: client.set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
        ),
        tracking_uri,
    )


@dataclass(frozen=True)
class SplitInput:
    """One split of a prepared data set as a run's input.

    dataset: the data set's name (the manifest's `dataset`); manifest_sha256: sha256 of its
    manifest.json; source: where the manifest lives (path or URI); context: the split's role in
    the run (TRAINING_CONTEXT, ...).
    """

    dataset: str
    split: str
    rows: int
    manifest_sha256: str
    source: str
    context: str

    def as_input(self) -> DatasetInput:
        dataset = Dataset(
            name=f"{self.dataset}-{self.split}",
            digest=self.manifest_sha256[:DIGEST_LENGTH],
            source_type=_source_type(self.source),
            source=json.dumps({"uri": self.source}),
            profile=json.dumps({"split": self.split, "num_rows": self.rows}),
        )
        return DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, self.context)])


def split_inputs(
    dataset: str,
    split_rows: Mapping[str, int],
    contexts: Mapping[str, str],
    manifest_sha256: str,
    source: str,
) -> list[DatasetInput]:
    """MLflow dataset inputs for the splits named in `contexts` (split -> context)."""
    return [
        SplitInput(
            dataset, split, int(split_rows[split]), manifest_sha256, source, context
        ).as_input()
        for split, context in contexts.items()
    ]


def _source_type(source: str) -> str:
    scheme = source.split("://", 1)[0] if "://" in source else ""
    return {"s3": "s3", "gs": "gcs", "http": "http", "https": "http"}.get(scheme, "local")
