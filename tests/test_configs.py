"""The recipe files in configs/ load through pipeline.config.schema and state the published settings."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.config.schema import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# The synthetic demos (synthetic.yaml, tune_synthetic.yaml) belong to the train and tune jobs.
GPU_RECIPES = sorted(path for path in CONFIGS.glob("*.yaml") if "synthetic" not in path.name)


@dataclass(frozen=True)
class Recipe:
    """The facts of REFERENCE.md's "Training recipe" a recipe file must state."""

    backbone: str
    lr: float
    weight_decay: float
    min_lr: float
    crop_size: tuple[int, int]
    base_scale: tuple[int, int] | None
    epochs: int | None
    iterations: int | None
    batch_size: int
    photometric: bool
    train_split: str


PAPER_VOC = dict(
    lr=0.01,
    weight_decay=1e-4,
    min_lr=0.0,
    crop_size=(512, 512),
    base_scale=None,
    epochs=80,
    iterations=None,
    batch_size=16,
    photometric=False,
    train_split="train_aug",
)
TOOLBOX_ADE20K = dict(
    lr=0.01,
    weight_decay=5e-4,
    min_lr=1e-4,
    crop_size=(512, 512),
    base_scale=(2048, 512),
    epochs=None,
    iterations=80_000,
    batch_size=16,
    photometric=True,
    train_split="train",
)
EXPECTED = {
    "voc_r50.yaml": Recipe(backbone="resnet50_v1c", **PAPER_VOC),
    "voc_r101.yaml": Recipe(backbone="resnet101_v1c", **PAPER_VOC),
    "ade20k_r50.yaml": Recipe(backbone="resnet50_v1c", **TOOLBOX_ADE20K),
    "ade20k_r101.yaml": Recipe(backbone="resnet101_v1c", **TOOLBOX_ADE20K),
    "pascal_context_r101.yaml": Recipe(
        backbone="resnet101_v1c", **{**PAPER_VOC, "lr": 0.001, "train_split": "train"}
    ),
    "cityscapes_r50.yaml": Recipe(
        backbone="resnet50_v1c",
        lr=0.01,
        weight_decay=5e-4,
        min_lr=1e-4,
        crop_size=(512, 1024),
        base_scale=(2048, 1024),
        epochs=None,
        iterations=40_000,
        batch_size=8,
        photometric=True,
        train_split="train",
    ),
}


def test_every_recipe_file_has_its_expected_facts_listed():
    assert sorted(path.name for path in GPU_RECIPES) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_states_the_published_training_settings(name):
    config = load_config(CONFIGS / name, check_paths=False)
    augmentation = config.data.augmentation
    stated = Recipe(
        backbone=config.model.backbone,
        lr=config.optimization.lr,
        weight_decay=config.optimization.weight_decay,
        min_lr=config.schedule.min_lr,
        crop_size=augmentation.crop_size,
        base_scale=augmentation.base_scale,
        epochs=config.optimization.epochs,
        iterations=config.optimization.iterations,
        batch_size=config.optimization.batch_size,
        photometric=augmentation.photometric,
        train_split=config.data.train_split,
    )
    assert stated == EXPECTED[name]


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda path: path.name)
def test_recipe_uses_the_paper_head_with_deep_supervision(path):
    model = load_config(path, check_paths=False).model
    assert model.pool_scales == (1, 2, 3, 6)
    assert model.channels == 512
    assert model.gla and model.fusion
    assert model.aux_loss_weight == 0.4
    assert model.output_stride == 8


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda path: path.name)
def test_recipe_trains_on_eight_gpu_workers_with_synchronised_batchnorm(path):
    config = load_config(path, check_paths=False)
    scaling = config.scaling
    assert scaling.num_workers == 8
    assert scaling.use_gpu
    assert scaling.resources_per_worker["GPU"] == 1
    assert scaling.sync_batchnorm is True
    assert config.optimization.optimizer == "sgd"
    assert config.optimization.momentum == 0.9


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda path: path.name)
def test_recipe_leaves_tracking_and_storage_to_the_environment(path):
    config = load_config(path, check_paths=False)
    assert config.tracking.tracking_uri is None
    assert config.tracking.experiment_name is None
    assert config.checkpointing.storage_path is None


@pytest.mark.parametrize("path", GPU_RECIPES, ids=lambda path: path.name)
def test_recipe_header_names_its_source_and_the_expected_miou(path):
    header = path.read_text().split("\n\n")[0].split("\ndata:")[0]
    assert "Source:" in header
    assert "the paper" in header or "reference toolbox" in header
    assert "Expect:" in header and "mIoU" in header


def test_ade20k_recipe_turns_into_the_papers_recipe_with_the_documented_overrides():
    overrides = [
        "optimization.iterations=null",
        "optimization.epochs=120",
        "data.augmentation.crop_size=[576,576]",
        "optimization.weight_decay=1.0e-4",
        "schedule.min_lr=0.0",
    ]
    config = load_config(CONFIGS / "ade20k_r101.yaml", overrides, check_paths=False)
    assert config.optimization.epochs == 120
    assert config.data.augmentation.crop_size == (576, 576)
    assert "--set " + overrides[2] in (CONFIGS / "ade20k_r101.yaml").read_text()
