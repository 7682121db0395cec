"""Shared fixtures: an isolated home folder for every test session, one local Ray instance."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Fixtures that start Ray, a replica of the cluster, a server or a job: a test that uses one,
# directly or through another fixture, is an integration test (left out of `make test-fast`),
# whatever its own markers say.
INTEGRATION_FIXTURES = frozenset(
    {"ray_session", "local_cluster", "training", "evaluation", "registered", "server"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def isolated_home() -> Iterator[Path]:
    """Point APCNET_HOME and MLflow at a throwaway folder so tests never touch ~/.cache."""
    home = Path(tempfile.mkdtemp(prefix="apcnet-home-"))
    saved = {key: os.environ.get(key) for key in ("APCNET_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["APCNET_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """Small tensors on a shared 2-core machine: one intra-op thread avoids oversubscription.
    A module asks for it with `pytestmark = pytest.mark.usefixtures("single_torch_thread")`."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance shared by every test that needs Ray.

    Ray gets a short temporary folder of its own: its socket paths must stay under 107 bytes,
    which pytest's tmp_path exceeds. Only the instance started here is shut down.
    """
    import ray

    from pipeline.train.connection import API_SERVER_ADDRESS_VARIABLE, start_local_instance

    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    saved_api_address = os.environ.get(API_SERVER_ADDRESS_VARIABLE)
    # With the dashboard and its address known to every Ray process, the State API works even
    # beside other Ray instances on this machine: Train's placement-group cleaner needs it,
    # without it a Tune trial stopped by ASHA never frees its workers' resources.
    start_local_instance(
        num_cpus=2,
        object_store_memory=1_000_000_000,
        _temp_dir=temp_dir,
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved_api_address is None:
            os.environ.pop(API_SERVER_ADDRESS_VARIABLE, None)
        else:
            os.environ[API_SERVER_ADDRESS_VARIABLE] = saved_api_address
