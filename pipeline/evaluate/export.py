"""Export a trained model to one ONNX or torch.export file plus its JSON (what jobs/export.py
calls): the model comes from this project's checkpoint, a training run's best checkpoint or a
reference-toolbox checkpoint, as for evaluation; the export itself is `apcnet.export`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from apcnet.export import (
    ExportMetadata,
    ExportResult,
    check_format,
    check_input_size,
    export_model,
    minimum_input_size,
)
from pipeline.data.formats.common import IGNORE_INDEX, voc_palette
from pipeline.data.shards import load_manifest
from pipeline.evaluate.inference_model import (
    InferenceError,
    InferenceModel,
    load_mmseg_checkpoint,
    load_project_checkpoint,
    model_num_classes,
)
from pipeline.evaluate.run_checkpoint import load_run_checkpoint

# Odd on purpose: no pool scale divides its stage-4 map (31 x 41), the hardest case for the
# exported pooling.
DEFAULT_CHECK_SIZE = (241, 321)


@dataclass(frozen=True)
class ExportRequest:
    """What to export, where, how (see `jobs/export.py --help`).

    Exactly one of checkpoint / run / mmseg_checkpoint. data: a shard folder or manifest whose
    class names and palette go into the JSON of a reference-toolbox checkpoint (without it:
    `class_0`, `class_1`, ... and the VOC palette). check_size: (H, W) the program is traced
    and checked at; check: run the written file against PyTorch once.
    """

    output: str
    format: str
    checkpoint: str | None = None
    run: str | None = None
    mmseg_checkpoint: str | None = None
    data: str | None = None
    storage_path: str | None = None
    check_size: tuple[int, int] = DEFAULT_CHECK_SIZE
    check: bool = True


@dataclass(frozen=True)
class ExportReport:
    """The files written (`result`) and where the model came from."""

    result: ExportResult
    model_source: str
    placeholder_class_names: bool


def load_export_model(request: ExportRequest) -> tuple[InferenceModel, bool]:
    """The model to export and whether its class names are placeholders (a reference-toolbox
    checkpoint without --data). Raises InferenceError / DatasetError naming the option."""
    sources = [request.checkpoint, request.run, request.mmseg_checkpoint]
    if sum(source is not None for source in sources) != 1:
        raise InferenceError("pass exactly one of --checkpoint, --run, --mmseg-checkpoint")
    if request.checkpoint is not None:
        return load_project_checkpoint(request.checkpoint), False
    if request.run is not None:
        return load_run_checkpoint(request.run, request.storage_path), False
    if request.data is not None:
        manifest = load_manifest(request.data)
        names, palette, ignore_index = manifest.class_names, manifest.palette, manifest.ignore_index
    else:
        names, palette, ignore_index = (), (), IGNORE_INDEX
    inference = load_mmseg_checkpoint(request.mmseg_checkpoint, names, palette, ignore_index)
    count = model_num_classes(inference.model)
    if request.data is None:
        names = tuple(f"class_{index}" for index in range(count))
        return replace(inference, class_names=names, palette=voc_palette(count)), True
    if count != len(names):
        raise InferenceError(
            f"{inference.source} predicts {count} classes but the data set {request.data} has "
            f"{len(names)}: pass the data set the checkpoint was trained on (--data)"
        )
    return inference, False


def export(request: ExportRequest) -> ExportReport:
    """Load the model, check the request and write the file and its JSON (`apcnet.export`).

    The format and sizes are checked before anything is written; raises InferenceError /
    ExportError naming what is wrong.
    """
    check_format(request.format, request.output)
    inference, placeholders = load_export_model(request)
    check_input_size(*request.check_size, minimum_input_size(inference.model))
    metadata = ExportMetadata(
        class_names=inference.class_names,
        palette=inference.palette,
        ignore_index=inference.ignore_index,
        mean=inference.mean,
        std=inference.std,
        source=inference.source,
        training_run=inference.training_run,
    )
    result = export_model(
        inference.model,
        request.output,
        request.format,
        metadata,
        check_size=request.check_size,
        check=request.check,
    )
    return ExportReport(result, inference.source, placeholders)
