"""The MLflow Model Registry: a finished run's best checkpoint registered as a pyfunc model,
evaluated by its models:/ URI; MLflow's own conventions (experiment kind, dataset inputs,
the run's Models column); and the registration mistakes a user can make, one line each.

MLflow on SQLite under the test's folder; the run is written without Ray
(`helpers.runs.run_without_ray`); only the evaluation of the registered model starts Ray."""

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from helpers.jobs import job_main
from helpers.runs import BEST_VAL_MIOU, run_without_ray, tiny_config
from mlflow.artifacts import download_artifacts

from jobs.cli import run_job
from pipeline.config.schema import ConfigError, load_config
from pipeline.data.shards import manifest_digest
from pipeline.data.transforms import normalize
from pipeline.evaluate.evaluation import EvaluationRequest, evaluate, load_evaluation_model
from pipeline.evaluate.inference_model import load_project_checkpoint
from pipeline.evaluate.registry import (
    REQUIRED_DISTRIBUTIONS,
    RegistryError,
    load_registered_model,
    model_version_location,
)
from pipeline.evaluate.served_model import (
    ImageInputError,
    checked_images,
    code_files,
    image_batch,
)
from pipeline.evaluate.testtime import TestTimeOptions, predict_label_map
from pipeline.tracking.conventions import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
from pipeline.tracking.tags import (
    MANIFEST_HASH_TAG,
    TRAINING_RUN_ID_TAG,
    TRAINING_RUN_NAME_TAG,
    VAL_MIOU_TAG,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MODEL_NAME = "registry-demo"
EXPERIMENT = "registry-tests"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="module")
def run(root):
    return run_without_ray(tiny_config(root, experiment=EXPERIMENT), "registered-run")


@pytest.fixture(scope="module")
def tracking_args(run) -> list[str]:
    tracking = run.config.tracking
    return [
        "--tracking-uri",
        tracking.tracking_uri,
        "--experiment",
        tracking.experiment_name,
        "--storage-path",
        run.config.checkpointing.storage_path,
    ]


@pytest.fixture(scope="module")
def registered(run, tracking_args):
    """jobs/register.py on the finished run, with an alias; the new version."""
    argv = ["--run", run.run_name, "--model-name", MODEL_NAME, "--alias", "champion"]
    assert run_job(job_main("register"), [*argv, *tracking_args]) == 0
    client = mlflow.MlflowClient(run.config.tracking.tracking_uri)
    return client.get_model_version_by_alias(MODEL_NAME, "champion")


@pytest.fixture(scope="module")
def model_folder(run, registered, tmp_path_factory) -> Path:
    uri = f"models:/{MODEL_NAME}/{registered.version}"
    location = model_version_location(uri, tracking_of(run))
    folder = tmp_path_factory.mktemp("downloaded")
    return Path(download_artifacts(location, dst_path=str(folder), tracking_uri=tracking_of(run)))


def tracking_of(run) -> str:
    return run.config.tracking.tracking_uri


def test_the_new_version_is_tagged_with_its_run_data_set_and_val_miou(run, registered):
    manifest = Path(run.config.data.path) / "manifest.json"
    assert registered.run_id == run.mlflow_run_id
    assert registered.tags[TRAINING_RUN_NAME_TAG] == run.run_name
    assert registered.tags[TRAINING_RUN_ID_TAG] == run.mlflow_run_id
    assert registered.tags[MANIFEST_HASH_TAG] == manifest_digest(manifest)
    assert float(registered.tags[VAL_MIOU_TAG]) == pytest.approx(BEST_VAL_MIOU)


def test_the_model_carries_signature_input_example_pinned_requirements_and_checkpoint(
    model_folder, run
):
    description = yaml.safe_load((model_folder / "MLmodel").read_text())
    assert "python_function" in description["flavors"]
    assert description["signature"]["inputs"]
    assert description["saved_input_example_info"]
    requirements = (model_folder / "requirements.txt").read_text().split()
    assert len(requirements) == len(REQUIRED_DISTRIBUTIONS)
    assert all("==" in requirement for requirement in requirements)
    stored = model_folder / "artifacts" / Path(run.checkpoint).name
    assert stored.read_bytes() == Path(run.checkpoint).read_bytes()


def test_the_model_code_is_what_the_served_model_imports_not_the_training_loop_or_search(
    model_folder,
):
    code = model_folder / "code"
    shipped = sorted(path.relative_to(code) for path in code.rglob("*.py"))
    assert shipped == code_files()
    assert Path("pipeline/evaluate/served_model.py") in shipped
    not_served = ["pipeline/train", "pipeline/tune", "pipeline/tracking"]
    not_served += ["pipeline/evaluate/registry.py"]
    assert not [path for path in not_served if (code / path).exists()]


# Loads the model in a fresh process from a folder outside the repository, predicts once, and
# prints the file of every project module then imported.
LOAD_AND_LIST_MODULES = """
import sys
import mlflow.pyfunc
import numpy as np
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(np.zeros((1, 8, 8, 3), dtype=np.uint8))
for name, module in sorted(sys.modules.items()):
    if name.partition(".")[0] in ("apcnet", "pipeline"):
        print("module", module.__file__)
"""


@pytest.mark.integration
def test_the_served_model_imports_every_project_module_from_its_own_code(model_folder, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_LIST_MODULES, str(model_folder)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    files = [Path(line.removeprefix("module ")).resolve() for line in lines if "module " in line]
    code = (model_folder / "code").resolve()
    assert code / "pipeline" / "evaluate" / "served_model.py" in files
    outside = [file for file in files if not file.is_relative_to(code)]
    assert not outside, outside


def test_the_training_run_shows_the_model_in_its_models_column(run, registered):
    client = mlflow.MlflowClient(tracking_of(run))
    (output,) = client.get_run(run.mlflow_run_id).outputs.model_outputs
    assert client.get_logged_model(output.model_id).artifact_location == registered.source
    assert client.get_run(run.mlflow_run_id).info.status == "FINISHED"


def test_the_experiment_is_tagged_as_model_training(run):
    client = mlflow.MlflowClient(tracking_of(run))
    experiment = client.get_experiment_by_name(run.config.tracking.experiment_name)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_the_pyfunc_predicts_what_the_checkpoint_predicts(run, model_folder):
    model = mlflow.pyfunc.load_model(str(model_folder))
    inference = load_project_checkpoint(run.checkpoint)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 40, 36, 3), dtype=np.uint8)
    sizes = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((33, 47), (52, 31))]

    def expected(image):
        normalised = normalize(image, inference.mean, inference.std)
        return predict_label_map(inference.model, normalised, TestTimeOptions())

    masks = model.predict(batch)
    assert masks.shape == (2, 40, 36)
    for image, mask in zip(batch, masks, strict=True):
        np.testing.assert_array_equal(mask, expected(image))
    for image, mask in zip(sizes, model.predict(image_batch(sizes)), strict=True):
        np.testing.assert_array_equal(mask, expected(image))


def test_an_image_that_is_not_rgb_uint8_is_refused_naming_its_shape_or_values(model_folder):
    model = mlflow.pyfunc.load_model(str(model_folder))
    with pytest.raises(ImageInputError, match=r"image 0: expected RGB of shape \(H, W, 3\); got"):
        model.predict(np.zeros((1, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(ImageInputError, match=r"image 0: expected uint8 values.*got float32"):
        model.predict(np.zeros((1, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ImageInputError, match=r"got shape \(8, 8, 3\)\. Send one image as a"):
        model.predict(np.zeros((8, 8, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        ([[[0.5, 1, 2]]], "image 0: expected uint8 values, integers 0-255; got float64"),
        (
            [[[0, 1, 256]]],
            "image 0: expected uint8 values, integers 0-255; got values from 0 to 256",
        ),
        ([[[-1, 1, 2]]], "got values from -1 to 2"),
        ([[[True, False, True]]], "got bool"),
        ([[[1, 2]]], r"expected RGB of shape \(H, W, 3\); got shape \(1, 1, 2\)"),
        ([[[1, 2, 3]], [[1, 2]]], "image 0 is not an array of pixels"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "image 0 is empty"),
    ],
)
def test_pixels_that_are_not_integers_0_to_255_in_h_w_3_are_refused_never_rounded(pixels, message):
    with pytest.raises(ImageInputError, match=message):
        checked_images([pixels])


def test_images_parsed_from_json_are_taken_at_every_depth_numpy_stops_at():
    """A JSON request arrives as an object array of Python ints: (N, H, W, 3) for one size,
    (N, H) when only the widths differ, (N,) when the heights differ too."""
    rng = np.random.default_rng(1)
    shapes = {
        "same": [(5, 7, 3), (5, 7, 3)],
        "widths": [(5, 7, 3), (5, 4, 3)],
        "heights": [(5, 7, 3), (6, 4, 3)],
    }
    for name, sizes in shapes.items():
        images = [rng.integers(0, 256, size, dtype=np.uint8) for size in sizes]
        parsed = np.array([image.tolist() for image in images], dtype=object)
        assert parsed.ndim == {"same": 4, "widths": 2, "heights": 1}[name]
        for image, checked in zip(images, checked_images(parsed), strict=True):
            assert checked.dtype == np.uint8
            np.testing.assert_array_equal(checked, image)


def test_a_registered_model_loads_for_evaluation_like_its_checkpoint(run, registered):
    uri = f"models:/{MODEL_NAME}@champion"
    model, manifest = load_evaluation_model(
        EvaluationRequest(model=uri, tracking_uri=tracking_of(run))
    )
    reference = load_project_checkpoint(run.checkpoint)
    assert model.source == uri
    assert manifest.class_names == reference.class_names
    for ours, theirs in zip(
        model.model.state_dict().values(), reference.model.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs)


def test_evaluating_a_registered_model_logs_its_data_set_as_an_input(ray_session, run, registered):
    tracking = run.config.tracking
    report = evaluate(
        EvaluationRequest(
            model=f"models:/{MODEL_NAME}/{registered.version}",
            tracking_uri=tracking.tracking_uri,
            experiment=tracking.experiment_name,
            actors=1,
            num_samples=0,
        )
    )
    evaluation = mlflow.MlflowClient(tracking.tracking_uri).get_run(report.mlflow_run_id)
    assert evaluation.data.tags[TRAINING_RUN_ID_TAG] == run.mlflow_run_id
    (dataset,) = evaluation.inputs.dataset_inputs
    manifest = Path(run.config.data.path) / "manifest.json"
    assert dataset.dataset.digest == manifest_digest(manifest)[: len(dataset.dataset.digest)]
    assert '"num_rows": 4' in dataset.dataset.profile
    assert [tag.value for tag in dataset.tags] == ["evaluation"]


@pytest.mark.integration
def test_registering_a_run_that_did_not_finish_is_refused(root, tracking_args, capsys):
    config = tiny_config(root, experiment=EXPERIMENT)
    unfinished = run_without_ray(config, "cut-off-run", complete=False)
    argv = ["--run", unfinished.run_name, "--model-name", MODEL_NAME, *tracking_args]
    assert run_job(job_main("register"), argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert error.startswith("error: run 'cut-off-run' has not finished")


@pytest.mark.integration
def test_register_with_tracking_off_is_refused_before_training(capsys):
    for job in ("train", "tune"):
        argv = ["--set", "tracking.enabled=false", "--register", MODEL_NAME]
        assert run_job(job_main(job), argv) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: --register {MODEL_NAME} needs MLflow tracking")


def test_register_model_in_a_config_with_tracking_off_is_refused():
    with pytest.raises(ConfigError, match=r"tracking\.register_model=demo needs MLflow tracking"):
        load_config(None, ["tracking.enabled=false", "tracking.register_model=demo"])


def test_a_model_uri_that_is_not_registered_is_refused(run, registered):
    with pytest.raises(RegistryError, match="cannot fetch registered model"):
        load_registered_model("models:/no-such-model/1", tracking_of(run))
    with pytest.raises(RegistryError, match="expected models:/NAME/VERSION"):
        load_registered_model("runs:/abc/model", tracking_of(run))


@pytest.mark.integration
def test_a_model_name_that_a_models_uri_cannot_hold_is_refused(run, tracking_args, capsys):
    argv = ["--run", run.run_name, "--model-name", "team/demo", *tracking_args]
    assert run_job(job_main("register"), argv) == 2
    assert "model name 'team/demo'" in capsys.readouterr().err
