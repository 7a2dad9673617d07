"""Benchmark: every hostile exam of issue 18 ends within 60 s and 2.5 GB in one worker.

Builds the hostile inputs from one synthetic exam (headers rewritten with pydicom, members
replaced), then compresses each in a fresh child process under an address-space limit of
2.5 GB, and reports its outcome (cached, or failed with stage and reason), wall seconds and
peak resident memory. Goals: <= 60 s and <= 2.5 GB for every input.

    python benchmarks/hostile_inputs.py                 # corpus in a temporary folder
    python benchmarks/hostile_inputs.py --keep DIR      # keep the corpus for fuzzing or tests
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pydicom
from synthetic_cohorts import generate_complete_cohort

MEMORY_LIMIT = int(2.5 * 2**30)
TIME_LIMIT_S = 60

_CHILD = r"""
import json, resource, sys
from pathlib import Path
from mimir.imaging.compress import CompressOptions, compress_exam
from mimir.imaging.read import ExamInput

outcome = compress_exam(ExamInput(path=Path(sys.argv[1]), kind="zip"), CompressOptions(cache=Path(sys.argv[2])))
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"status": outcome.status, "stage": outcome.stage, "reason": outcome.reason, "peak_mb": round(peak_mb)}))
"""

Members = dict[str, bytes]


def _read_members(path: Path) -> Members:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_zip(members: Members, path: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _slices(members: Members, description_suffix: str) -> list[str]:
    """Member names of one series kind (e.g. '_W') of the third station, in zip order."""
    found = []
    for name, data in members.items():
        if not name.endswith(".dcm"):
            continue
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        if str(header.get("SeriesDescription", "")).endswith(description_suffix):
            found.append((int(header.SeriesNumber), name))
    numbers = sorted({number for number, _ in found})
    station = numbers[min(2, len(numbers) - 1)]
    return [name for number, name in found if number == station]


def _edited(data: bytes, edit: Callable[[pydicom.Dataset], None]) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    edit(dataset)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _edit_series(
    members: Members, suffixes: tuple[str, ...], edit: Callable[[pydicom.Dataset], None], first_only: bool = False
) -> Members:
    """`edit` applied to the third station's series of these kinds (every slice, or the first)."""
    changed = dict(members)
    for suffix in suffixes:
        names = _slices(members, suffix)
        for name in names[:1] if first_only else names:
            changed[name] = _edited(members[name], edit)
    return changed


def _delete(tag: str) -> Callable[[pydicom.Dataset], None]:
    return lambda dataset: delattr(dataset, tag)


def _set(tag: str, value: object) -> Callable[[pydicom.Dataset], None]:
    return lambda dataset: setattr(dataset, tag, value)


def _nan_position(dataset: pydicom.Dataset) -> None:
    x, y, _ = dataset.ImagePositionPatient
    dataset.ImagePositionPatient = [x, y, float("nan")]


def build_corpus(clean: Path, out: Path) -> dict[str, Path]:
    """The hostile variants of one clean exam, by name."""
    members = _read_members(clean)
    dicom_names = [name for name in members if name.endswith(".dcm")]
    first = dicom_names[0]
    corpus: dict[str, Path] = {"clean": clean}

    def variant(name: str, changed: Members, compression: int = zipfile.ZIP_STORED) -> None:
        corpus[name] = _write_zip(changed, out / f"{name}.zip", compression)

    variant("no_pixel_spacing", _edit_series(members, ("_W", "_F"), _delete("PixelSpacing")))
    for label, value in (("50", [50.0, 50.0]), ("1e6", [1e6, 1e6]), ("1e-6", [1e-6, 1e-6]), ("inf", ["inf", "inf"])):
        variant(f"pixel_spacing_{label}", _edit_series(members, ("_W", "_F"), _set("PixelSpacing", value)))
    variant("nan_rescale_slope", _edit_series(members, ("_W",), _set("RescaleSlope", "nan"), first_only=True))
    variant("nan_slice_position", _edit_series(members, ("_W",), _nan_position, first_only=True))

    zeros = bytes(63 * 2**20)
    variant("deflated_zero_members", {f"zeros_{index:02d}.dcm": zeros for index in range(31)}, zipfile.ZIP_DEFLATED)

    header = pydicom.dcmread(io.BytesIO(members[first]), force=True)
    header.Rows = header.Columns = 4096
    header.PixelData = bytes(4096 * 4096 * 2)
    huge = {}
    for index in range(56):
        header.InstanceNumber = index + 1
        x, y, z = header.ImagePositionPatient
        header.ImagePositionPatient = [x, y, float(z) - 3.0 * index]
        buffer = io.BytesIO()
        header.save_as(buffer, enforce_file_format=False)
        huge[f"huge_{index:02d}.dcm"] = buffer.getvalue()
    variant("huge_slices", huge, zipfile.ZIP_DEFLATED)
    return corpus


def measure(path: Path, cache: Path) -> dict[str, object]:
    """Compress one exam in a child limited to MEMORY_LIMIT; outcome, seconds, peak MB."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(cache)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit,
    )
    try:
        stdout, stderr = child.communicate(timeout=TIME_LIMIT_S * 3)
    except subprocess.TimeoutExpired:
        child.kill()
        stdout, stderr = child.communicate()
    seconds = time.perf_counter() - started
    lines = stdout.strip().splitlines()
    if not lines:
        return {"status": "crashed", "stage": "", "reason": stderr.strip()[-200:], "peak_mb": float("nan"), "seconds": seconds}
    return {**json.loads(lines[-1]), "seconds": round(seconds, 2)}


def main() -> None:
    warnings.simplefilter("ignore")  # pydicom warns about every hostile value it writes
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="write the corpus here and keep it")
    args = parser.parse_args()
    from mimir.synth import CohortConfig

    with tempfile.TemporaryDirectory(prefix="mimir-hostile-") as temporary:
        root = args.keep or Path(temporary)
        root.mkdir(parents=True, exist_ok=True)
        generate_complete_cohort(CohortConfig(n=1, seed=3), root / "clean")
        clean = next((root / "clean").glob("*.zip"))
        corpus = build_corpus(clean, root)
        print(f"{'input':<24}{'seconds':>9}{'peak MB':>9}  outcome")
        worst_seconds = worst_mb = 0.0
        for name, path in corpus.items():
            result = measure(path, root / "cache" / name)
            worst_seconds, worst_mb = max(worst_seconds, result["seconds"]), max(worst_mb, result["peak_mb"])
            outcome = "cached" if result["status"] == "done" else f"{result['stage']}: {result['reason']}"
            print(f"{name:<24}{result['seconds']:>9.2f}{result['peak_mb']:>9}  {outcome[:110]}")
        verdict = "met" if worst_seconds <= TIME_LIMIT_S and worst_mb <= MEMORY_LIMIT / 2**20 else "MISSED"
        print(f"worst: {worst_seconds:.1f} s, {worst_mb:.0f} MB (goals {TIME_LIMIT_S} s, {MEMORY_LIMIT / 2**20:.0f} MB): {verdict}")


if __name__ == "__main__":
    main()
