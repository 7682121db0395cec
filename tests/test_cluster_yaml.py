"""cluster.yaml is a valid Ray cluster-launcher file that keeps the cluster closed to the network."""

import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# Installed on the cluster at exactly the versions the project is tested with.
PINNED_PACKAGES = ("ray", "torch", "torchvision", "mlflow")


def ray_schema() -> dict:
    """The JSON schema Ray ships for cluster-launcher files (found without importing ray)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    package = Path(next(iter(spec.submodule_search_locations)))
    return json.loads((package / "autoscaler" / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def start_commands(cluster: dict) -> list[str]:
    return cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]


def ray_start_commands(cluster: dict) -> list[str]:
    return [command for command in start_commands(cluster) if "ray start" in command]


def test_cluster_file_validates_against_rays_launcher_schema(cluster):
    jsonschema.validate(cluster, ray_schema())


def test_head_node_type_is_one_of_the_declared_node_types(cluster):
    assert cluster["head_node_type"] in cluster["available_node_types"]


def test_head_offers_no_gpus_and_no_cpus_to_ray_tasks(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU", 0) == 0


def test_there_are_gpu_workers_for_eight_worker_recipes_and_cpu_only_workers(cluster):
    workers = [
        node
        for name, node in cluster["available_node_types"].items()
        if name != cluster["head_node_type"]
    ]
    gpus = [node["resources"].get("GPU", 0) for node in workers]
    assert max(gpus) >= 8
    assert 0 in gpus


def test_dashboard_and_job_api_bind_to_the_head_loopback_only(cluster):
    head_start = [c for c in cluster["head_start_ray_commands"] if "ray start --head" in c]
    assert len(head_start) == 1
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head_start[0])
    assert "--dashboard-host=0.0.0.0" not in (ROOT / "cluster.yaml").read_text()


def test_every_ray_start_uses_token_authentication(cluster):
    commands = ray_start_commands(cluster)
    assert len(commands) == 2
    assert all("RAY_AUTH_MODE=token" in command for command in commands)


def test_the_ray_token_is_copied_to_every_node(cluster):
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_security_group_adds_no_inbound_rule_beyond_rays_ssh_default(cluster):
    security_group = cluster["provider"]["security_group"]
    assert security_group["GroupName"]
    assert not security_group.get("IpPermissions")


def test_ray_starts_from_the_project_environment_installed_with_its_pins(cluster):
    installs = [c for c in cluster["setup_commands"] if "pip install" in c and "-e ." in c]
    assert len(installs) == 1
    assert "cd ~/apcnet" in installs[0]
    assert cluster["file_mounts"]["~/apcnet"] == "."
    assert all("apcnet-venv/bin/activate" in command for command in start_commands(cluster))


def project_pins() -> dict[str, str]:
    """pyproject.toml's exact pins of the packages the cluster must run at the same version."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dependency in dependencies:
        match = re.fullmatch(r"([a-z]+)(?:\[[a-z,]+\])?==(\d+(?:\.\d+)+)", dependency)
        if match and match.group(1) in PINNED_PACKAGES:
            pins[match.group(1)] = match.group(2)
    return pins


def install_commands(cluster: dict) -> list[str]:
    sections = ("setup_commands", "head_setup_commands", "worker_setup_commands")
    return [c for section in sections for c in cluster[section] if "pip install" in c]


def test_project_pins_exact_versions_of_ray_torch_torchvision_and_mlflow():
    assert sorted(project_pins()) == sorted(PINNED_PACKAGES)


def test_cluster_installs_ray_torch_torchvision_and_mlflow_only_at_the_projects_pins(cluster):
    pins = project_pins()
    for command in install_commands(cluster):
        for token in shlex.split(command):
            match = re.fullmatch(r"([a-z]+)(?:\[[a-z,]+\])?((?:[=<>!~].*)?)", token)
            if match and match.group(1) in pins:
                package, specifier = match.groups()
                pinned = f"{package}=={pins[package]}"
                assert specifier == f"=={pins[package]}", f"installs {token!r}, not {pinned}"


def test_versions_cluster_yaml_names_are_the_projects_pins():
    text = (ROOT / "cluster.yaml").read_text()
    pins = project_pins()
    for package, pin in pins.items():
        # "ray 2.60.0" in a comment or "ray[default]==2.60.0" in a command.
        pattern = rf"(?<![\w./-]){package}(?:\[[a-z,]+\])?(?:==|\s+)(\d+(?:\.\d+)+)"
        named = set(re.findall(pattern, text))
        assert named <= {pin}, f"cluster.yaml names {package} {sorted(named)}; pyproject pins {pin}"


def test_mlflow_server_starts_on_the_head_with_artifacts_in_object_storage(cluster):
    servers = [c for c in cluster["head_start_ray_commands"] if "mlflow server" in c]
    assert len(servers) == 1
    assert "--artifacts-destination s3://" in servers[0]
    assert "--backend-store-uri sqlite:////" in servers[0]
