"""The model a training run made: its best checkpoint by val_miou, found by the run's name, ready
for inference.

The run's checkpoints are found in Ray Train's record of its run folder
(`pipeline.train.run_folder`), so this lives apart from `inference_model.py`, which the served
model imports: a registered model's code carries neither Ray nor the training code.
"""

from __future__ import annotations

from dataclasses import replace

from pipeline.evaluate.inference_model import (
    InferenceError,
    InferenceModel,
    load_project_checkpoint,
)


def load_run_checkpoint(run_name: str, storage_path: str | None = None) -> InferenceModel:
    """The best checkpoint of the training run `run_name` under `storage_path`
    (default `<home>/runs`)."""
    from pipeline.train.run_folder import best_checkpoint

    try:
        folder = best_checkpoint(run_name, storage_path)
    except FileNotFoundError as error:  # its message names the run and the folder looked in
        raise InferenceError(f"{error} (--storage-path names where training runs live)") from error
    loaded = load_project_checkpoint(folder)
    return replace(loaded, training_run=run_name)
