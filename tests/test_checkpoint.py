"""Specification of apcnet.checkpoint: safe, atomic save / load of this project's checkpoints."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from apcnet.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    build_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from apcnet.model import APCNet
from apcnet.schedule import PolyLR

CLASS_NAMES = ("background", "disc", "square")
PALETTE = ((0, 0, 0), (128, 0, 0), (0, 128, 0))
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _small_model() -> APCNet:
    torch.manual_seed(0)
    return APCNet(3, backbone="resnet18", pool_scales=(1, 2), channels=64)


def _save(path: Path, model: torch.nn.Module, **overrides) -> Path:
    arguments = dict(class_names=CLASS_NAMES, palette=PALETTE, mean=MEAN, std=STD)
    arguments.update(overrides)
    return save_checkpoint(path, model, **arguments)


@pytest.fixture(scope="module")
def model() -> APCNet:
    return _small_model()


@pytest.fixture(scope="module")
def saved(model: APCNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One checkpoint with optimizer and schedule state, written once for the read-only tests."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = PolyLR(optimizer, total_iters=10, warmup_iters=2)
    model.train()
    loss = model(torch.randn(2, 3, 17, 17))["out"].mean()
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    model.eval()
    path = tmp_path_factory.mktemp("checkpoints") / "run" / "epoch_1.pt"
    return _save(
        path,
        model,
        ignore_index=254,
        optimizer_state=optimizer.state_dict(),
        extra={"epoch": 1, "scheduler": scheduler.state_dict(), "config": {"lr": 0.01}},
    )


def test_round_trip_rebuilds_the_same_weights_and_predictions(model, saved):
    rebuilt, _ = load_model(saved)
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    images = torch.randn(1, 3, 21, 19)
    with torch.no_grad():
        assert torch.equal(rebuilt(images)["out"], model.eval()(images)["out"])


def test_round_trip_keeps_the_data_facts_and_architecture(model, saved):
    loaded = load_checkpoint(saved)
    assert isinstance(loaded, LoadedCheckpoint)
    assert loaded.model_arguments == model.arguments
    assert loaded.class_names == CLASS_NAMES
    assert loaded.palette == PALETTE
    assert loaded.ignore_index == 254
    assert (loaded.mean, loaded.std) == (MEAN, STD)
    assert loaded.num_classes == 3
    assert loaded.format_version == 1
    assert loaded.path == str(saved)


def test_rebuilt_model_is_in_eval_mode(saved):
    rebuilt, _ = load_model(saved)
    assert not rebuilt.training


def test_file_holds_only_what_weights_only_loading_accepts(saved):
    content = torch.load(saved, weights_only=True)
    assert content["architecture"] == "APCNet"


def test_optimizer_state_round_trips_into_a_fresh_optimizer(model, saved):
    loaded = load_checkpoint(saved)
    rebuilt = build_model(loaded)
    optimizer = torch.optim.SGD(rebuilt.parameters(), lr=0.01, momentum=0.9)
    optimizer.load_state_dict(loaded.optimizer_state)
    first_parameter = next(iter(optimizer.state.values()))
    assert first_parameter["momentum_buffer"].abs().sum() > 0


def test_extra_round_trips_and_resumes_the_schedule(saved):
    loaded = load_checkpoint(saved)
    assert loaded.extra["epoch"] == 1 and loaded.extra["config"] == {"lr": 0.01}
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = PolyLR(optimizer, total_iters=10, warmup_iters=2)
    scheduler.load_state_dict(loaded.extra["scheduler"])
    assert scheduler.last_epoch == 1


def test_compiled_model_is_saved_without_the_compile_prefix(tmp_path):
    model = _small_model()
    compiled = torch.compile(model)
    assert any(key.startswith("_orig_mod.") for key in compiled.state_dict())
    loaded = load_checkpoint(_save(tmp_path / "compiled.pt", compiled))
    assert set(loaded.state_dict) == set(model.state_dict())


def test_ddp_wrapped_model_is_saved_without_the_module_prefix(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        model = _small_model()
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        loaded = load_checkpoint(_save(tmp_path / "ddp.pt", wrapped))
    finally:
        dist.destroy_process_group()
    assert set(loaded.state_dict) == set(model.state_dict())
    build_model(loaded)


def test_tensors_are_stored_on_the_cpu_and_loaded_on_map_location(saved):
    loaded = load_checkpoint(saved, map_location="cpu")
    assert all(value.device.type == "cpu" for value in loaded.state_dict.values())


def test_saving_leaves_no_temporary_file_and_replaces_an_older_checkpoint(model, tmp_path):
    path = tmp_path / "latest.pt"
    _save(path, model, extra={"epoch": 1})
    _save(path, model, extra={"epoch": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]
    assert load_checkpoint(path).extra == {"epoch": 2}


def test_a_failed_save_removes_its_temporary_file(model, tmp_path):
    target = tmp_path / "occupied.pt"
    target.mkdir()
    (target / "something").write_text("a folder cannot be replaced by a file")
    with pytest.raises(OSError):
        _save(target, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied.pt"]


def test_unsafe_extra_values_are_refused_naming_the_entry(model, tmp_path):
    with pytest.raises(TypeError, match=r"extra\['data'\]\['root'\] is a PosixPath"):
        _save(tmp_path / "x.pt", model, extra={"data": {"root": Path("/data")}})
    assert not any(tmp_path.iterdir())


def test_class_names_must_match_the_number_of_classes(model, tmp_path):
    with pytest.raises(ValueError, match="class_names must be 3 strings"):
        _save(tmp_path / "x.pt", model, class_names=("a", "b"))


def test_a_reference_toolbox_checkpoint_points_to_from_mmseg(tmp_path):
    path = tmp_path / "apcnet_r50.pth"
    weights = {"decode_head.conv_seg.weight": torch.zeros(3, 8, 1, 1)}
    torch.save({"meta": {"epoch": 80}, "state_dict": weights}, path)
    with pytest.raises(CheckpointError, match=r"apcnet_r50\.pth.*from_mmseg"):
        load_checkpoint(path)


def test_a_bare_state_dict_is_named_as_such(model, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"classifier.weight": torch.zeros(3, 2)}, path)
    with pytest.raises(CheckpointError, match=r"weights\.pt.*bare state dict"):
        load_checkpoint(path)


def _rewrite(saved: Path, destination: Path, **changes) -> Path:
    content = torch.load(saved, weights_only=True)
    content.update(changes)
    torch.save(content, destination)
    return destination


def test_a_different_architecture_is_refused(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "psp.pt", architecture="PSPNet")
    with pytest.raises(CheckpointError, match=r"psp\.pt.*'PSPNet'"):
        load_checkpoint(path)


def test_a_newer_format_version_is_refused(saved, tmp_path):
    path = _rewrite(saved, tmp_path / "future.pt", format_version=99)
    with pytest.raises(CheckpointError, match=r"future\.pt.*format_version 99.*upgrade"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_arguments_are_refused(saved, tmp_path):
    arguments = dict(load_checkpoint(saved).model_arguments, num_classes=5)
    path = _rewrite(saved, tmp_path / "mismatch.pt", model_arguments=arguments)
    with pytest.raises(CheckpointError, match=r"mismatch\.pt.*do not match"):
        load_model(path)


def test_a_truncated_file_is_a_clear_error(saved, tmp_path):
    path = tmp_path / "truncated.pt"
    path.write_bytes(saved.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        load_checkpoint(path)


def test_random_bytes_are_a_clear_error(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match=r"noise\.pt"):
        load_checkpoint(path)


class _Arbitrary:
    pass


def test_a_file_with_pickled_objects_is_refused_without_running_them(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"model": _Arbitrary()}, path)
    with pytest.raises(CheckpointError, match=r"objects\.pt.*cannot be loaded safely"):
        load_checkpoint(path)


def test_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.pt"):
        load_checkpoint(tmp_path / "absent.pt")
