"""Specification of training: two real Ray Train workers, a real MLflow SQLite store."""

from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from helpers.runs import FinishedRun, metric_steps, mlflow_run_id, tiny_config

from apcnet.checkpoint import load_checkpoint
from pipeline.config.schema import ConfigError, config_to_yaml, load_config
from pipeline.data import shards
from pipeline.data.formats import synthetic
from pipeline.data.majority_baseline import majority_class_miou
from pipeline.data.shards import load_manifest
from pipeline.data.training_data import data_set_path
from pipeline.evaluate.counts import evaluate_locally
from pipeline.evaluate.evaluation import (
    EvaluationRequest,
    load_evaluation_model,
    read_split_samples,
)
from pipeline.evaluate.inference_model import load_project_checkpoint
from pipeline.evaluate.testtime import TestTimeOptions
from pipeline.tracking.node_metrics import metric_prefix, node_name
from pipeline.tracking.tags import WORKER_NODES_TAG
from pipeline.train.driver import train_or_resume
from pipeline.train.run_folder import (
    CONFIG_FILE,
    best_checkpoint,
    default_run_name,
    latest_checkpoint,
)
from pipeline.train.state import checkpoint_folder_name, read_progress

EPOCH_METRICS = (
    "train_loss",
    "lr",
    "images_per_s",
    "epoch_time_s",
    "data_wait_s",
    "data_wait_fraction",
)


@pytest.fixture(scope="module")
def shards_hashed() -> list[str]:
    """The shards that `finished_run`'s driver hashed, in order, once it has trained."""
    return []


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory, shards_hashed) -> FinishedRun:
    root = tmp_path_factory.mktemp("train")
    # One checkpoint kept by score: pruning shows on a two-epoch run.
    config = tiny_config(root, "checkpointing.num_to_keep=1")
    verify_shard = shards._verify_shard
    with pytest.MonkeyPatch.context() as patch:
        # Counted on the driver, where a training start verifies the data set.
        patch.setattr(
            shards,
            "_verify_shard",
            lambda root, shard: shards_hashed.append(shard.path) or verify_shard(root, shard),
        )
        outcome = train_or_resume(config, "tiny")
    return FinishedRun(config, outcome)


@pytest.mark.integration
def test_two_workers_finish_every_epoch(finished_run):
    assert finished_run.outcome.status == "finished"
    assert [int(epoch["epoch"]) for epoch in finished_run.outcome.history] == [1, 2]
    assert 0.0 <= finished_run.outcome.best_val_miou <= 1.0


@pytest.mark.integration
def test_mlflow_has_every_epoch_metric_exactly_once(finished_run):
    config = finished_run.config
    logged = mlflow_run_id(config, "tiny")
    for key in (*EPOCH_METRICS, "val_miou", "val_pixel_accuracy", "val_iou/sky"):
        assert metric_steps(config.tracking.tracking_uri, logged, key) == [1, 2], key


@pytest.mark.integration
def test_each_epoch_logs_the_share_of_its_train_time_spent_waiting_for_data(finished_run):
    client = mlflow.MlflowClient(tracking_uri=finished_run.config.tracking.tracking_uri)
    run_id = finished_run.outcome.mlflow_run_id

    def per_epoch(key: str) -> dict[int, float]:
        return {metric.step: metric.value for metric in client.get_metric_history(run_id, key)}

    wait, fraction, epoch_time = (
        per_epoch(key) for key in ("data_wait_s", "data_wait_fraction", "epoch_time_s")
    )
    assert sorted(wait) == sorted(fraction) == sorted(epoch_time) == [1, 2]
    for epoch in (1, 2):
        assert 0.0 <= fraction[epoch] <= 1.0
        assert 0.0 <= wait[epoch] <= epoch_time[epoch]
        assert fraction[epoch] == pytest.approx(wait[epoch] / epoch_time[epoch], rel=1e-6)


@pytest.mark.integration
def test_mlflow_run_has_params_tags_and_artifacts(finished_run):
    client = mlflow.MlflowClient(tracking_uri=finished_run.config.tracking.tracking_uri)
    run = client.get_run(finished_run.outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimization.batch_size"] == "4"
    assert run.data.tags["apcnet.run_name"] == "tiny"
    assert len(run.data.tags["apcnet.data_manifest_sha256"]) > 0
    assert "mlflow.source.git.commit" in run.data.tags
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "per_class_iou.csv", "best_checkpoint.json"} <= artifacts


@pytest.mark.integration
def test_checkpoints_hold_weights_classes_and_resume_state(finished_run):
    loaded = load_checkpoint(finished_run.outcome.best_checkpoint)
    assert loaded.class_names[0] == "sky"
    assert loaded.optimizer_state is not None
    assert loaded.extra["config"]["optimization"]["batch_size"] == 4
    assert loaded.extra["manifest_path"].endswith("manifest.json")
    assert {"scaler", "scheduler", "epoch", "global_iteration"} <= set(loaded.extra)


@pytest.mark.integration
def test_a_training_start_hashes_every_shard_exactly_once(finished_run, shards_hashed):
    manifest = load_manifest(finished_run.config.data.path, verify=False)
    every_shard = sorted(shard.path for split in manifest.splits.values() for shard in split.shards)
    assert sorted(shards_hashed) == every_shard


@pytest.mark.integration
def test_a_checkpoint_folder_written_by_training_names_its_training_run(finished_run):
    folder = Path(finished_run.outcome.best_checkpoint).parent
    assert folder.name.startswith("epoch_")
    assert load_project_checkpoint(folder).training_run == "tiny"


@pytest.mark.integration
def test_latest_checkpoint_is_the_last_epoch(finished_run):
    latest = latest_checkpoint("tiny", finished_run.root / "runs")
    assert read_progress(latest).epoch == 2
    assert Path(best_checkpoint("tiny", finished_run.root / "runs")).is_file()


def logged_per_epoch(run: FinishedRun, key: str) -> dict[int, float]:
    client = mlflow.MlflowClient(tracking_uri=run.config.tracking.tracking_uri)
    history = client.get_metric_history(run.outcome.mlflow_run_id, key)
    return {metric.step: metric.value for metric in history}


@pytest.mark.integration
def test_the_last_epochs_val_miou_is_a_single_process_count_of_its_checkpoint(finished_run):
    latest = latest_checkpoint("tiny", finished_run.root / "runs")
    inference, manifest = load_evaluation_model(EvaluationRequest(checkpoint=latest))
    samples = read_split_samples(manifest, "val", inference.mean, inference.std)
    num_classes = len(manifest.class_names)
    counts = evaluate_locally(inference.model, samples, TestTimeOptions(), num_classes)
    logged = logged_per_epoch(finished_run, "val_miou")
    assert counts.scores().miou == logged[read_progress(latest).epoch]


@pytest.mark.integration
def test_the_best_checkpoint_is_the_epoch_with_the_highest_val_miou_and_the_rest_are_pruned(
    finished_run,
):
    logged = logged_per_epoch(finished_run, "val_miou")
    best_epoch = max(logged, key=logged.__getitem__)
    best = best_checkpoint("tiny", finished_run.root / "runs")
    assert read_progress(best).epoch == best_epoch
    assert finished_run.outcome.best_val_miou == logged[best_epoch]
    folders = {path.name for path in Path(finished_run.outcome.run_folder).glob("epoch_*")}
    # num_to_keep=1 keeps the best by val_miou; Ray also keeps the latest, to resume from.
    assert folders == {checkpoint_folder_name(best_epoch), checkpoint_folder_name(2)}


@pytest.mark.integration
def test_the_resolved_config_is_stored_with_the_run(finished_run):
    stored = yaml.safe_load((Path(finished_run.outcome.run_folder) / CONFIG_FILE).read_text())
    assert stored["model"]["backbone"] == "resnet18"


@pytest.mark.integration
def test_a_finished_run_named_again_is_reported_complete(finished_run):
    again = train_or_resume(finished_run.config, "tiny")
    assert again.status == "already_complete"
    assert again.best_val_miou == pytest.approx(finished_run.outcome.best_val_miou)


def test_the_node_running_the_workers_logs_its_utilisation_under_its_own_name(finished_run):
    config = finished_run.config
    run = mlflow.MlflowClient(config.tracking.tracking_uri).get_run(mlflow_run_id(config, "tiny"))
    nodes = {entry.split(":")[1] for entry in run.data.tags[WORKER_NODES_TAG].split(",")}
    system = {key for key in run.data.metrics if key.startswith("system/")}
    assert {key.split("/")[1] for key in system} == {node_name(node) for node in nodes}
    for node in nodes:
        for metric in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
            assert metric_prefix(node) + metric in system


def test_an_existing_run_named_with_another_config_is_refused(tmp_path):
    started_with = tiny_config(tmp_path)
    folder = tmp_path / "runs" / "started"
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config_to_yaml(started_with))
    with pytest.raises(ConfigError, match=r"changed: optimization\.lr\)"):
        train_or_resume(tiny_config(tmp_path, "optimization.lr=0.5"), "started")


def test_a_default_run_name_is_config_stem_and_timestamp():
    name = default_run_name("configs/voc_resnet50.yaml", now=datetime(2026, 1, 2, 3, 4, 5))
    assert name == "voc_resnet50-20260102-030405"


def test_majority_baseline_scores_the_majority_class_over_present_classes():
    # 60 pixels of class 0, 40 of class 2, class 1 absent: IoU_0 = 0.6, IoU_2 = 0 -> mIoU 0.3.
    assert majority_class_miou(np.array([60, 0, 40])) == pytest.approx(0.3)


def test_the_built_in_set_is_regenerated_when_the_scenes_change(monkeypatch):
    sizes = ["data.synthetic.num_train=2", "data.synthetic.num_val=1", "data.synthetic.size=16"]
    config = load_config(None, sizes)
    first = data_set_path(config.data)
    assert data_set_path(config.data) == first
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    second = data_set_path(config.data)
    assert second != first
    assert Path(second, "manifest.json").is_file()
