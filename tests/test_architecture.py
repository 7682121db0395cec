"""Tests that keep the house standing: layers, import rules, the map in ARCHITECTURE.md, sizes.

Imports are read with `ast` (nothing is imported), so those checks take a second and need no
Ray; only the benchmark checks start a Python process each (a few seconds for torch's import).
The import rule of each subpackage of `pipeline` is the `May import:` line of its `__init__.py`
docstring; ARCHITECTURE.md describes the same rules for people.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipeline"
ARCHITECTURE_MD = ROOT / "ARCHITECTURE.md"
LAYER_FOLDERS = ("apcnet", "pipeline", "jobs")
MAX_FILE_LINES = 600
MAX_TOP_LEVEL_MODULES = 2  # pipeline/errors.py and pipeline/storage.py
SHARED_MODULES = {"errors", "storage"}  # pipeline.<these> may be imported from anywhere
NEVER_IMPORTED_BY = {
    "apcnet": {"pipeline", "jobs", "ray", "mlflow", "pyarrow"},
    "pipeline": {"jobs"},
    "jobs": set(),
}
MAY_IMPORT = re.compile(r"^\s*May import:\s*(?P<names>.*?)\s*$", re.MULTILINE)
NOTHING = "nothing else in pipeline."
SUBPACKAGE_ROW = re.compile(r"^\|\s*`pipeline/(?P<name>[A-Za-z_]\w*)/`\s*\|")
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))


@dataclass(frozen=True)
class Import:
    """One imported module as an absolute dotted name, where it was imported."""

    file: Path
    line: int
    module: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def subpackages() -> set[str]:
    """Direct children of pipeline/ that are packages."""
    return {path.parent.name for path in PIPELINE.glob("*/__init__.py")}


def package_of(path: Path) -> str:
    """The dotted package a module lives in (the package itself for an `__init__.py`)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1])


def imports_of(path: Path) -> list[Import]:
    """Every import in a file, at any depth (inside functions too), as absolute module names.

    `from pipeline import data` counts as importing `pipeline.data`; relative imports are
    resolved against the file's package.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = package_of(path).split(".")
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(path, node.lineno, base))
            if "." not in base:  # `from pipeline import data`: the names are the modules
                found += [Import(path, node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def docstring_of(package: Path) -> str:
    return ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""


def allowed_imports(package: Path) -> set[str] | None:
    """The subpackages named by the `May import:` line of a package's docstring (None: no line).

    Raises ValueError naming the package when the line is not in the fixed form
    `May import: pipeline.a, pipeline.b.` or `May import: nothing else in pipeline.`
    """
    match = MAY_IMPORT.search(docstring_of(package))
    if match is None:
        return None
    names = match["names"]
    if names == NOTHING:
        return set()
    items = [item.strip() for item in names.removesuffix(".").split(",")]
    if not names.endswith(".") or not all(re.fullmatch(r"pipeline\.\w+", i) for i in items):
        raise ValueError(
            f"{(package / '__init__.py').relative_to(ROOT)}: 'May import: {names}' is not "
            f"'May import: pipeline.a, pipeline.b.' nor 'May import: {NOTHING}'"
        )
    return {item.removeprefix("pipeline.") for item in items}


def subpackage_of(path: Path) -> str | None:
    """`data` for pipeline/data/formats/voc.py; None for pipeline's top-level modules."""
    parts = path.relative_to(PIPELINE).parts
    return parts[0] if len(parts) > 1 else None


def test_no_layer_imports_upward():
    """apcnet knows only torch/torchvision; pipeline never imports jobs."""
    offences = []
    for layer in LAYER_FOLDERS:
        for path in python_files(layer):
            for found in imports_of(path):
                root = found.module.split(".")[0]
                if root in NEVER_IMPORTED_BY[layer]:
                    offences.append(f"{found.where}: {layer}/ imports {found.module}")
    assert not offences, "imports that point up a layer:\n" + "\n".join(sorted(set(offences)))


def test_pipeline_subpackages_import_only_what_their_may_import_line_allows():
    """A subpackage may always import itself, pipeline.errors and pipeline.storage; the
    top-level modules follow pipeline/__init__.py's line; data/formats is part of data."""
    packages = subpackages()
    rules = {name: allowed_imports(PIPELINE / name) for name in packages}
    rules[None] = allowed_imports(PIPELINE)
    offences = []
    for path in python_files("pipeline"):
        own = subpackage_of(path)
        allowed = rules[own] or set()
        for found in imports_of(path):
            parts = found.module.split(".")
            if parts[0] != "pipeline" or len(parts) < 2:
                continue
            target = parts[1]
            if target in SHARED_MODULES or target == own or target not in packages:
                continue
            if target not in allowed:
                owner = f"pipeline/{own}/" if own else "pipeline's top-level modules"
                may = ", ".join(sorted(allowed)) or "nothing else"
                offences.append(
                    f"{found.where}: imports {found.module}, but {owner} may import: {may}"
                )
    assert not offences, "imports the May import: lines do not allow:\n" + "\n".join(
        sorted(set(offences))
    )


def test_every_pipeline_package_docstring_has_a_may_import_line():
    packages = [path.parent for path in sorted(PIPELINE.rglob("__init__.py"))]
    problems = []
    for package in packages:
        where = (package / "__init__.py").relative_to(ROOT)
        try:
            allowed = allowed_imports(package)
        except ValueError as error:
            problems.append(str(error))
            continue
        if allowed is None:
            problems.append(f"{where}: its docstring has no 'May import:' line")
        elif unknown := allowed - subpackages():
            problems.append(f"{where}: May import names no subpackage: {sorted(unknown)}")
    assert not problems, "\n".join(problems)


def test_a_nested_package_may_import_no_more_than_its_subpackage():
    """pipeline/data/formats/ is part of data: its line cannot widen data's."""
    problems = []
    for init in sorted(PIPELINE.glob("*/*/**/__init__.py")):
        package = init.parent
        outer = PIPELINE / package.relative_to(PIPELINE).parts[0]
        wider = (allowed_imports(package) or set()) - (allowed_imports(outer) or set())
        if wider:
            problems.append(f"{init.relative_to(ROOT)} allows {sorted(wider)} beyond {outer.name}")
    assert not problems, "\n".join(problems)


def test_package_init_files_hold_only_their_docstring():
    """Importing a subpackage stays cheap inside Ray workers: no code, no re-exports."""
    problems = []
    for init in sorted(PIPELINE.rglob("__init__.py")):
        body = ast.parse(init.read_text()).body
        if not body or not (
            isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        ):
            problems.append(f"{init.relative_to(ROOT)}: no docstring")
        elif len(body) > 1:
            problems.append(f"{init.relative_to(ROOT)}:{body[1].lineno}: code after the docstring")
    assert not problems, "\n".join(problems)


def subpackage_rows() -> dict[str, list[str]]:
    """ARCHITECTURE.md's rows whose first cell is `pipeline/<name>/`: name -> cells."""
    rows = {}
    for line in ARCHITECTURE_MD.read_text().splitlines():
        if match := SUBPACKAGE_ROW.match(line):
            rows[match["name"]] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return rows


def test_architecture_md_lists_exactly_the_subpackages_of_pipeline():
    listed = set(subpackage_rows())
    actual = subpackages()
    missing, stale = sorted(actual - listed), sorted(listed - actual)
    assert not (missing or stale), (
        f"ARCHITECTURE.md's table of subpackages differs from pipeline/: "
        f"not in the table: {missing}; in the table but not a package: {stale}"
    )


def test_no_python_file_in_the_layers_exceeds_600_lines():
    too_long = []
    for path in python_files(*LAYER_FOLDERS):
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not too_long, (
        f"files over {MAX_FILE_LINES} lines (each probably holds two concepts: split by concept):\n"
        + "\n".join(too_long)
    )


def test_pipeline_has_at_most_two_top_level_modules():
    modules = sorted(p.name for p in PIPELINE.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, (
        f"pipeline/ has {len(modules)} top-level modules {modules}; "
        f"at most {MAX_TOP_LEVEL_MODULES} (errors, storage): move the others into a subpackage"
    )


@pytest.mark.parametrize("script", BENCHMARKS, ids=[path.name for path in BENCHMARKS])
@pytest.mark.integration
def test_benchmark_script_runs_with_help(script: Path):
    """Imports a move broke show up here, not on the day someone benchmarks."""
    finished = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, (
        f"{script.relative_to(ROOT)} --help exited {finished.returncode}:\n"
        f"{finished.stderr[-3000:]}"
    )


def test_architecture_md_may_import_column_agrees_with_the_docstrings():
    """The third cell of a subpackage's row names (in backticks) what its May import: allows."""
    disagreements = []
    for name, cells in sorted(subpackage_rows().items()):
        if not (PIPELINE / name / "__init__.py").is_file():
            continue  # reported by the test of the table's rows
        documented = set(re.findall(r"`(\w+)`", cells[2])) if len(cells) > 2 else set()
        declared = allowed_imports(PIPELINE / name) or set()
        if documented != declared:
            disagreements.append(
                f"pipeline/{name}/: ARCHITECTURE.md says {sorted(documented)}, "
                f"its May import: line says {sorted(declared)}"
            )
    assert not disagreements, "\n".join(disagreements)


# --- Ray below its public API -----------------------------------------------------------------
# The code (not the tests) uses Ray through its public, documented API only. The scan fails on
# a private module (`ray._private`, `ray.<anything>._internal`), an underscored Ray name
# (imported, reached as an attribute of a Ray module, or passed as a keyword to a Ray call), a
# Ray exception recognised by its class name, and a `RAY_*` environment variable that Ray's
# documentation does not name. Whatever the project cannot do without is one entry of
# `BELOW_PUBLIC_API`, with why, the public API that is missing and the Ray version checked.

PUBLIC_API_FOLDERS = ("apcnet", "pipeline", "jobs", "benchmarks", "tools")
RAY_VERSION_CHECKED = "2.60.0"
PRIVATE_RAY_MODULE = re.compile(r"\bray(?:\.[A-Za-z0-9_]+)*\.(?:_[A-Za-z0-9_]*)")
RAY_VARIABLE = re.compile(r"\bRAY_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_*])")  # not a prefix (RAY_TRAIN_*)

# Each with the page of Ray's documentation that names it.
DOCUMENTED_RAY_VARIABLES = {
    "RAY_ADDRESS": "https://docs.ray.io/en/latest/ray-core/api/doc/ray.init.html",
    "RAY_API_SERVER_ADDRESS": "https://docs.ray.io/en/latest/cluster/running-applications/job-submission/sdk.html",
    "RAY_AUTH_MODE": "https://docs.ray.io/en/latest/ray-security/token-auth.html",
    "RAY_AUTH_TOKEN": "https://docs.ray.io/en/latest/ray-security/token-auth.html",
    "RAY_AUTH_TOKEN_PATH": "https://docs.ray.io/en/latest/ray-security/token-auth.html",
    "RAY_DEDUP_LOGS_SKIP_REGEX": "https://docs.ray.io/en/latest/ray-observability/user-guides/configure-logging.html#log-deduplication",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "https://docs.ray.io/en/latest/train/user-guides/monitoring-logging.html",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "https://docs.ray.io/en/latest/data/api/doc/ray.data.set_progress_bars.html",
    "RAY_AIR_NEW_OUTPUT": "https://docs.ray.io/en/latest/tune/api/env.html",
    # Named by Ray Train's own timeout error, which tells the user to set it.
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "https://docs.ray.io/en/latest/train/user-guides/fault-tolerance.html",
    # Named by ray.init's own error when a driver's runtime_env repeats a submitted job's.
    "RAY_OVERRIDE_JOB_RUNTIME_ENV": "https://docs.ray.io/en/latest/ray-core/handling-dependencies.html#inheritance",
}


@dataclass(frozen=True)
class BelowPublicApi:
    """One thing the project relies on that Ray's public API does not promise."""

    file: str
    needle: str  # the text in `file` that relies on it
    reason: str
    missing_public_api: str
    checked_in_ray: str
    guarded_by: str  # the test that fails loudly when Ray changes it


BELOW_PUBLIC_API = (
    BelowPublicApi(
        file="pipeline/data/shard_source.py",
        needle="get_seed_tuple(data_context=context).execution_idx",
        reason=(
            "per-epoch augmentation needs to know, inside a Ray Data task, which pass over the "
            "Dataset is running; RandomSeedConfig (DeveloperAPI) reads it from the executing "
            "Dataset's DataContext, which Ray installs as the current one in every task"
        ),
        missing_public_api="the pass (epoch) index of the executing Dataset inside map_batches",
        checked_in_ray=RAY_VERSION_CHECKED,
        guarded_by=(
            "tests/test_ray_internals.py::"
            "test_each_pass_over_a_dataset_sees_the_next_pass_index_inside_its_tasks"
        ),
    ),
)


def ray_api_offences(path: Path) -> list[str]:
    """Every use in `path` of Ray below its public API, as `file:line: what`."""
    text = path.read_text()
    where = path.relative_to(ROOT)
    offences = []
    for number, line in enumerate(text.splitlines(), start=1):
        if PRIVATE_RAY_MODULE.search(line):
            offences.append(f"{where}:{number}: a private Ray module or name: {line.strip()}")
        for variable in RAY_VARIABLE.findall(line):
            if variable not in DOCUMENTED_RAY_VARIABLES:
                offences.append(f"{where}:{number}: {variable}, which Ray's docs do not name")
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            offences += [
                f"{where}:{node.lineno}: imports {alias.name} from {node.module}"
                for alias in node.names
                if alias.name.startswith("_")
            ]
        elif isinstance(node, ast.Call) and _dotted(node.func).split(".")[0] == "ray":
            offences += [
                f"{where}:{node.lineno}: passes {keyword.arg}= to {_dotted(node.func)}"
                for keyword in node.keywords
                if keyword.arg and keyword.arg.startswith("_")
            ]
        elif isinstance(node, ast.Compare) and any(
            isinstance(side, ast.Attribute) and side.attr == "__name__"
            for side in (node.left, *node.comparators)
        ):
            offences.append(f"{where}:{node.lineno}: recognises a class by its name")
    return offences


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_the_code_uses_ray_through_its_public_documented_api_only():
    offences = [
        offence for path in python_files(*PUBLIC_API_FOLDERS) for offence in ray_api_offences(path)
    ]
    assert not offences, (
        "uses of Ray below its public API (use a public one, or add an entry to "
        "BELOW_PUBLIC_API with the reason, the missing API and the Ray version):\n"
        + "\n".join(offences)
    )


def test_every_entry_below_the_public_api_is_still_in_the_code_and_guarded():
    for entry in BELOW_PUBLIC_API:
        assert entry.needle in (ROOT / entry.file).read_text(), f"stale entry: {entry}"
        test_file, _, test_name = entry.guarded_by.partition("::")
        assert f"def {test_name}(" in (ROOT / test_file).read_text(), f"unguarded: {entry}"
    assert len(BELOW_PUBLIC_API) <= 1, "the project relies on more of Ray than one pass counter"


def test_the_installed_ray_is_the_version_the_table_was_checked_against():
    from importlib.metadata import version

    installed = version("ray")
    assert installed == RAY_VERSION_CHECKED, (
        f"Ray {installed} is installed; DOCUMENTED_RAY_VARIABLES and BELOW_PUBLIC_API were "
        f"checked against Ray {RAY_VERSION_CHECKED}: recheck every entry (and its guard test) "
        "against the new release, then update RAY_VERSION_CHECKED"
    )
    assert all(entry.checked_in_ray == installed for entry in BELOW_PUBLIC_API)


# --- No history in the manuals, docstrings or benchmarks ----------------------------------------
# Dates and commit hashes belong in git and in benchmarks/RESULTS.md (current figures, dated).
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
COMMIT_HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b")


def dated_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if DATE.search(line) or COMMIT_HASH.search(line)]


def test_no_manual_docstring_or_benchmark_carries_a_date_or_a_commit_hash():
    found = []
    for path in (ROOT / "README.md", ARCHITECTURE_MD, *BENCHMARKS):
        found += [
            f"{path.relative_to(ROOT)}: {line.strip()}" for line in dated_lines(path.read_text())
        ]
    for path in python_files("apcnet", "pipeline", "jobs", "tools"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node) or ""
                found += [f"{path.relative_to(ROOT)}: {line.strip()}" for line in dated_lines(doc)]
    assert not found, "dates or commit hashes (history lives in git):\n" + "\n".join(found)
