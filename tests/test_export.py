"""jobs/export.py: one self-contained ONNX file / torch.export program per model that gives
PyTorch's logits at any input size at or above the minimum, with its JSON beside it.

Each model is exported once per format through the job (in this process) and the one file is
run at three sizes: two whose stage-4 maps no pool scale divides (97 x 133 -> 13 x 17,
83 x 145 -> 11 x 19) and the minimum. Bad input runs the job as a user does (a subprocess).
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from helpers.jobs import job_main, run_job_process
from helpers.reference_checkpoint import randomise_batchnorms, reference_state_dict

import apcnet
from apcnet.checkpoint import load_model, save_checkpoint
from apcnet.export import ONNX, TORCH_EXPORT, ExportError, check_input_size, load_exported

CLASS_NAMES = ("background", "road", "car")
PALETTE = ((0, 0, 0), (128, 64, 128), (0, 0, 142))
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
# (N, H, W): two sizes no pool scale divides at stage 4, and the minimum (output stride + 1).
BATCHES = ((1, 97, 133), (2, 83, 145), (1, 9, 9))
CHECK_SIZE = ["--check-size", "41", "57"]  # the job's own check, kept small here
TOLERANCE = 1e-4  # of the logit scale


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def export_job(*arguments: str) -> None:
    """jobs/export.py's main, in this process (the job adds the repository to sys.path)."""
    assert job_main("export")([*arguments, *CHECK_SIZE]) == 0


@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory) -> Path:
    """This project's checkpoint of a resnet18 APCNet {1, 2, 3, 6}, BatchNorms randomised."""
    torch.manual_seed(0)
    model = apcnet.APCNet(len(CLASS_NAMES), backbone="resnet18", pool_scales=(1, 2, 3, 6))
    with torch.no_grad():
        randomise_batchnorms(model, torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("resnet18") / "checkpoint.pt"
    save_checkpoint(path, model, class_names=CLASS_NAMES, palette=PALETTE, mean=MEAN, std=STD)
    return path


@pytest.fixture(scope="module")
def reference_r50_file(tmp_path_factory) -> Path:
    """A reference-toolbox (MMSegmentation) layout R50 APCNet checkpoint file."""
    path = tmp_path_factory.mktemp("reference") / "apcnet_r50.pth"
    state_dict = reference_state_dict(num_classes=4, backbone="resnet50_v1c")
    torch.save({"meta": {"CLASSES": ["a", "b", "c", "d"]}, "state_dict": state_dict}, path)
    return path


def exported(tmp_path_factory, source: list[str], format: str) -> Path:
    suffix = ".onnx" if format == ONNX else ".pt2"
    output = tmp_path_factory.mktemp(format) / f"apcnet{suffix}"
    export_job(*source, "--format", format, "--output", str(output))
    return output


@pytest.fixture(scope="module")
def resnet18_onnx(tmp_path_factory, resnet18_checkpoint) -> Path:
    return exported(tmp_path_factory, ["--checkpoint", str(resnet18_checkpoint)], ONNX)


@pytest.fixture(scope="module")
def resnet18_pt2(tmp_path_factory, resnet18_checkpoint) -> Path:
    return exported(tmp_path_factory, ["--checkpoint", str(resnet18_checkpoint)], TORCH_EXPORT)


@pytest.fixture(params=[ONNX, TORCH_EXPORT])
def resnet18_export(request) -> tuple[str, Path]:
    """(format, file) of the resnet18 export, once per format."""
    name = "resnet18_onnx" if request.param == ONNX else "resnet18_pt2"
    return request.param, request.getfixturevalue(name)


@pytest.fixture(scope="module", params=[ONNX, TORCH_EXPORT])
def reference_r50_export(request, tmp_path_factory, reference_r50_file) -> tuple[str, Path]:
    source = ["--mmseg-checkpoint", str(reference_r50_file)]
    return request.param, exported(tmp_path_factory, source, request.param)


def assert_same_logits_at_every_size(model: torch.nn.Module, format: str, path: Path) -> None:
    run = load_exported(path, format, threads=1)  # one file, loaded once, for every size
    generator = torch.Generator().manual_seed(3)
    for batch, height, width in BATCHES:
        images = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = model(images)["out"]
        logits = run(images)
        assert logits.shape == expected.shape
        scale = expected.abs().max().item()
        difference = (logits - expected).abs().max().item()
        assert difference <= TOLERANCE * scale, f"{height} x {width}: {difference} vs {scale}"


def test_resnet18_export_gives_pytorchs_logits_at_three_sizes(resnet18_export, resnet18_checkpoint):
    format, path = resnet18_export
    model, _ = load_model(resnet18_checkpoint)
    assert_same_logits_at_every_size(model, format, path)


def test_reference_r50_export_gives_from_mmseg_logits_at_three_sizes(
    reference_r50_export, reference_r50_file
):
    format, path = reference_r50_export
    assert_same_logits_at_every_size(apcnet.from_mmseg(reference_r50_file), format, path)


def test_export_is_one_file_and_its_json(resnet18_export):
    _, path = resnet18_export
    assert sorted(entry.name for entry in path.parent.iterdir()) == [path.name, f"{path.name}.json"]


def test_onnx_file_passes_the_checker_with_its_weights_inside(resnet18_onnx):
    onnx.checker.check_model(str(resnet18_onnx), full_check=True)
    graph = onnx.load(str(resnet18_onnx), load_external_data=False).graph
    assert graph.initializer
    assert not any(
        initializer.data_location == onnx.TensorProto.EXTERNAL for initializer in graph.initializer
    )


def test_json_says_how_to_feed_the_file_and_read_its_output(resnet18_export):
    format, path = resnet18_export
    document = json.loads(Path(f"{path}.json").read_text())
    assert document["format"] == format and document["model_file"] == path.name
    assert document["class_names"] == list(CLASS_NAMES)
    assert document["palette"] == [list(colour) for colour in PALETTE]
    assert (document["mean"], document["std"]) == (list(MEAN), list(STD))
    assert document["input"]["layout"] == "NCHW" and document["input"]["channels"] == "RGB"
    assert document["input"]["min_height"] == document["input"]["min_width"] == 9


def test_reference_checkpoint_without_data_gets_placeholder_class_names(reference_r50_export):
    _, path = reference_r50_export
    document = json.loads(Path(f"{path}.json").read_text())
    assert document["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert document["mean"] == list(apcnet.MMSEG_MEAN)


def test_the_program_refuses_an_input_below_the_minimum_size(resnet18_pt2):
    with pytest.raises(AssertionError, match=r"images.size\(\)\[2\] >= 9"):
        load_exported(resnet18_pt2, TORCH_EXPORT)(torch.zeros(1, 3, 8, 16))


def test_check_input_size_names_the_minimum():
    with pytest.raises(ExportError, match="8 x 16 is below the model's minimum input size 9 x 9"):
        check_input_size(8, 16, 9)


# ---- bad input: one line, exit code 2, nothing written ----


def assert_one_line_error(result, *named: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(name in lines[0] for name in named), lines[0]


@pytest.mark.integration
def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    output = tmp_path / "model.onnx"
    arguments = ["--checkpoint", str(notes), "--format", "onnx", "--output", str(output)]
    result = run_job_process("export.py", arguments, home=tmp_path / "home", ray="unreachable")
    assert_one_line_error(result, str(notes))
    assert not output.exists()


@pytest.mark.integration
def test_an_unknown_format_is_one_line(tmp_path, resnet18_checkpoint):
    output = tmp_path / "model.tflite"
    arguments = ["--checkpoint", str(resnet18_checkpoint), "--format", "tflite"]
    arguments += ["--output", str(output)]
    result = run_job_process("export.py", arguments, home=tmp_path / "home", ray="unreachable")
    assert_one_line_error(result, "'tflite'", "onnx, torch-export")
    assert not output.exists()


@pytest.mark.integration
def test_a_check_size_below_the_minimum_is_one_line(tmp_path, resnet18_checkpoint):
    output = tmp_path / "model.onnx"
    arguments = ["--checkpoint", str(resnet18_checkpoint), "--format", "onnx"]
    arguments += ["--output", str(output), "--check-size", "8", "64"]
    result = run_job_process("export.py", arguments, home=tmp_path / "home", ray="unreachable")
    assert_one_line_error(result, "8 x 64", "minimum input size 9 x 9")
    assert not output.exists()
