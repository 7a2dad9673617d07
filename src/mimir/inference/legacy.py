"""Import a published MIMIR module folder into our module format.

The published layout (see docs/ukb-body-mri.md, section 5): `snapshot.pth.tar` (a pickled dict
with the ResNet50 `state_dict`), `metadata.txt` (name, field, unit, divisor per target),
`standardization_parameters.txt` (mean, stdev) and `calibration_factors.txt` (variance factor),
each text file with one header line and one row per network target.

The snapshot is read with `torch.load(weights_only=True)` only: a pickle that needs any code
beyond plain tensors and containers is refused, never executed.

Divisors. The published code divides the mean by the divisor (e.g. mL -> L) and then the
*variance* by the divisor as well. Variance scales with the square of the unit, so it should be
divided by divisor squared. We fold the divisor into the standardisation (mean/divisor,
sd/divisor); our means equal the published ones and our variance equals the published variance
divided by the divisor once more (sd smaller by a factor sqrt(divisor)). Targets with divisor 1
are identical. This difference is deliberate and recorded in each imported module's notes.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mimir.inference.modules import (
    ModuleFormatError,
    ModuleMissingFileError,
    ModuleShapeError,
    ModuleSpec,
    Provenance,
    TargetSpec,
    check_module_output,
    save_module,
)

if TYPE_CHECKING:
    from mimir.targets.catalog import Target

logger = logging.getLogger(__name__)

SNAPSHOT_FILE = "snapshot.pth.tar"
METADATA_FILE = "metadata.txt"
STANDARDIZATION_FILE = "standardization_parameters.txt"
CALIBRATION_FILE = "calibration_factors.txt"
LEGACY_FILES = (SNAPSHOT_FILE, METADATA_FILE, STANDARDIZATION_FILE, CALIBRATION_FILE)
#: The published networks are all torchvision ResNet50s.
LEGACY_ARCHITECTURE = "resnet50"
DIVISOR_NOTE = (
    "imported from a published MIMIR module: divisors are folded into the standardisation, so the "
    "variance is divided by divisor^2 (the published code divides it by divisor); for targets with a "
    "divisor d != 1 our variance is the published variance / d"
)


class LegacyModuleError(ModuleFormatError):
    """A published module folder that cannot be imported."""


class LegacyMissingFileError(LegacyModuleError, ModuleMissingFileError):
    """One of the four published files is absent."""


class LegacyTextFileError(LegacyModuleError):
    """A malformed line in one of the published text files."""


class LegacyRowCountError(LegacyTextFileError):
    """The text files disagree on the number of targets."""


class LegacySnapshotError(LegacyModuleError):
    """snapshot.pth.tar is unreadable or holds no state dict of tensors."""


class LegacyUnsafeSnapshotError(LegacySnapshotError):
    """snapshot.pth.tar needs pickle code execution to load; refused."""


class LegacyShapeError(LegacyModuleError, ModuleShapeError):
    """The snapshot's final layer does not have two outputs per target of metadata.txt."""


@dataclass(frozen=True)
class LegacyTarget:
    """One row of the published text files, as published (divisor not yet applied)."""

    name: str
    field: str
    unit: str
    divisor: float
    mean: float
    stdev: float
    calibration: float


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells) of the data lines: the header and blank lines are skipped."""
    if not path.is_file():
        raise LegacyMissingFileError(f"{path} is missing: a published module folder holds {', '.join(LEGACY_FILES)}")
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise LegacyTextFileError(f"{path} is empty")
    return [
        (number, [cell.strip() for cell in next(csv.reader([line]))])
        for number, line in numbered[1:]
    ]


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LegacyTextFileError(f"{path}:{line}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise LegacyTextFileError(f"{path}:{line}: {what} is {text}")
    return value


def read_legacy_tables(folder: Path | str) -> list[LegacyTarget]:
    """The targets of a published module folder, rows of the three text files combined."""
    folder = Path(folder)
    metadata_path = folder / METADATA_FILE
    standardization_path = folder / STANDARDIZATION_FILE
    calibration_path = folder / CALIBRATION_FILE
    metadata = _rows(metadata_path)
    standardization = _rows(standardization_path)
    calibration = _rows(calibration_path)
    if not metadata:
        raise LegacyTextFileError(f"{metadata_path} lists no targets")
    counts = {METADATA_FILE: len(metadata), STANDARDIZATION_FILE: len(standardization), CALIBRATION_FILE: len(calibration)}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{name}: {count}" for name, count in counts.items())
        raise LegacyRowCountError(f"{folder}: the text files list different numbers of targets ({listed})")
    targets = []
    for (m_line, m_cells), (s_line, s_cells), (c_line, c_cells) in zip(metadata, standardization, calibration, strict=True):
        if len(m_cells) < 4 or not m_cells[0]:
            raise LegacyTextFileError(f"{metadata_path}:{m_line}: expected name,field,unit,divisor, got {','.join(m_cells)!r}")
        if len(s_cells) < 2:
            raise LegacyTextFileError(f"{standardization_path}:{s_line}: expected mean,stdev, got {','.join(s_cells)!r}")
        divisor = _number(m_cells[3], metadata_path, m_line, "divisor")
        stdev = _number(s_cells[1], standardization_path, s_line, "stdev")
        factor = _number(c_cells[0], calibration_path, c_line, "calibration factor")
        if divisor <= 0:
            raise LegacyTextFileError(f"{metadata_path}:{m_line}: divisor must be positive, got {divisor}")
        if stdev <= 0:
            raise LegacyTextFileError(f"{standardization_path}:{s_line}: stdev must be positive, got {stdev}")
        if factor <= 0:
            raise LegacyTextFileError(f"{calibration_path}:{c_line}: calibration factor must be positive, got {factor}")
        targets.append(
            LegacyTarget(
                name=m_cells[0], field=m_cells[1], unit=m_cells[2], divisor=divisor,
                mean=_number(s_cells[0], standardization_path, s_line, "mean"), stdev=stdev, calibration=factor,
            )
        )
    names = [target.name for target in targets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise LegacyTextFileError(f"{metadata_path}: targets listed more than once: {repeated}")
    return targets


def read_legacy_snapshot(path: Path | str) -> dict:
    """The state dict of a published snapshot, loaded without executing pickle code."""
    from mimir.network import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise LegacyMissingFileError(f"{path} is missing: a published module folder holds {', '.join(LEGACY_FILES)}")
    try:
        return read_state_dict(path)
    except pickle.UnpicklingError as error:
        message = str(error).lower()
        if "unsupported global" in message:  # a class or function only full unpickling would import
            raise LegacyUnsafeSnapshotError(
                f"{path} refers to code that only a full unpickling would run; it is refused "
                f"(loaded with weights_only=True). Re-save its state_dict as plain tensors from a trusted "
                f"environment. Details: {str(error).splitlines()[0]}"
            ) from error
        detail = next((line.strip() for line in str(error).splitlines() if "unsupported" in line.lower()), "")
        raise LegacySnapshotError(
            f"{path} is not a readable torch checkpoint (truncated, corrupt, or using pickle features that "
            f"weights_only=True refuses){': ' + detail if detail else ''}"
        ) from error
    except ValueError as error:
        raise LegacySnapshotError(f"{path}: {error}; expected a dict with a 'state_dict' of tensors") from error
    except Exception as error:  # torch.load reports corrupt files as RuntimeError, KeyError, EOFError...
        raise LegacySnapshotError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {error}") from error


def _catalog_match(name: str) -> Target | None:
    """The catalog target named `name` (exactly, else case-insensitively and uniquely), or None."""
    from mimir.targets.catalog import catalog

    exact = [target for target in catalog() if target.name == name]
    if exact:
        return exact[0]
    folded = [target for target in catalog() if target.name.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def _field_number(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def legacy_target_spec(row: LegacyTarget) -> TargetSpec:
    """Our target for a published row: catalog identity when the name matches, published units."""
    known = _catalog_match(row.name)
    field_id = _field_number(row.field)
    if known is None:
        logger.info("published target %s is not in the catalog; field and unit come from metadata.txt", row.name)
        return TargetSpec(
            name=row.name, ukb_field=field_id, unit=row.unit, kind="continuous",
            mean=row.mean / row.divisor, sd=row.stdev / row.divisor, calibration=row.calibration, in_catalog=False,
        )
    if row.unit != known.unit:
        logger.warning(
            "target %s: metadata.txt gives unit %r, the catalog %r; predictions are in %r (metadata)",
            known.name, row.unit, known.unit, row.unit,
        )
    if field_id is not None and known.ukb_field is not None and field_id != known.ukb_field:
        logger.warning("target %s: metadata.txt gives field %d, the catalog %d; the catalog's is kept", known.name, field_id, known.ukb_field)
    return TargetSpec(
        name=known.name,
        ukb_field=known.ukb_field if known.ukb_field is not None else field_id,
        unit=row.unit,
        kind=known.kind,
        mean=row.mean / row.divisor,
        sd=row.stdev / row.divisor,
        calibration=row.calibration,
        in_catalog=True,
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_legacy(folder: Path | str, out: Path | str, name: str | None = None, *, overwrite: bool = False) -> Path:
    """Convert a published module folder into a MIMIR module at `out`; returns `out`."""
    folder = Path(folder)
    out = check_module_output(out, overwrite=overwrite)
    if not folder.is_dir():
        raise LegacyMissingFileError(f"published module folder not found: {folder}")
    absent = [file for file in LEGACY_FILES if not (folder / file).is_file()]
    if absent:
        raise LegacyMissingFileError(f"{folder} is not a published MIMIR module: missing {', '.join(absent)}")
    rows = read_legacy_tables(folder)
    state = read_legacy_snapshot(folder / SNAPSHOT_FILE)
    head = state.get("fc.weight")
    if head is None or head.ndim != 2:
        raise LegacyShapeError(f"{folder / SNAPSHOT_FILE}: no final layer fc.weight in the state dict")
    if head.shape[0] != 2 * len(rows):
        raise LegacyShapeError(
            f"{folder / SNAPSHOT_FILE}: the final layer has {head.shape[0]} outputs but {METADATA_FILE} lists "
            f"{len(rows)} targets (needs 2 per target = {2 * len(rows)})"
        )
    divisors = {row.name: row.divisor for row in rows}
    spec = ModuleSpec(
        name=name or folder.resolve().name,
        architecture=LEGACY_ARCHITECTURE,
        targets=tuple(legacy_target_spec(row) for row in rows),
        provenance=Provenance(
            source="legacy",
            config={"published_folder": folder.resolve().name, "divisors": divisors},
            data={"snapshot_sha256": _file_sha256(folder / SNAPSHOT_FILE)},
            notes=(DIVISOR_NOTE,) if any(divisor != 1 for divisor in divisors.values()) else (),
        ),
        input_pool=1,
        log_var_range=None,
    )
    changed = [row.name for row in rows if row.divisor != 1]
    if changed:
        logger.info("variance of %s differs from the published code's by design (divisor^2, see module notes)", ", ".join(changed))
    return save_module(spec, state, out, overwrite=overwrite)
