"""Export an APCNet to one self-contained file for inference outside PyTorch training code.

Formats (`FORMATS`):
- "onnx": an ONNX model from the dynamo exporter (`torch.onnx.export(..., dynamo=True)`), the
  weights inside the file (no external data file beside it); run it with onnxruntime.
- "torch-export": a `torch.export` program (.pt2, `torch.export.save`); run it with
  `torch.export.load(path).module()(images)`. (TorchScript is deprecated in this torch.)

Both have one input, "images": float32 (N, 3, H, W), RGB, normalised as (pixel - mean) / std
on 0-255 values, any N >= 1 and any H, W >= the model's minimum input size; and one output,
"logits": (N, num_classes, H, W), the main head's logits bilinearly resized to the input size
(`APCNet.logits`; no auxiliary head). Beside the file, `<file>.json` (`metadata_path`) holds
what a user of the file needs: class names, palette, ignore index, mean / std, the layout and
the minimum size.

Minimum input size (`minimum_input_size`): output_stride + 1 px per side (9 at output stride
8, 17 at 16), the smallest input whose every feature map, down to the stage-4 map at
1 / output_stride, is at least 2 px per side. torch.export specialises a dimension of size 1
(its strides and broadcasting differ), so it traces one program only for sizes that keep every
map above 1 px, and refuses a range that includes smaller ones (checked at both strides).
The .pt2 program rejects a smaller input itself ("Guard failed: images.size()[2] >= 9"); an
ONNX runtime does not check sizes, so callers of the ONNX file check with `check_input_size`
(or the JSON's `min_height` / `min_width`).

onnx and onnxruntime are imported only by the functions that need them.
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from apcnet.checkpoint import write_atomically
from apcnet.model import APCNet

ONNX = "onnx"
TORCH_EXPORT = "torch-export"
FORMATS = (ONNX, TORCH_EXPORT)
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# export_model's check: the file's logits must be within this fraction of the largest |logit|
# of PyTorch's. An exporter bug shows as an error of order 1; float32 rounding measured up to
# 5e-5 (a random reference R50 at 512 x 512, onnxruntime), so 1e-3 never cries wolf.
CHECK_TOLERANCE = 1e-3
METADATA_VERSION = 1


class ExportError(ValueError):
    """A request that cannot be exported as asked (format, input size); the message says why."""


class ExportCheckError(RuntimeError):
    """The exported file's logits differ from PyTorch's: a bug in an exporter, not the input."""


@dataclass(frozen=True)
class ExportMetadata:
    """What the predictions of an exported model mean and how to prepare its input.

    palette: one (r, g, b) per class, 0-255. mean, std: per-channel normalisation of 0-255
    RGB values. source: the file the weights came from; training_run: the training run that
    made them, when known.
    """

    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    training_run: str | None = None


@dataclass(frozen=True)
class ExportResult:
    """The files written and the check of the exported file against PyTorch.

    max_difference: the largest |exported - PyTorch| logit at `check_size` (None: not checked);
    logit_scale: the largest |PyTorch logit| there, what `max_difference` is measured against.
    """

    model_path: Path
    metadata_path: Path
    format: str
    minimum_size: int
    check_size: tuple[int, int]
    max_difference: float | None
    logit_scale: float | None


class MainLogits(nn.Module):
    """What gets exported: images (N, 3, H, W) -> `APCNet.logits(images)` (N, K, H, W)."""

    def __init__(self, model: APCNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.logits(images)


def check_format(format: str, output: str | Path | None = None) -> None:
    """Raise ExportError unless `format` is one of `FORMATS` (and, given the `output` file, a
    torch-export program is written to a .pt2 file, the only name torch.export.load takes
    without a warning)."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if format == TORCH_EXPORT and output is not None and Path(output).suffix != ".pt2":
        raise ExportError(
            f"a torch-export program is a .pt2 file: name the output {Path(output).stem}.pt2, "
            f"not {Path(output).name}"
        )


def minimum_input_size(model: APCNet) -> int:
    """The smallest height and width the exported model accepts: output_stride + 1 px (the
    stage-4 feature map then has 2 px per side; see the module docstring)."""
    return int(model.arguments["output_stride"]) + 1


def check_input_size(height: int, width: int, minimum: int) -> None:
    """Raise ExportError naming both sizes when `height` or `width` is below `minimum`."""
    if min(height, width) < minimum:
        raise ExportError(
            f"input size {height} x {width} is below the model's minimum input size "
            f"{minimum} x {minimum} px (its stage-4 feature map needs 2 px per side): pad or "
            f"resize the image to at least {minimum} px per side"
        )


def metadata_path(model_path: str | Path) -> Path:
    """The JSON file beside an exported model: `<model file>.json` (model.onnx.json)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".json")


def export_model(
    model: APCNet,
    output: str | Path,
    format: str,
    metadata: ExportMetadata,
    check_size: tuple[int, int] = (241, 321),
    check: bool = True,
) -> ExportResult:
    """Write `model` to `output` in `format` and its metadata to `metadata_path(output)`.

    The program is traced with a (2, 3, *check_size) batch with dynamic N, H and W. With
    `check`, one random (1, 3, *check_size) image is run through the written file and through
    `model` (the default size is odd on purpose: no pool scale divides its feature map, the
    hardest case for the exported pooling); ExportCheckError when they differ by more than
    CHECK_TOLERANCE of the logit scale. The model file appears only once checked, and after
    its metadata, each complete or not at all. `model` is put in eval mode and moved to the
    CPU, where it is traced: the ONNX file runs on any onnxruntime device, the .pt2 program
    on the CPU. Raises ExportError for an unknown format or a check size below the minimum.
    """
    check_format(format, output)
    minimum = minimum_input_size(model)
    check_input_size(*check_size, minimum)
    model = model.eval().cpu()
    output = Path(output).expanduser()
    program = _trace(model, check_size, minimum)
    difference: tuple[float, float] | None = None

    def write(temporary: Path) -> None:
        nonlocal difference
        _save(program, format, temporary)
        if check:
            difference = _check(model, temporary, format, check_size)
        document = _metadata_document(model, output.name, format, minimum, metadata)
        text = json.dumps(document, indent=2) + "\n"
        write_atomically(metadata_path(output), lambda path: path.write_text(text))

    write_atomically(output, write)
    return ExportResult(
        model_path=output,
        metadata_path=metadata_path(output),
        format=format,
        minimum_size=minimum,
        check_size=tuple(check_size),
        max_difference=None if difference is None else difference[0],
        logit_scale=None if difference is None else difference[1],
    )


def load_exported(
    path: str | Path, format: str, threads: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An exported file, loaded once, as a function from normalised images (N, 3, H, W) to
    logits (N, K, H, W) on the CPU: onnxruntime for "onnx" (`threads` intra-op threads; None:
    its default), the loaded program for "torch-export"."""
    check_format(format)
    if format == TORCH_EXPORT:
        program = torch.export.load(str(path)).module()

        def run_program(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return program(images.detach().to("cpu", torch.float32))

        return run_program
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_session(images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits)

    return run_session


def _trace(model: APCNet, size: tuple[int, int], minimum: int) -> torch.export.ExportedProgram:
    """The torch.export program of `MainLogits(model)`, N >= 1 and H, W >= minimum dynamic."""
    # A batch of 2: torch.export specialises a dimension it sees at size 1.
    example = torch.zeros(2, 3, *size)
    dims = {
        0: torch.export.Dim("batch", min=1),
        2: torch.export.Dim("height", min=minimum),
        3: torch.export.Dim("width", min=minimum),
    }
    return torch.export.export(MainLogits(model), (example,), dynamic_shapes={INPUT_NAME: dims})


def _save(program: torch.export.ExportedProgram, format: str, path: Path) -> None:
    if format == TORCH_EXPORT:
        torch.export.save(program, str(path))
        return
    onnx_program = torch.onnx.export(
        program, dynamo=True, output_names=[OUTPUT_NAME], verbose=False
    )
    # external_data=False: the weights go into the one file (possible up to protobuf's 2 GB).
    onnx_program.save(str(path), external_data=False)


def _check(model: APCNet, path: Path, format: str, size: tuple[int, int]) -> tuple[float, float]:
    """(max |exported - PyTorch|, max |PyTorch|) of the logits of one random image."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, *size, generator=generator)
    with torch.no_grad():
        expected = model.logits(images)
    exported = load_exported(path, format)(images)
    difference = (exported - expected).abs().max().item()
    scale = expected.abs().max().item()
    if not difference <= CHECK_TOLERANCE * max(scale, 1e-12):
        raise ExportCheckError(
            f"the exported {format} file gives logits up to {difference:.3g} away from "
            f"PyTorch's (scale {scale:.3g}) at {size[0]} x {size[1]}: an exporter bug; "
            f"try the other format and report this"
        )
    return difference, scale


def _metadata_document(
    model: APCNet, file_name: str, format: str, minimum: int, metadata: ExportMetadata
) -> dict[str, Any]:
    facts = asdict(metadata)
    return {
        "metadata_version": METADATA_VERSION,
        "format": format,
        "model_file": file_name,
        "input": {
            "name": INPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": "RGB",
            "normalisation": "(pixel - mean) / std, pixels 0-255",
            "min_height": minimum,
            "min_width": minimum,
        },
        "output": {
            "name": OUTPUT_NAME,
            "layout": "NCHW",
            "dtype": "float32",
            "meaning": "logits at the input's height and width; argmax over C is the class",
        },
        "class_names": list(facts["class_names"]),
        "palette": [list(colour) for colour in facts["palette"]],
        "ignore_index": facts["ignore_index"],
        "mean": list(facts["mean"]),
        "std": list(facts["std"]),
        "source": facts["source"],
        "training_run": facts["training_run"],
        "model_arguments": dict(model.arguments),
        "torch_version": torch.__version__,
    }
