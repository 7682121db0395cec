"""The tiny training setup shared by the training specifications."""

from pathlib import Path

import mlflow

from pipeline.config.schema import ExperimentConfig, load_config
from pipeline.data.formats.synthetic import write_synthetic
from pipeline.tracking.runs import find_run


def tiny_config(root: Path, *overrides: str, experiment: str = "tests") -> ExperimentConfig:
    """resnet18 with a narrow head, 32 px crops, 8 train / 4 val images, 2 epochs, 2 workers;
    iterations_per_epoch = (8 // 2 workers) // 2 per worker = 2."""
    data = root / "data"
    if not (data / "manifest.json").exists():
        write_synthetic(data, num_train=8, num_val=4, size=32, seed=0)
    return load_config(
        None,
        [
            f"data.path={data}",
            "data.augmentation.crop_size=[32, 32]",
            "data.augmentation.scale_range=[1.0, 1.0]",
            "model.backbone=resnet18",
            "model.channels=64",
            "model.pool_scales=[1, 2]",
            "optimization.batch_size=4",
            "optimization.epochs=2",
            "scaling.num_workers=2",
            "scaling.process_group_timeout_s=60",
            f"checkpointing.storage_path={root / 'runs'}",
            f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}",
            f"tracking.experiment_name={experiment}",
            *overrides,
        ],
    )


def metric_steps(config: ExperimentConfig, run_name: str, key: str) -> list[int]:
    """The steps at which `key` was logged to the MLflow run named `run_name`, sorted."""
    run = find_run(
        run_name,
        tracking_uri=config.tracking.tracking_uri,
        experiment=config.tracking.experiment_name,
    )
    assert run is not None, f"no MLflow run named {run_name}"
    client = mlflow.MlflowClient(tracking_uri=config.tracking.tracking_uri)
    return sorted(metric.step for metric in client.get_metric_history(run.info.run_id, key))
