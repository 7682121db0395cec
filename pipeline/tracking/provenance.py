"""Which code a run came from: the git commit, also where no repository travels along."""

import os
import subprocess
from pathlib import Path

GIT_COMMIT_ENV = "APCNET_GIT_COMMIT"


def git_commit(path: str | Path | None = None) -> str:
    """The commit the code runs from: `APCNET_GIT_COMMIT` when set, else `git rev-parse HEAD`.

    `path` defaults to the repository root. Returns "unknown" where git or the repository is
    missing, e.g. inside a `ray job submit` working folder, which carries no `.git`: there the
    submitter should pass the commit in the job's env_vars.
    """
    from_env = os.environ.get(GIT_COMMIT_ENV, "").strip()
    if from_env:
        return from_env
    folder = Path(path) if path is not None else Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"
