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
MAX_FILE_LINES = 400
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


def test_no_python_file_in_the_layers_exceeds_400_lines():
    too_long = []
    for path in python_files(*LAYER_FOLDERS):
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not too_long, f"files over {MAX_FILE_LINES} lines (split them):\n" + "\n".join(too_long)


def test_pipeline_has_at_most_two_top_level_modules():
    modules = sorted(p.name for p in PIPELINE.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, (
        f"pipeline/ has {len(modules)} top-level modules {modules}; "
        f"at most {MAX_TOP_LEVEL_MODULES} (errors, storage): move the others into a subpackage"
    )


@pytest.mark.parametrize("script", BENCHMARKS, ids=[path.name for path in BENCHMARKS])
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
