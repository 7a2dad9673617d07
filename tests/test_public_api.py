"""`import mimir` is the Python API: light to import, every documented name resolves, and the
README's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The Python block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("### Python API") :]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match is not None, "the README's Python API section has no python block"
    return match.group(1)


def test_import_mimir_imports_neither_numpy_nor_torch():
    code = "import sys, mimir; mimir.MimirError; print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


def test_every_public_name_resolves_to_its_owner():
    import mimir

    assert sorted(mimir.__all__) == sorted(["MimirError", "__version__", *mimir._OWNERS])
    for name in mimir.__all__:
        value = getattr(mimir, name)
        if callable(value) and not isinstance(value, type):
            assert value.__module__.startswith("mimir."), name
    assert issubclass(mimir.MimirError, Exception)
    with pytest.raises(AttributeError):
        mimir.no_such_entry_point  # noqa: B018


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(readme_example(), str(README), "exec"), namespace)  # noqa: S102 - our own README
    metrics = namespace["metrics"]
    assert set(metrics["name"]) == {"weight", "height"}
    assert (metrics["n"] == 6).all()
    table = namespace["table"]
    assert len(table) == 6 and (table["failure"] == "").all()
    assert (Path("size_module") / "module.json").is_file()
