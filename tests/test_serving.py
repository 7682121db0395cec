"""A registered model served by `mlflow models serve --env-manager local` on loopback answers
a POST of one image with the mask `jobs/predict.py` writes for it, pixel for pixel, and
answers an image that is not (H, W, 3) uint8 with HTTP 400 and a message.

The server runs in its own process group (`helpers.mlflow_server`), stopped by killing that
group; its port is checked free afterwards."""

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers.jobs import job_main
from helpers.mlflow_server import start_model_server
from helpers.runs import run_without_ray, tiny_config
from PIL import Image

from jobs.cli import run_job
from pipeline.evaluate.registry import RegistrationRequest, register_run

MODEL_NAME = "served-demo"
# (width, height): a VOC-sized photo and a small odd-sized one.
IMAGE_SIZES = {"voc": (500, 375), "odd": (97, 129)}
SERVER_START_TIMEOUT_S = 120


def port_is_free(port: int) -> bool:
    """Nothing listens on the port (connections the server closed may linger in TIME_WAIT,
    which SO_REUSEADDR binds past, as a new server would)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def post(port: int, payload: dict) -> tuple[int, dict]:
    """POST `payload` as JSON to the server's /invocations; (HTTP status, JSON answer)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serving")


@pytest.fixture(scope="module")
def run(root):
    return run_without_ray(tiny_config(root, experiment="registry-tests"), "served-run")


@pytest.fixture(scope="module")
def model_uri(run) -> str:
    tracking = run.config.tracking
    registration = register_run(
        RegistrationRequest(
            run=run.run_name,
            model_name=MODEL_NAME,
            storage_path=run.config.checkpointing.storage_path,
            tracking_uri=tracking.tracking_uri,
            experiment=tracking.experiment_name,
        )
    )
    return registration.model_uri


@pytest.fixture(scope="module")
def images(root) -> dict[str, np.ndarray]:
    """RGB uint8 (H, W, 3) per name, also saved as lossless PNGs in <root>/images."""
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    pictures = {}
    for name, (width, height) in IMAGE_SIZES.items():
        pictures[name] = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pictures[name]).save(folder / f"{name}.png")
    return pictures


@pytest.fixture(scope="module")
def predicted_masks(ray_session, run, images, root) -> dict[str, np.ndarray]:
    """jobs/predict.py's masks for the same images and checkpoint."""
    output = root / "masks"
    argv = [
        "--checkpoint",
        run.checkpoint,
        "--input",
        str(root / "images"),
        "--output",
        str(output),
    ]
    assert run_job(job_main("predict"), [*argv, "--actors", "1"]) == 0
    return {name: np.asarray(Image.open(output / f"{name}.png")) for name in images}


@pytest.fixture(scope="module")
def server(run, model_uri):
    """The port of `mlflow models serve` for the registered model, ready to answer."""
    tracking_uri = run.config.tracking.tracking_uri
    serving = start_model_server(model_uri, tracking_uri, run.root / "server.log")
    port = serving.port
    try:
        serving.wait_until_serving("/ping", timeout_s=SERVER_START_TIMEOUT_S)
        yield port
    finally:
        serving.stop()
        deadline = time.monotonic() + 10
        while not port_is_free(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert port_is_free(port), f"port {port} is still taken after the server stopped"


@pytest.mark.parametrize("name", sorted(IMAGE_SIZES))
def test_a_posted_image_is_answered_with_the_mask_predict_writes(
    server, images, predicted_masks, name
):
    status, answer = post(server, {"inputs": [images[name].tolist()]})
    assert status == 200, answer
    (mask,) = np.asarray(answer["predictions"])
    assert mask.shape == images[name].shape[:2]
    np.testing.assert_array_equal(mask, predicted_masks[name])


def test_images_of_different_sizes_in_one_request_are_answered_with_a_mask_each(
    server, images, predicted_masks
):
    names = sorted(IMAGE_SIZES)
    status, answer = post(server, {"inputs": [images[name].tolist() for name in names]})
    assert status == 200, answer
    for name, mask in zip(names, answer["predictions"], strict=True):
        np.testing.assert_array_equal(np.asarray(mask), predicted_masks[name])


def test_an_image_that_is_not_hw3_is_answered_with_400_and_the_expected_shape(server):
    status, answer = post(server, {"inputs": [np.zeros((6, 5), dtype=np.uint8).tolist()]})
    assert status == 400
    assert "image 0: expected RGB of shape (H, W, 3); got shape (6, 5)" in answer["message"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (300, "image 0: expected uint8 values, integers 0-255; got values from 0 to 300"),
        # JSON carries no uint8: a 0-1 float image is refused, not truncated to black.
        (0.5, "image 0: expected uint8 values, integers 0-255; got float64"),
    ],
)
def test_values_that_are_not_uint8_are_answered_with_400(server, value, message):
    pixels = np.zeros((6, 5, 3), dtype=np.int64).tolist()
    pixels[2][3][1] = value
    status, answer = post(server, {"inputs": [pixels]})
    assert status == 400
    assert message in answer["message"]
