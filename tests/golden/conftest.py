"""Fixed inputs of the golden tests: synthetic exams that must compress to recorded bytes, and a
module built from fixed numbers whose predictions must keep their recorded values.

The recordings live in tests/golden/data/. They change only on purpose, in the commit that
changes the 2D format or the predictions, with the reason in its message: rerun the golden
tests with MIMIR_RECORD_GOLDEN=1 to rewrite them, then read the diff.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
RECORD = os.environ.get("MIMIR_RECORD_GOLDEN") == "1"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_recording(name: str) -> dict:
    path = DATA / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: record it with MIMIR_RECORD_GOLDEN=1")
    return json.loads(path.read_text())


def write_recording(name: str, document: dict) -> None:
    (DATA / name).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


class Recordings:
    """The golden files, for the tests (conftest is not importable under --import-mode=importlib)."""

    record = RECORD
    data = DATA
    sha256_file = staticmethod(sha256_file)
    read = staticmethod(read_recording)
    write = staticmethod(write_recording)


@pytest.fixture(scope="session")
def recordings() -> type[Recordings]:
    return Recordings


#: The synthetic generator's smooth random fields are float32 matrix products, and OpenBLAS
#: picks its kernel by CPU: the exams recorded on one machine came out with a few pixels one unit
#: apart on another (AMD EPYC, AVX2), as they do here between OpenBLAS's Prescott and Haswell
#: kernels (8 of the on-grid exam's 1725 slices); the images compressed from either are
#: byte-identical. Fixing the kernel, and keeping NumPy's own loops off AVX-512, makes the golden
#: exams the same bytes on every x86-64 machine with AVX2.
_PORTABLE_ARITHMETIC = {
    "OPENBLAS_CORETYPE": "Haswell",
    "OPENBLAS_NUM_THREADS": "1",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}

_GENERATE = """
import sys
from pathlib import Path
from mimir.synth import CohortConfig, generate_cohort
from mimir.synth.quirks import QUIRKS
root = Path(sys.argv[1])
generate_cohort(CohortConfig(n=len(QUIRKS) + 1, seed=23, quirks=QUIRKS), root / "quirks")
generate_cohort(CohortConfig(n=1, seed=24, on_grid=True), root / "on_grid")
"""


def _generate_portably(root: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, **_PORTABLE_ARITHMETIC}
    done = subprocess.run([sys.executable, "-c", _GENERATE, str(root)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@dataclass(frozen=True)
class GoldenExams:
    """The exams of the golden tests, as zips, one unzipped DICOM folder and one NIfTI pair."""

    root: Path
    zips: list[Path]
    quirks: dict[str, str]  # exam stem -> injected quirk ("" for clean exams)
    dicom_folder: Path
    nifti_list: Path


@pytest.fixture(scope="session")
def golden_exams(tmp_path_factory: pytest.TempPathFactory) -> GoldenExams:
    """One exam per repairable quirk plus clean ones (one of them acquired on the common grid).

    The synthetic generator writes byte-identical zips for a seed; their checksums are recorded
    too, so a change of the generator is told apart from a change of compression. It is run in a
    child process with the arithmetic kernels fixed (`_PORTABLE_ARITHMETIC`), so that the zips do
    not depend on the CPU the tests run on.
    """
    import csv

    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs

    root = tmp_path_factory.mktemp("golden")
    _generate_portably(root)
    zips = sorted(root.glob("*/*.zip"))
    with (root / "quirks" / "quirks.csv").open(newline="") as handle:
        injected = {Path(row["zip"]).stem: row["quirk"] for row in csv.DictReader(handle)}
    quirks = {path.stem: injected.get(path.stem, "") for path in zips}

    recorded = {path.name: sha256_file(path) for path in zips}
    if RECORD:
        write_recording("exams.json", recorded)
    elif recorded != read_recording("exams.json"):
        pytest.fail(
            "the synthetic generator no longer writes the golden exams byte for byte: the golden "
            "tests cannot tell whether compression changed. If the generator changed on purpose, "
            "re-record with MIMIR_RECORD_GOLDEN=1 in the same commit and say why. (On a CPU other "
            "than x86-64 with AVX2 the fixed arithmetic kernels of _PORTABLE_ARITHMETIC may not apply.)"
        )

    clean = next(path for path in zips if quirks[path.stem] == "" and path.parent.name == "quirks")
    dicom_folder = root / "folder" / clean.stem
    with zipfile.ZipFile(clean) as archive:
        archive.extractall(dicom_folder)
    volumes = root / "volumes"
    summary = compress_exams(
        discover_inputs([clean]), CompressOptions(cache=root / "volume_cache", save_volumes=volumes)
    )
    assert summary.failed == 0
    nifti_list = root / "nifti.txt"
    nifti_list.write_text(f"{volumes / f'{clean.stem}_water.nii.gz'},{volumes / f'{clean.stem}_fat.nii.gz'}\n")
    return GoldenExams(root, zips, quirks, dicom_folder, nifti_list)


#: The golden module: three targets of different kinds and scales, one of them flagged often.
GOLDEN_TARGETS = (
    # name, field, unit, kind, standardisation mean, sd, calibration factor, sd_p99
    ("weight", 21002, "kg", "continuous", 78.0, 15.0, 1.3, None),
    ("liverVolume", 22416, "L", "continuous", 1.6, 0.35, 0.8, 1.27),
    # the network's standardised outputs for sex lie in -2.4..-1.6: this standardisation spreads them
    # over the probability range and past both of its ends
    ("sex", 31, "male=1", "binary", 3.5, 1.5, 1.0, None),
)


def _fixed_state(network) -> dict:  # noqa: ANN001 - a MeanVarianceResNet
    """Weights drawn from numpy's PCG64 (stable across versions and processes), scaled so that the
    outputs have a realistic size: He-scaled convolutions, the first one taking the 0-255 input
    to unit scale, damped residual branches, a small final layer.

    No statistic is fitted on images: float32 reductions differ in their last bits between
    processes, and the weights must be the same bytes every time.
    """
    import torch

    rng = np.random.default_rng(20261204)
    state = {}
    for name, tensor in network.state_dict().items():
        shape = tuple(tensor.shape)
        if name.endswith("num_batches_tracked"):
            values = np.zeros(shape)
        elif name.endswith("running_var"):
            values = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(".weight") and len(shape) == 1:  # batch-norm scale
            values = rng.uniform(0.5, 1.5, shape) * (0.3 if name.endswith("bn2.weight") else 1.0)
        elif name.endswith(("running_mean", ".bias")):
            values = rng.normal(0.0, 0.1, shape)
        elif name == "fc.weight":
            values = rng.normal(0.0, 0.05, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            values = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape) * (0.01 if name == "conv1.weight" else 1.0)
        state[name] = torch.as_tensor(values, dtype=tensor.dtype)
    return state


def _state_checksum(state: dict) -> str:
    """sha256 of the tensors themselves: the safetensors file is not byte-stable (its metadata
    block is written in a per-process order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def golden_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet18 module (input pooled 2x) from fixed numbers; its weights' checksum is recorded."""
    from mimir.inference.modules import ModuleSpec, Provenance, TargetSpec, save_module
    from mimir.network import MeanVarianceResNet

    network = MeanVarianceResNet("resnet18", len(GOLDEN_TARGETS), input_pool=2)
    network.load_state_dict(_fixed_state(network))
    targets = tuple(
        TargetSpec(
            name=name, ukb_field=field, unit=unit, kind=kind, mean=mean, sd=sd,
            calibration=calibration, n_train=100, sd_p99=sd_p99,
        )
        for name, field, unit, kind, mean, sd, calibration, sd_p99 in GOLDEN_TARGETS
    )
    spec = ModuleSpec(
        name="golden",
        architecture="resnet18",
        targets=targets,
        provenance=Provenance(source="training", mimir_version="golden", created="2026-12-04T00:00:00+00:00"),
        input_pool=2,
        log_var_range=(-10.0, 10.0),
    )
    checksum = _state_checksum(network.state_dict())
    if RECORD:
        write_recording("module.json", {"state_sha256": checksum})
    elif checksum != read_recording("module.json")["state_sha256"]:
        pytest.fail(
            "the golden module's weights are no longer built byte for byte (the network "
            "definition or the fixture changed): the predictions test cannot tell what moved. "
            "Re-record with MIMIR_RECORD_GOLDEN=1 in the same commit and say why."
        )
    out = save_module(spec, network.state_dict(), tmp_path_factory.mktemp("golden_module") / "golden")
    return out
