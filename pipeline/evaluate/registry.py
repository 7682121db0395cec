"""The MLflow Model Registry: a finished training run's best checkpoint as a registered model.

`register_run` logs the run's best checkpoint to its MLflow run as a pyfunc model
(`pipeline.evaluate.served_model`: RGB uint8 (N, H, W, 3) in, class-index masks (N, H, W)
out), with a tensor signature, an input example and `pip_requirements` pinned to the
installed versions, then registers a new version of the named model, tagged with the
training run, its data set's manifest hash and its val mIoU, and sets an alias on request.
`registered_checkpoint` turns `models:/NAME/VERSION` (or `models:/NAME@alias`) back into the
checkpoint file, so every job that takes a checkpoint can take a registered model.

The model carries its code (`code_paths`: `served_model.code_files`, the project modules the
served model imports), not a models-from-code file: the pickled `SegmentationPyfunc` names its
module, which the model's own `code/` folder provides wherever it is loaded, so `mlflow models
serve --env-manager local` needs nothing but an environment with the pinned packages.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import storage
from pipeline.config.schema import ExperimentConfig
from pipeline.errors import UserError
from pipeline.tracking.tags import (
    MANIFEST_HASH_TAG,
    TRAINING_RUN_ID_TAG,
    TRAINING_RUN_NAME_TAG,
    VAL_MIOU_TAG,
)

if TYPE_CHECKING:
    from pipeline.evaluate.inference_model import InferenceModel

# The training job checks --register (model_to_register) before it trains, and must not import
# torch for that: the checkpoint loader (pipeline.evaluate.inference_model, torch) is imported
# where a checkpoint is read.

MODEL_URI_PREFIX = "models:/"
LOGGED_MODEL_NAME = "model"
# The installed distributions the served model needs, pinned to their versions here.
REQUIRED_DISTRIBUTIONS = ("torch", "torchvision", "mlflow", "numpy", "pillow", "pyarrow", "pyyaml")
# The input example: one small image (logging checks that the model answers it).
EXAMPLE_IMAGE_SIZE = (32, 32)
PROGRESS_BAR_VARIABLE = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class RegistryError(UserError, ValueError):
    """A run that cannot be registered, or a registered model that cannot be found."""


@dataclass(frozen=True)
class RegistrationRequest:
    """Register the best checkpoint of training run `run` as a new version of `model_name`.

    require_complete: refuse a run without COMPLETE.json (a search's best trial may have been
    stopped early by its scheduler: it is registered from its best checkpoint all the same).
    storage_path: where training runs live (default `<home>/runs`).
    """

    run: str
    model_name: str
    alias: str | None = None
    storage_path: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    require_complete: bool = True


@dataclass(frozen=True)
class Registration:
    """A registered model version. model_uri: `models:/NAME/VERSION`."""

    model_name: str
    version: str
    model_uri: str
    logged_model_uri: str
    run_name: str
    run_id: str
    checkpoint: str
    val_miou: float | None
    alias: str | None
    tracking_uri: str

    def describe(self) -> list[str]:
        """What the jobs print: the version, its alias, and how to serve it."""
        alias = (
            f" (alias {self.alias}: models:/{self.model_name}@{self.alias})" if self.alias else ""
        )
        return [
            f"registered {self.model_uri}{alias} from run {self.run_name}",
            f"  serve it: MLFLOW_TRACKING_URI={self.tracking_uri} mlflow models serve "
            f"-m {self.model_uri} --env-manager local --host 127.0.0.1 --port 5001",
        ]


def pip_requirements() -> list[str]:
    """`name==version` of each required distribution as installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in REQUIRED_DISTRIBUTIONS]


def model_signature():
    """Tensor in: any array, checked by the model itself; tensor out: int64 (-1, -1, -1).

    The input is declared as MLflow's "any array" tensor (object, (-1,)), not as uint8
    (-1, -1, -1, 3): `mlflow models serve` casts a JSON request to the declared dtype before
    the model sees it, and numpy's cast to uint8 truncates fractions silently (a 0-1 float
    image would arrive black) and cannot hold images of different sizes. Declared this way the
    numbers arrive as sent, and `served_model.checked_images` accepts integers 0-255 in
    (N, H, W, 3) or a list of (H, W, 3) and refuses anything else with one message (HTTP 400);
    the input example shows the uint8 (N, H, W, 3) layout."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(object), (-1,))]),
        outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, -1, -1))]),
    )


def model_to_register(config: ExperimentConfig, register: str | None) -> str | None:
    """The model a training job registers its run under: `--register NAME`, else
    `tracking.register_model`, else None. Raises RegistryError when tracking is off (checked
    before training starts, so no run is trained in vain)."""
    name = register or config.tracking.register_model
    if name:
        check_model_name(name)
    if name and not config.tracking.enabled:
        raise RegistryError(
            f"--register {name} needs MLflow tracking, but tracking.enabled is false: drop "
            "--set tracking.enabled=false (or the config's `enabled: false`), or drop --register"
        )
    return name


def check_model_name(name: str) -> None:
    """Raise RegistryError unless MLflow accepts `name` and models:/NAME@ALIAS can name it."""
    if not name.strip() or any(character in name for character in "/:@"):
        raise RegistryError(
            f"model name {name!r} is empty or contains '/', ':' or '@', which MLflow's model "
            "URIs (models:/NAME/VERSION, models:/NAME@ALIAS) cannot hold; choose another"
        )


def register_run(request: RegistrationRequest) -> Registration:
    """Log and register the run's best checkpoint; see the module docstring.

    Raises RegistryError when the run has not finished, has no checkpoint or no MLflow run,
    InferenceError when its checkpoint cannot be read.
    """
    import mlflow

    from pipeline.tracking.runs import find_run, resolve_tracking
    from pipeline.train.run_folder import best_checkpoint, completed_summary, run_folder

    check_model_name(request.model_name)
    uri, experiment = resolve_tracking(request.tracking_uri, request.experiment)
    storage_path = request.storage_path or str(_default_storage())
    folder = run_folder(request.run, storage_path)
    if not storage.is_dir(storage.resolve(folder)):
        raise RegistryError(
            f"no training run {request.run!r} in {storage_path}: name a run that "
            "jobs/train.py finished there (--storage-path names where training runs live)"
        )
    summary = completed_summary(request.run, storage_path)
    if summary is None and request.require_complete:
        raise RegistryError(
            f"run {request.run!r} has not finished (no COMPLETE.json in {folder}): only a "
            f"finished run is registered. Finish it (python jobs/train.py --name {request.run}) "
            "and register it then; --storage-path names where training runs live"
        )
    checkpoint = (summary or {}).get("best_checkpoint")
    if not checkpoint:
        try:
            checkpoint = best_checkpoint(request.run, storage_path)
        except FileNotFoundError as error:
            raise RegistryError(f"cannot register run {request.run!r}: {error}") from error
    run = find_run(request.run, tracking_uri=uri, experiment=experiment)
    if run is None:
        raise RegistryError(
            f"run {request.run!r} has no MLflow run in experiment {experiment!r} at {uri}: "
            "pass the --tracking-uri / --experiment it was trained with (a run trained with "
            "tracking.enabled: false cannot be registered)"
        )
    from pipeline.evaluate.inference_model import load_project_checkpoint

    load_project_checkpoint(checkpoint)  # an unreadable checkpoint fails here, not in MLflow
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    val_miou = (summary or {}).get("best_val_miou")
    if val_miou is None:
        history = client.get_metric_history(run.info.run_id, "val_miou")
        val_miou = max((metric.value for metric in history), default=None)
    tags = {
        TRAINING_RUN_NAME_TAG: request.run,
        TRAINING_RUN_ID_TAG: run.info.run_id,
        MANIFEST_HASH_TAG: run.data.tags.get(MANIFEST_HASH_TAG, "unknown"),
        VAL_MIOU_TAG: "n/a" if val_miou is None or math.isnan(val_miou) else f"{val_miou:.6f}",
    }
    model_id, artifact_location = _log_model(client, run, checkpoint)
    _ensure_registered_model(client, request.model_name)
    # The logged model's artifact location, not models:/<id>: a SQLite registry would look the
    # id up through MLflow's process-wide tracking URI instead of this client's.
    version = client.create_model_version(
        request.model_name,
        source=artifact_location,
        run_id=run.info.run_id,
        tags=tags,
        model_id=model_id,
    )
    if request.alias:
        client.set_registered_model_alias(request.model_name, request.alias, version.version)
    return Registration(
        model_name=request.model_name,
        version=str(version.version),
        model_uri=f"{MODEL_URI_PREFIX}{request.model_name}/{version.version}",
        logged_model_uri=f"{MODEL_URI_PREFIX}{model_id}",
        run_name=request.run,
        run_id=run.info.run_id,
        checkpoint=str(checkpoint),
        val_miou=val_miou,
        alias=request.alias,
        tracking_uri=uri,
    )


def model_version_location(model_uri: str, tracking_uri: str | None = None) -> str:
    """Where the files of a registered model version (`models:/NAME/VERSION` or
    `models:/NAME@alias`) are stored: a URI for `mlflow.artifacts.download_artifacts`.

    Resolved with a client of `tracking_uri` (MLflow's own models:/ lookup reads only the
    process-wide registry URI). Raises RegistryError when the URI is malformed or the
    registry has no such model.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.runs import resolve_tracking

    body = model_uri.removeprefix(MODEL_URI_PREFIX).strip("/")
    name, _, version = body.rpartition("/") if "/" in body else body.rpartition("@")
    if body == model_uri or not name or not version:
        raise RegistryError(
            f"--model {model_uri!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS"
        )
    uri, _ = resolve_tracking(tracking_uri, None)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if "/" not in body:
            version = client.get_model_version_by_alias(name, version).version
        return client.get_model_version_download_uri(name, version)
    except MlflowException as error:
        raise RegistryError(
            f"cannot fetch registered model {model_uri} from {uri}: {error.message}. "
            "List the registered models in the MLflow UI (Models), or pass --tracking-uri"
        ) from error


@contextlib.contextmanager
def registered_checkpoint(model_uri: str, tracking_uri: str | None = None) -> Iterator[str]:
    """The checkpoint file of a registered model (`models:/NAME/VERSION`, `models:/NAME@alias`),
    downloaded into a temporary folder that exists while the block runs.

    Raises RegistryError when the URI is malformed or the registry has no such model.
    """
    from mlflow.artifacts import download_artifacts

    from pipeline.tracking.runs import resolve_tracking

    location = model_version_location(model_uri, tracking_uri)
    uri, _ = resolve_tracking(tracking_uri, None)
    with tempfile.TemporaryDirectory(prefix="apcnet-model-") as folder:
        local = download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/artifacts", dst_path=folder, tracking_uri=uri
        )
        yield str(Path(local) / _checkpoint_name(Path(local)))


def load_registered_model(model_uri: str, tracking_uri: str | None = None) -> InferenceModel:
    """A registered model (`models:/NAME/VERSION` or `models:/NAME@alias`) for inference,
    loaded exactly like its checkpoint file; its source is the model URI."""
    from pipeline.evaluate.inference_model import load_project_checkpoint

    with registered_checkpoint(model_uri, tracking_uri) as checkpoint:
        loaded = load_project_checkpoint(checkpoint)
    return replace(loaded, source=model_uri)


def _log_model(client, run, checkpoint: str) -> tuple[str, str]:
    """Log `checkpoint` as the pyfunc model of `run` (its Models column shows it); its id and
    artifact location.

    Saved locally, then uploaded through `client`, so that no process-wide MLflow setting
    (the fluent API's tracking URI, an active run) is read or changed.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model
    from mlflow.pyfunc import save_model

    # Imported here: MLflow's pyfunc machinery is slow to import, and the jobs import this
    # module whether or not they register.
    from pipeline.evaluate import served_model

    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=LOGGED_MODEL_NAME,
        source_run_id=run.info.run_id,
        tags={"mlflow.modelFlavor": "pyfunc"},
    )
    metadata = Model(
        artifact_path=logged.artifact_location,
        run_id=run.info.run_id,
        model_uuid=logged.model_id,
        model_id=logged.model_id,
    )
    with (
        storage.local_file(storage.resolve(checkpoint)) as local_checkpoint,
        tempfile.TemporaryDirectory(prefix="apcnet-model-") as folder,
        _quiet_model_saving(),
    ):
        # The served model's code staged apart, one folder per package, for MLflow to copy.
        saved, code = Path(folder) / LOGGED_MODEL_NAME, Path(folder) / "code"
        for relative in served_model.code_files():
            (code / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(served_model.PROJECT_ROOT / relative, code / relative)
        save_model(
            str(saved),
            python_model=served_model.SegmentationPyfunc(),
            artifacts={served_model.CHECKPOINT_ARTIFACT: str(local_checkpoint)},
            code_paths=[str(package) for package in sorted(code.iterdir())],
            signature=model_signature(),
            input_example=np.zeros((1, *EXAMPLE_IMAGE_SIZE, 3), dtype=np.uint8),
            pip_requirements=pip_requirements(),
            mlflow_model=metadata,
        )
        for cache in saved.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
        client.log_model_artifacts(logged.model_id, str(saved))
    client.log_outputs(run.info.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return logged.model_id, logged.artifact_location


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


@contextlib.contextmanager
def _quiet_model_saving() -> Iterator[None]:
    """Without MLflow's console noise while a model is saved: its warning that a Python object
    is pickled (the class is this project's own, imported from the model's code/), and the
    progress bar of checking the input example against the saved model."""
    logger = logging.getLogger("mlflow.pyfunc")
    level = logger.level
    bar = os.environ.get(PROGRESS_BAR_VARIABLE)
    logger.setLevel(logging.ERROR)
    os.environ[PROGRESS_BAR_VARIABLE] = "false"
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar is None:
            os.environ.pop(PROGRESS_BAR_VARIABLE, None)
        else:
            os.environ[PROGRESS_BAR_VARIABLE] = bar


def _checkpoint_name(artifacts: Path) -> str:
    """The checkpoint's file name inside a downloaded model's `artifacts/` folder."""
    files = sorted(path.name for path in artifacts.iterdir() if path.is_file())
    if len(files) != 1:
        raise RegistryError(f"registered model artifacts {artifacts} hold {files}, not one file")
    return files[0]


def _default_storage() -> Path:
    from pipeline.train.run_folder import default_storage_path

    return default_storage_path()
