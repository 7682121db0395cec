"""Wheels of what a lent GPU machine lacks for a Ray run of the project, to carry there.

The GPU machines (the device tool) have CPython 3.12 with PyTorch and the usual scientific stack
but not Ray, and reach no package index. This builds, here, `wheelhouse/` (git-ignored): the
project's Ray pin with the extras it uses, and the other packages a GPU run imports, as wheels
for CPython 3.12 on x86_64 Linux, without what the GPU image already has (IMAGE_HAS) and
without what no GPU run uses (NOT_FOR_A_GPU_RUN). Ray's wheel is repacked without `ray/jars/`
(Java workers only, about 32 of its 79 MB), so the whole travels within the 64 MiB a device run
carries beside the repository. MLflow stays behind: a GPU run has `tracking.enabled: false`.

    python tools/gpu_wheels.py                      # writes wheelhouse/ and lists it
    # on the GPU machine (device run with carry ["wheelhouse"]):
    python3 -m pip install --no-index --no-deps --target .gpu-site wheelhouse/*.whl
    PYTHONPATH=$PWD/.gpu-site:$PWD python3 jobs/train.py --set scaling.use_gpu=true ...

`--no-deps` keeps the image's own numpy, pandas, pyarrow and torch: the versions there differ
from the pins here, and nothing can be fetched to satisfy a pin.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / "wheelhouse"
# What a device run may carry besides the repository (the device tool's limit), less a margin
# for the tracked files (about 1.5 MB).
CARRY_BUDGET_BYTES = 64 * 2**20 - 3 * 2**20
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
# Runtime packages of a GPU run besides Ray (names as in pyproject.toml) and pytest for the
# `gpu` tests.
ALSO_NEEDED = ("psutil", "nvidia-ml-py", "pytest", "pytest-timeout")
# On the GPU image, read off its package list and the issue that planned the GPU run: torch's,
# the data stack's and aiohttp's and requests' own dependencies come with them.
IMAGE_HAS = frozenset(
    {
        "torch", "torchvision", "triton", "numpy", "pandas", "pyarrow", "scipy", "pillow",
        "opencv-python", "opencv-python-headless", "onnx", "onnxruntime", "onnxscript",
        "aiohttp", "aiosignal", "aiohappyeyeballs", "attrs", "frozenlist", "multidict",
        "propcache", "yarl", "grpcio", "msgpack", "protobuf", "pyyaml", "requests", "urllib3",
        "idna", "charset-normalizer", "certifi", "filelock", "packaging", "click", "fsspec",
        "python-dateutil", "six", "tzdata", "typing-extensions", "jinja2", "markupsafe",
        "sympy", "mpmath", "networkx", "safetensors", "huggingface-hub", "tqdm",
    }
)  # fmt: skip
# Dependencies of Ray's extras that a GPU run never imports: runtime_env virtualenvs, the
# dashboard's profiler button, and the cryptography of Google's cloud auth.
NOT_FOR_A_GPU_RUN = frozenset(
    {"virtualenv", "distlib", "python-discovery", "platformdirs", "py-spy", "cryptography",
     "cffi", "pycparser"}
)  # fmt: skip
JAVA_JARS_FOLDER = "ray/jars/"


def normalised(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def wheel_name(path: Path) -> str:
    """The distribution name of a wheel file, normalised."""
    return normalised(path.name.split("-")[0])


def project_requirements() -> list[str]:
    """Every requirement in pyproject.toml, the development extras included."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(dep for group in extras.values() for dep in group)]


def pinned(name: str) -> str:
    """`name` with its extras and version range as pyproject.toml asks for it."""
    return next(
        dep
        for dep in project_requirements()
        if normalised(dep).startswith((name + "[", name + "=", name + ">", name + "<"))
    )


def download(requirements: list[str], folder: Path) -> None:
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder),
        "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
        "--abi", f"cp{PYTHON_VERSION.replace('.', '')}",
        *[part for platform in PLATFORMS for part in ("--platform", platform)],
        *requirements,
    ]  # fmt: skip
    subprocess.run(command, check=True)


def without_jars(wheel: Path, output: Path) -> Path:
    """Ray's wheel repacked without `ray/jars/`, its RECORD listing what is left."""
    repacked = output / wheel.name
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(repacked, "w") as target:
        record_name = next(name for name in source.namelist() if name.endswith(".dist-info/RECORD"))
        rows = []
        for item in source.infolist():
            if item.filename.startswith(JAVA_JARS_FOLDER) or item.filename == record_name:
                continue
            data = source.read(item)
            target.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append(f"{item.filename},sha256={digest.decode()},{len(data)}")
        rows.append(f"{record_name},,")
        target.writestr(record_name, "\n".join(rows) + "\n", compress_type=zipfile.ZIP_DEFLATED)
    return repacked


def build(output: Path) -> list[Path]:
    """Write the wheelhouse to `output` (replacing it); return its wheels."""
    with tempfile.TemporaryDirectory(prefix="wheels-") as downloads:
        folder = Path(downloads)
        download([pinned(name) for name in ("ray", *ALSO_NEEDED)], folder)
        staging = Path(tempfile.mkdtemp(prefix="wheelhouse-", dir=output.parent))
        for wheel in sorted(folder.glob("*.whl")):
            name = wheel_name(wheel)
            if name in IMAGE_HAS or name in NOT_FOR_A_GPU_RUN:
                continue
            if name == "ray":
                without_jars(wheel, staging)
            else:
                shutil.copy2(wheel, staging / wheel.name)
    # Replace the old wheelhouse only once the new one is whole.
    if output.exists():
        shutil.rmtree(output)
    staging.rename(output)
    return sorted(output.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=WHEELHOUSE)
    args = parser.parse_args(argv)
    wheels = build(args.output.resolve())
    total = sum(wheel.stat().st_size for wheel in wheels)
    for wheel in sorted(wheels, key=lambda path: -path.stat().st_size):
        print(f"{wheel.stat().st_size / 2**20:7.1f} MiB  {wheel.name}")
    print(f"{total / 2**20:7.1f} MiB in {len(wheels)} wheels, {args.output}")
    if total > CARRY_BUDGET_BYTES:
        print(
            f"error: over the {CARRY_BUDGET_BYTES / 2**20:.0f} MiB a device run can carry "
            "beside the repository",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
