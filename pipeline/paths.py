"""Where local state lives: one home folder for data, checkpoints and the MLflow store."""

import os
from pathlib import Path

HOME_ENV = "APCNET_HOME"


def apcnet_home() -> Path:
    """The project's home folder, always absolute.

    `APCNET_HOME` when set, else `~/.cache/apcnet`. Absolute so that a job unpacked by
    `ray job submit` into a temporary working directory still writes where the user looks.
    """
    configured = os.environ.get(HOME_ENV)
    home = Path(configured).expanduser() if configured else Path.home() / ".cache" / "apcnet"
    return home.resolve()
