"""The commands `tools/local_cluster.py up` prints are the README's, so a newcomer who follows
either gets the same run, and `env` exports everything those commands use."""

import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

from replica.report import export_lines, up_report, walkthrough  # noqa: E402
from replica.state import Part, Replica  # noqa: E402


def three_node_replica(directory: str) -> Replica:
    replica = Replica(directory, "apcnet", 2, 256, 6379, 8265, 5000, 5001)
    for name in ("n0", "n1", "n2", "s3", "mlflow"):
        replica.record(Part(name, 1000, 0, f"{directory}/logs/{name}.log", {}))
    return replica


def readme_replica_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### The cluster on one machine", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)[1]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def normalised(command: str) -> str:
    return " ".join(command.split())


def test_the_readme_gives_exactly_the_commands_up_prints_for_the_default_folder():
    printed = walkthrough(three_node_replica("/home/me/.cache/apcnet/local-cluster"), True)
    expected = ["python tools/local_cluster.py up", *printed]
    assert [normalised(line) for line in readme_replica_commands()] == expected


def test_up_prints_the_commands_with_the_folder_it_was_given():
    report = up_report(three_node_replica("/tmp/lc"), default_directory=False)
    assert 'eval "$(python tools/local_cluster.py env --dir /tmp/lc)"' in report
    assert "python tools/local_cluster.py down --dir /tmp/lc" in report
    assert "--submission-id local-1" in report and "/tmp/lc/auth_token" in report


def test_env_exports_everything_the_printed_commands_use():
    exported = export_lines(three_node_replica("/tmp/lc"))
    for variable in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RUNTIME_ENV_JSON", "AWS_ENDPOINT_URL"):
        assert re.search(rf"^export {variable}=", exported, re.MULTILINE), variable
