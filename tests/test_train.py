"""Specification of training: two real Ray Train workers, a real MLflow SQLite store."""

from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import mlflow
import numpy as np
import pytest
import yaml
from training_helpers import metric_steps, tiny_config

from apcnet.checkpoint import load_checkpoint
from pipeline.config.schema import ConfigError, ExperimentConfig, config_to_yaml, load_config
from pipeline.data.formats import synthetic
from pipeline.data.majority_baseline import majority_class_miou
from pipeline.train.driver import TrainOutcome, prepare_data, train
from pipeline.train.run_checkpoints import best_checkpoint, latest_checkpoint
from pipeline.train.run_records import CONFIG_FILE, default_run_name
from pipeline.train.state import read_progress

EPOCH_METRICS = ("train_loss", "lr", "images_per_s", "epoch_time_s")


class FinishedRun(NamedTuple):
    config: ExperimentConfig
    outcome: TrainOutcome
    root: Path


@pytest.fixture(scope="module")
def finished_run(ray_session, tmp_path_factory) -> FinishedRun:
    root = tmp_path_factory.mktemp("train")
    config = tiny_config(root)
    return FinishedRun(config, train(config, "tiny"), root)


@pytest.mark.slow
def test_two_workers_finish_every_epoch(finished_run):
    assert finished_run.outcome.status == "finished"
    assert [int(epoch["epoch"]) for epoch in finished_run.outcome.history] == [1, 2]
    assert 0.0 <= finished_run.outcome.best_val_miou <= 1.0


@pytest.mark.slow
def test_mlflow_has_every_epoch_metric_exactly_once(finished_run):
    for key in (*EPOCH_METRICS, "val_miou", "val_pixel_accuracy", "val_iou/sky"):
        assert metric_steps(finished_run.config, "tiny", key) == [1, 2], key


@pytest.mark.slow
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


@pytest.mark.slow
def test_checkpoints_hold_weights_classes_and_resume_state(finished_run):
    loaded = load_checkpoint(finished_run.outcome.best_checkpoint)
    assert loaded.class_names[0] == "sky"
    assert loaded.optimizer_state is not None
    assert loaded.extra["config"]["optimization"]["batch_size"] == 4
    assert loaded.extra["manifest_path"].endswith("manifest.json")
    assert {"scaler", "scheduler", "epoch", "global_iteration"} <= set(loaded.extra)


@pytest.mark.slow
def test_latest_checkpoint_is_the_last_epoch(finished_run):
    latest = latest_checkpoint("tiny", finished_run.root / "runs")
    assert read_progress(latest.parent).epoch == 2
    assert best_checkpoint("tiny", finished_run.root / "runs").is_file()


@pytest.mark.slow
def test_the_resolved_config_is_stored_with_the_run(finished_run):
    stored = yaml.safe_load((finished_run.outcome.run_folder / CONFIG_FILE).read_text())
    assert stored["model"]["backbone"] == "resnet18"


@pytest.mark.slow
def test_a_finished_run_named_again_is_reported_complete(finished_run):
    again = train(finished_run.config, "tiny")
    assert again.status == "already_complete"
    assert again.best_val_miou == pytest.approx(finished_run.outcome.best_val_miou)


def test_an_existing_run_named_with_another_config_is_refused(tmp_path):
    started_with = tiny_config(tmp_path)
    folder = tmp_path / "runs" / "started"
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(config_to_yaml(started_with))
    with pytest.raises(ConfigError, match=r"changed: optimization\.lr\)"):
        train(tiny_config(tmp_path, "optimization.lr=0.5"), "started")


def test_a_default_run_name_is_config_stem_and_timestamp():
    name = default_run_name("configs/voc_resnet50.yaml", now=datetime(2026, 1, 2, 3, 4, 5))
    assert name == "voc_resnet50-20260102-030405"


def test_majority_baseline_scores_the_majority_class_over_present_classes():
    # 60 pixels of class 0, 40 of class 2, class 1 absent: IoU_0 = 0.6, IoU_2 = 0 -> mIoU 0.3.
    assert majority_class_miou(np.array([60, 0, 40])) == pytest.approx(0.3)


def test_the_built_in_set_is_regenerated_when_the_scenes_change(monkeypatch):
    sizes = ["data.synthetic.num_train=2", "data.synthetic.num_val=1", "data.synthetic.size=16"]
    config = load_config(None, sizes)
    first = prepare_data(config)
    assert prepare_data(config) == first
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    second = prepare_data(config)
    assert second != first
    assert Path(second, "manifest.json").is_file()
