"""Create (once) the cached virtual environment for the current pins and link `.venv` to it.

The environment is built in place under the cache folder (venvs are not relocatable) while a
file lock is held; a `.complete` marker is written last, so an interrupted build is detected
and rebuilt instead of being used half-installed. The project itself is then installed in
editable mode, which is cheap and points the environment at this checkout.
"""

import argparse
import compileall
import fcntl
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(req for group in extras.values() for req in group)]


def build(python: str, venv: Path) -> None:
    if venv.exists():
        print(f"removing incomplete environment {venv}", flush=True)
        shutil.rmtree(venv)
    run(python, "-m", "venv", str(venv))
    venv_python = str(venv / "bin" / "python")
    run(venv_python, "-m", "pip", "install", "--upgrade", "pip")
    run(venv_python, "-m", "pip", "install", *requirements())
    # PYTHONDONTWRITEBYTECODE is set on these machines: without compiled bytecode every Ray
    # worker re-parses torch/ray/mlflow at start-up (measured 2x slower runs).
    site_packages = next((venv / "lib").glob("python3*/site-packages"))
    compileall.compile_dir(site_packages, quiet=2, workers=os.cpu_count() or 1)
    (venv / ".complete").write_text("ok\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--link", type=Path, required=True)
    args = parser.parse_args()

    venv: Path = args.cache_dir.expanduser().resolve()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            build(args.python, venv)

    link: Path = args.link
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    link.symlink_to(venv, target_is_directory=True)
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-e",
            str(ROOT),
        ],
        check=True,
    )


if __name__ == "__main__":
    main()
