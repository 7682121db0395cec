"""Which modules a fresh Python process has imported after running a piece of code."""

import subprocess
import sys
from collections.abc import Sequence

from .jobs import REPO_ROOT


def modules_imported_by(program: str, modules: Sequence[str]) -> list[str]:
    """Those of `modules` that a new interpreter, started in the repository root, has imported
    once it has run `program` (Python source). A failing program fails the call."""
    probe = (
        f"{program}\n"
        "import sys as _sys\n"
        f"print(','.join(name for name in {list(modules)!r} if name in _sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    lines = result.stdout.splitlines()
    return [name for name in (lines[-1] if lines else "").split(",") if name]
