"""Print a short hash of the dependency pins in pyproject.toml (the key of the cached venv)."""

import hashlib
import json
import sys
import tomllib
from pathlib import Path


def pin_hash(pyproject: Path) -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    pins = {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "dependencies": project["dependencies"],
        "optional": project.get("optional-dependencies", {}),
    }
    return hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:16]


if __name__ == "__main__":
    print(pin_hash(Path(__file__).resolve().parent.parent / "pyproject.toml"))
