"""Batch evaluation of a trained model on a data split, on a Ray Data actor pool, into MLflow.

`evaluate(request)` loads the model (a checkpoint, a training run's best checkpoint, or a
reference-toolbox checkpoint), checks it against the data set, counts per-image intersection /
union / confusion on the actor pool, sums them on the driver and logs an evaluation run linked
to the training run. Every check happens before the MLflow run is created, and the run is
marked FAILED if the evaluation itself crashes, so nothing is ever logged as a result that
is not one.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from apcnet.metrics import SegmentationScores
from pipeline.data.shards import DatasetError, Manifest, load_manifest, read_shard_rows
from pipeline.data.transforms import decode_image, decode_mask, normalize
from pipeline.evaluate.actor_pool import plan_actor_pool
from pipeline.evaluate.counts import EvalSample, SplitCounts, count_split_distributed
from pipeline.evaluate.inference_model import (
    InferenceError,
    InferenceModel,
    check_classes_match,
    load_mmseg_checkpoint,
    load_project_checkpoint,
)
from pipeline.evaluate.pictures import SamplePanel, confusion_figure, sample_grid
from pipeline.evaluate.run_checkpoint import load_run_checkpoint
from pipeline.evaluate.testtime import TestTimeOptions, predict_label_map
from pipeline.tracking.tables import text_table
from pipeline.tracking.tags import (
    KIND_EVALUATION,
    KIND_TAG,
    SPLIT_TAG,
    TEST_TIME_MODE_TAG,
    TRAINING_RUN_ID_TAG,
    TRAINING_RUN_NAME_TAG,
)


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate, on which data, how (see `jobs/evaluate.py --help`).

    Exactly one of checkpoint / run / mmseg_checkpoint / model (a registered model,
    `models:/NAME/VERSION` or `models:/NAME@alias`, fetched from the tracking URI). data: a shard folder or its manifest;
    defaults to the data set the checkpoint was trained on, required with mmseg_checkpoint.
    actors / cpus_per_actor: the actor pool (None: sized from the cluster).
    batch_size: samples per actor call. num_samples: rows of the logged sample grid.
    """

    checkpoint: str | None = None
    run: str | None = None
    mmseg_checkpoint: str | None = None
    model: str | None = None
    data: str | None = None
    split: str = "val"
    options: TestTimeOptions = field(default_factory=TestTimeOptions)
    batch_size: int = 1
    actors: int | None = None
    cpus_per_actor: float | None = None
    storage_path: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    track: bool = True
    num_samples: int = 4


@dataclass(frozen=True)
class EvaluationReport:
    """The result: summed counts, scores, logged metric names/values and the printed table."""

    split: str
    class_names: tuple[str, ...]
    counts: SplitCounts
    scores: SegmentationScores
    metrics: dict[str, float]
    table: str
    model_source: str
    data_source: str
    mlflow_run_id: str | None
    seconds: float


def load_evaluation_model(request: EvaluationRequest) -> tuple[InferenceModel, Manifest]:
    """The model and the data set it is evaluated on, checked against each other.

    Raises InferenceError / DatasetError naming the option at fault; touches neither Ray nor
    MLflow.
    """
    sources = [request.checkpoint, request.run, request.mmseg_checkpoint, request.model]
    if sum(source is not None for source in sources) != 1:
        raise InferenceError("pass exactly one of --checkpoint, --run, --mmseg-checkpoint, --model")
    if request.batch_size < 1:
        raise InferenceError(f"--batch-size must be at least 1, got {request.batch_size}")
    if request.mmseg_checkpoint is not None:
        if request.data is None:
            raise InferenceError(
                "--mmseg-checkpoint needs --data: a reference-toolbox checkpoint does not say "
                "which data set (class names, palette) it belongs to"
            )
        manifest = load_manifest(request.data)
        model = load_mmseg_checkpoint(
            request.mmseg_checkpoint, manifest.class_names, manifest.palette, manifest.ignore_index
        )
    else:
        if request.checkpoint is not None:
            model = load_project_checkpoint(request.checkpoint)
        elif request.model is not None:
            from pipeline.evaluate.registry import load_registered_model

            model = load_registered_model(request.model, request.tracking_uri)
        else:
            model = load_run_checkpoint(request.run, request.storage_path)
        data = request.data or model.manifest
        if data is None:
            raise InferenceError(
                f"{model.source} does not record its training data set: pass --data"
            )
        manifest = load_manifest(data)
    if request.split not in manifest.splits:
        raise DatasetError(
            f"data set {manifest.root or manifest.dataset} has no split {request.split!r}; "
            f"available: {', '.join(sorted(manifest.splits))}. Choose one with --split"
        )
    check_classes_match(model, manifest.class_names, manifest.root or manifest.dataset)
    return model, manifest


def read_split_samples(
    manifest: Manifest, split: str, mean, std, limit: int | None = None
) -> Iterator[EvalSample]:
    """The split's samples in shard order, decoded and normalised exactly as for evaluation,
    in this process (no Ray): the input of `evaluate_locally` and of the sample grid."""
    produced = 0
    for uri in manifest.shard_uris(split):
        for row in read_shard_rows(uri):
            if limit is not None and produced >= limit:
                return
            image = normalize(decode_image(row.image), mean, std)
            mask = decode_mask(row.mask).astype(np.int64)
            yield EvalSample(id=row.id, image=image, mask=mask)
            produced += 1


def evaluation_metrics(
    split: str, class_names: tuple[str, ...], scores: SegmentationScores
) -> dict[str, float]:
    """Metric names as in training: `<split>_miou`, `<split>_pixel_accuracy`,
    `<split>_mean_accuracy`, `<split>_iou/<class>`."""
    metrics = {f"{split}_{name}": value for name, value in scores.summary().items()}
    for name, iou in zip(class_names, scores.per_class_iou, strict=True):
        metrics[f"{split}_iou/{name}"] = iou
    return metrics


def per_class_rows(class_names: tuple[str, ...], counts: SplitCounts, scores) -> list[list]:
    """Rows [class, IoU %, accuracy %, labelled pixels] for the per-class table."""
    rows = []
    for index, name in enumerate(class_names):
        rows.append(
            [
                name,
                round(100 * scores.per_class_iou[index], 2),
                round(100 * scores.per_class_accuracy[index], 2),
                int(counts.intersection_union[2, index]),
            ]
        )
    return rows


TABLE_COLUMNS = ("class", "IoU %", "accuracy %", "labelled pixels")


def format_table(class_names: tuple[str, ...], counts: SplitCounts, scores) -> str:
    """The per-class table plus the headline scores, as printed by the job."""
    table = text_table(TABLE_COLUMNS, per_class_rows(class_names, counts, scores), digits=2)
    return (
        f"{table}\nmIoU {100 * scores.miou:.2f} %, pixel accuracy "
        f"{100 * scores.pixel_accuracy:.2f} %, {counts.num_images} images"
    )


def evaluate(request: EvaluationRequest) -> EvaluationReport:
    """Evaluate as `request` says; see the module docstring. Starts Ray locally unless
    connected already (RAY_ADDRESS selects a cluster)."""
    from pipeline.console.logs import quiet_this_process
    from pipeline.train.connection import connect

    started = time.perf_counter()
    quiet_this_process()  # already for --run's lookup, which reads Ray Train's run record
    inference, manifest = load_evaluation_model(request)
    connect()
    pool = plan_actor_pool(request.actors, request.cpus_per_actor)
    from pipeline.data.ingest import eval_dataset

    dataset = eval_dataset(manifest, request.split)
    tracker = _open_tracker(request, inference, manifest) if request.track else None
    try:
        counts = count_split_distributed(
            inference.model,
            dataset,
            request.options,
            inference.num_classes,
            manifest.ignore_index,
            pool,
            request.batch_size,
            total_images=manifest.splits[request.split].rows,
            mean=inference.mean,
            std=inference.std,
        )
        scores = counts.scores()
        metrics = evaluation_metrics(request.split, manifest.class_names, scores)
        table = format_table(manifest.class_names, counts, scores)
        if tracker is not None:
            tracker.log_params(
                {
                    "split": request.split,
                    "data": manifest.root,
                    "model_source": inference.source,
                    "actors": pool.actors,
                    "cpus_per_actor": pool.num_cpus,
                    "gpus_per_actor": pool.num_gpus,
                    "batch_size": request.batch_size,
                    **request.options.as_params(),
                }
            )
            tracker.log_metrics({**metrics, f"{request.split}_images": counts.num_images}, 0)
            _log_artifacts(tracker, request, inference, manifest, counts, scores, table)
    except BaseException:
        if tracker is not None:
            tracker.set_terminated("KILLED" if _interrupted() else "FAILED")
        raise
    if tracker is not None:
        tracker.set_terminated("FINISHED")
    return EvaluationReport(
        split=request.split,
        class_names=manifest.class_names,
        counts=counts,
        scores=scores,
        metrics=metrics,
        table=table,
        model_source=inference.source,
        data_source=manifest.root,
        mlflow_run_id=tracker.run_id if tracker is not None else None,
        seconds=time.perf_counter() - started,
    )


def _interrupted() -> bool:
    import sys

    return isinstance(sys.exc_info()[1], KeyboardInterrupt)


def _open_tracker(request: EvaluationRequest, inference: InferenceModel, manifest: Manifest):
    """The evaluation run: tagged with its training run; nested under it with --run."""
    from pipeline.data.shards import manifest_digest
    from pipeline.tracking.conventions import EVALUATION_CONTEXT, split_inputs
    from pipeline.tracking.runs import RunTracker, find_run, resolve_tracking

    uri, experiment = resolve_tracking(request.tracking_uri, request.experiment)
    training_name = inference.training_run
    training_run = (
        find_run(training_name, tracking_uri=uri, experiment=experiment) if training_name else None
    )
    tags = {
        KIND_TAG: KIND_EVALUATION,
        SPLIT_TAG: request.split,
        TEST_TIME_MODE_TAG: request.options.mode,
    }
    if training_name:
        tags[TRAINING_RUN_NAME_TAG] = training_name
    if training_run is not None:
        tags[TRAINING_RUN_ID_TAG] = training_run.info.run_id
    base = training_name or Path(inference.source).stem
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{base}-eval-{request.split}-{request.options.mode}-{stamp}-{secrets.token_hex(2)}"
    parent = training_run.info.run_id if (request.run and training_run is not None) else None
    tracker = RunTracker.open(
        name, tracking_uri=uri, experiment=experiment, tags=tags, parent_run_id=parent
    )
    rows = {request.split: manifest.splits[request.split].rows}
    contexts = {request.split: EVALUATION_CONTEXT}
    digest = manifest_digest(manifest.root)
    tracker.log_inputs(split_inputs(manifest.dataset, rows, contexts, digest, manifest.root))
    return tracker


def _log_artifacts(tracker, request, inference, manifest, counts, scores, table) -> None:
    """Per-class table, confusion matrix (figure and counts), a grid of sample predictions."""
    split = request.split
    rows = per_class_rows(manifest.class_names, counts, scores)
    tracker.log_table(rows, TABLE_COLUMNS, f"{split}_per_class_iou.csv")
    tracker.log_text(table + "\n", f"{split}_per_class_iou.txt")
    tracker.log_dict(
        {"class_names": list(manifest.class_names), "confusion": counts.confusion.tolist()},
        f"{split}_confusion.json",
    )
    tracker.log_figure(
        confusion_figure(counts.confusion, manifest.class_names), f"{split}_confusion.png"
    )
    if request.num_samples > 0:
        grid = prediction_grid(inference, manifest, split, request.options, request.num_samples)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{split}_samples.png"
            Image.fromarray(grid).save(path)
            tracker.log_artifact(path)


def prediction_grid(
    inference: InferenceModel,
    manifest: Manifest,
    split: str,
    options: TestTimeOptions,
    num_samples: int,
) -> np.ndarray:
    """uint8 (H, W, 3): the titled `sample_grid` (image | ground truth | prediction, with the
    palette's legend) of the split's first `num_samples` samples, predicted in this process
    at each image's own size, as evaluation predicts them.

    Raises ValueError when the split has no samples.
    """
    mean = np.asarray(inference.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(inference.std, dtype=np.float32)[:, None, None]
    panels = []
    for sample in read_split_samples(manifest, split, inference.mean, inference.std, num_samples):
        prediction = predict_label_map(inference.model, sample.image, options)
        rgb = np.clip(np.rint(sample.image * std + mean), 0, 255).astype(np.uint8)
        panels.append(SamplePanel(rgb.transpose(1, 2, 0), sample.mask, prediction))
    return sample_grid(panels, manifest.palette, manifest.class_names, manifest.ignore_index)
