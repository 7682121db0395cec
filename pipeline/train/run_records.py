"""A training run's own records in its folder `<storage>/<run name>/`, beside Ray's checkpoints.

- `config.yaml`: the resolved config the run was started with (written once, at the start);
- `COMPLETE.json`: written last, when the run has finished: its summary. A run is complete
  exactly when this file exists.
Both are written under a temporary name and renamed, so a crash never leaves a half file.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.config.schema import ExperimentConfig, config_from_dict
from pipeline.config.typed import load_yaml
from pipeline.storage import apcnet_home
from pipeline.train.run_checkpoints import run_folder

COMPLETE_MARKER = "COMPLETE.json"
CONFIG_FILE = "config.yaml"


def default_run_name(config_path: str | Path | None, now: datetime | None = None) -> str:
    """`<config stem>-<YYYYmmdd-HHMMSS>`; the stem is "synthetic" for the embedded default."""
    stem = Path(config_path).stem if config_path is not None else "synthetic"
    return f"{stem}-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"


def storage_root(config: ExperimentConfig, storage_path: str | Path | None = None) -> Path:
    """The folder run folders go in: the argument, else the config's, else `<home>/runs`."""
    chosen = storage_path or config.checkpointing.storage_path
    return Path(chosen).expanduser().resolve() if chosen else apcnet_home() / "runs"


def stored_config(run_name: str, storage_path: Path) -> ExperimentConfig | None:
    """The resolved config a run was started with, or None for a run that never started."""
    path = run_folder(run_name, storage_path) / CONFIG_FILE
    if not path.is_file():
        return None
    return config_from_dict(load_yaml(path.read_text()), source=str(path))


def completed_summary(run_name: str, storage_path: Path) -> dict[str, Any] | None:
    """The completion record of a finished run, or None when it has not finished."""
    marker = run_folder(run_name, storage_path) / COMPLETE_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def write_complete_marker(folder: Path, summary: dict[str, Any]) -> None:
    """Mark the run in `folder` complete, with its summary (JSON)."""
    write_atomically(folder / COMPLETE_MARKER, json.dumps(summary, indent=2) + "\n")


def write_once(path: Path, text: str) -> None:
    if not path.exists():
        write_atomically(path, text)


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    temporary.write_text(text)
    os.replace(temporary, path)
