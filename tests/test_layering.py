"""The package layering of docs/architecture.md, checked on the import statements themselves."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mimir

PACKAGE = Path(mimir.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` of the file names, at any depth of the code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _offending_imports(folder: Path, forbidden: str) -> dict[str, list[str]]:
    """File -> the imports of `forbidden` (or anything inside it) in every file under `folder`."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        hits = sorted(name for name in _imported_modules(path) if name == forbidden or name.startswith(f"{forbidden}."))
        if hits:
            found[str(path.relative_to(folder))] = hits
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("learn", "mimir.report"),  # training computes; the commands render pages
        ("inference", "mimir.learn"),  # prediction never needs training code
        ("runs", "mimir.learn"),  # run folders are read without the training code that writes them
        ("runs", "torch"),
        ("report", "mimir.explain"),  # explain draws with report's helpers; the other way round is a cycle
        ("explain", "mimir.learn"),  # maps come from modules, as prediction runs them
    ],
)
def test_package_does_not_import(package, forbidden):
    assert _offending_imports(PACKAGE / package, forbidden) == {}


def test_the_check_sees_imports_inside_functions(tmp_path):
    (tmp_path / "late.py").write_text("def f():\n    from mimir.report.html import write_report\n")
    (tmp_path / "fine.py").write_text("import mimir.reporting\nfrom mimir.evaluation import report\n")
    assert _offending_imports(tmp_path, "mimir.report") == {"late.py": ["mimir.report.html", "mimir.report.html.write_report"]}


def test_the_runs_package_never_imports_torch():
    code = (
        "import importlib, pkgutil, sys\n"
        "import mimir.runs\n"
        "names = [info.name for info in pkgutil.iter_modules(mimir.runs.__path__, 'mimir.runs.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert {'mimir.runs.config', 'mimir.runs.layout', 'mimir.runs.standardization'} <= set(names), names\n"
        "assert 'torch' not in sys.modules, 'torch imported by mimir.runs'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
