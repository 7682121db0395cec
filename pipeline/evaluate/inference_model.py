"""A trained model ready for inference, with what its predictions mean, read from a checkpoint
file.

Two kinds of file: this project's checkpoint (a file, or a Ray checkpoint folder holding
`checkpoint.pt`, local or on an object store) and a reference-toolbox (MMSegmentation) APCNet
checkpoint, whose class names and palette come from a data manifest. A training run's best
checkpoint, found by the run's name, is `run_checkpoint.load_run_checkpoint`.

The served model (`served_model.py`) imports this module, so every registered model carries
it: it imports neither Ray nor the training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from torch import nn

from pipeline import storage
from pipeline.errors import UserError
from pipeline.storage import CHECKPOINT_FILE, CHECKPOINT_FOLDER_PREFIX


class InferenceError(UserError, ValueError):
    """A checkpoint, data set or option that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class InferenceModel:
    """A model in eval mode on the CPU plus the facts needed to use and report its output.

    mean, std: per-channel input normalisation on 0-255 RGB values.
    manifest: the data set the model was trained on (None when unknown).
    training_run: the name of the training run that produced it (None when unknown).
    """

    model: nn.Module
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    manifest: str | None = None
    training_run: str | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def checkpoint_file(path: str | Path) -> storage.StoragePath:
    """The checkpoint file behind `path` (local, or s3:// / gs://): the file itself, or
    `<folder>/checkpoint.pt`."""
    location = storage.resolve(Path(path).expanduser() if not storage.is_remote(path) else path)
    if storage.is_dir(location):
        location = location.child(CHECKPOINT_FILE)
    if not storage.is_file(location):
        raise InferenceError(
            f"checkpoint {path} not found: pass a checkpoint file or a Ray checkpoint folder "
            f"containing {CHECKPOINT_FILE}"
        )
    return location


def load_project_checkpoint(path: str | Path) -> InferenceModel:
    """Load this project's checkpoint (file or Ray checkpoint folder, local or on an object
    store) for inference.

    Raises InferenceError when the file is missing, unreadable or not a checkpoint of this
    project.
    """
    from apcnet.checkpoint import build_model, load_checkpoint

    location = checkpoint_file(path)
    try:
        with storage.local_file(location) as local_path:
            loaded = load_checkpoint(local_path)
        model = build_model(loaded)
    except Exception as error:  # any failure to read means the same thing to the user
        raise InferenceError(
            f"cannot read checkpoint {location.uri}: {error}. Pass a checkpoint written by this "
            "project's training (or use --mmseg-checkpoint for a reference-toolbox file)"
        ) from error
    extra = dict(loaded.extra or {})
    return InferenceModel(
        model=model.eval(),
        class_names=tuple(loaded.class_names),
        palette=tuple(tuple(int(v) for v in colour) for colour in loaded.palette),
        ignore_index=int(loaded.ignore_index),
        mean=tuple(float(v) for v in loaded.mean),
        std=tuple(float(v) for v in loaded.std),
        source=location.uri,
        # Training stores the data set as "manifest_path"; "manifest" is accepted too.
        manifest=extra.get("manifest_path") or extra.get("manifest"),
        training_run=extra.get("run_name") or _run_name_from_folder(location.path),
    )


def _run_name_from_folder(location: str) -> str | None:
    """For checkpoints written before the run name was stored in them: training keeps them
    at `<storage>/<run name>/epoch_NNNN/checkpoint.pt`."""
    folder = PurePosixPath(location).parent
    if (
        folder.name.startswith(CHECKPOINT_FOLDER_PREFIX)
        and folder.name.removeprefix(CHECKPOINT_FOLDER_PREFIX).isdigit()
    ):
        return folder.parent.name
    return None


def load_mmseg_checkpoint(
    path: str | Path, class_names: tuple[str, ...], palette, ignore_index: int
) -> InferenceModel:
    """A reference-toolbox APCNet checkpoint, with that toolbox's input normalisation and the
    class names / palette of the data set it will be used on."""
    from apcnet import MMSEG_MEAN, MMSEG_STD, from_mmseg

    location = Path(path).expanduser()
    if not location.is_file():
        raise InferenceError(f"--mmseg-checkpoint {path} is not a file")
    try:
        model = from_mmseg(location)
    except Exception as error:
        raise InferenceError(
            f"cannot read reference-toolbox checkpoint {location}: {error}. Pass an "
            "MMSegmentation APCNet checkpoint (a torch file with a 'state_dict')"
        ) from error
    return InferenceModel(
        model=model.eval(),
        class_names=tuple(class_names),
        palette=tuple(tuple(int(v) for v in colour) for colour in palette),
        ignore_index=int(ignore_index),
        mean=tuple(float(v) for v in MMSEG_MEAN),
        std=tuple(float(v) for v in MMSEG_STD),
        source=str(location.resolve()),
    )


def model_num_classes(model: nn.Module) -> int:
    """How many classes the model predicts, read from its constructor arguments."""
    arguments = getattr(model, "arguments", None)
    if arguments is None:
        raise InferenceError(f"{type(model).__name__} does not record its constructor arguments")
    values = arguments if isinstance(arguments, dict) else arguments.__dict__
    return int(values["num_classes"])


def check_classes_match(
    inference_model: InferenceModel, class_names: tuple[str, ...], data_source: str
) -> None:
    """Raise InferenceError unless the model predicts the data set's classes.

    The number of classes must match; the names too when the checkpoint records names.
    """
    predicted = model_num_classes(inference_model.model)
    if predicted != len(class_names):
        raise InferenceError(
            f"{inference_model.source} predicts {predicted} classes but the data set "
            f"{data_source} has {len(class_names)}: evaluate with the data set the model was "
            "trained on (--data)"
        )
    names = inference_model.class_names
    if names and tuple(names) != tuple(class_names):
        differing = [
            f"{index}: {ours!r} vs {theirs!r}"
            for index, (ours, theirs) in enumerate(zip(names, class_names, strict=True))
            if ours != theirs
        ]
        raise InferenceError(
            f"class names of {inference_model.source} differ from those of {data_source} "
            f"({'; '.join(differing[:5])}): evaluate with the data set the model was trained on"
        )
